"""Distillation: losses and a `Trainer` that adds them through `compute_loss`."""

from .losses import (
    attention_loss,
    contrastive_loss,
    hidden_state_loss,
    kd_loss,
    same_example_positives,
    same_label_positives,
)
from .trainer import CONTRASTIVE_POOLINGS, DistillationConfig, DistillationTrainer

__all__ = [
    "CONTRASTIVE_POOLINGS",
    "DistillationConfig",
    "DistillationTrainer",
    "attention_loss",
    "contrastive_loss",
    "hidden_state_loss",
    "kd_loss",
    "same_example_positives",
    "same_label_positives",
]
