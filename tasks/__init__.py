"""Downstream tasks: QoR, logic equivalence, signal probability, QA, domain shift."""
