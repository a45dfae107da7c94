"""Classifier-free guidance and adapter guidance distillation (AGD) on a small digits diffusion model."""
