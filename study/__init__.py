"""Task-specific knowledge distillation for extractive QA: a reproducibility study."""

__version__ = "0.1.0"
