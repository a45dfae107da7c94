"""Extractive QA with Switch-FFN transformers built on the shared MoE core (SQuAD v1.1/v2.0)."""

from circuitml.tasks.qa.metrics import exact_match, f1_score, normalize_answer, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig, SwitchTransformerQA, UpcycledHFQA, build_qa_model
from circuitml.tasks.qa.train import QATrainConfig, evaluate_qa, load_qa_model, train_qa

__all__ = [
    "QATrainConfig",
    "SwitchQAConfig",
    "SwitchTransformerQA",
    "UpcycledHFQA",
    "build_qa_model",
    "evaluate_qa",
    "exact_match",
    "f1_score",
    "load_qa_model",
    "normalize_answer",
    "squad_scores",
    "train_qa",
]
