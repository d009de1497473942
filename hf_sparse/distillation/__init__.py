"""Distillation: losses and a `Trainer` that adds them through `compute_loss`."""

from .losses import (
    attention_loss,
    contrastive_loss,
    ensemble_logits,
    hidden_state_loss,
    kd_loss,
    same_example_positives,
    same_label_positives,
)
from .trainer import CONTRASTIVE_POOLINGS, DistillationConfig, DistillationTrainer, check_contrastive_pooling, sentence_vector

__all__ = [
    "CONTRASTIVE_POOLINGS",
    "DistillationConfig",
    "DistillationTrainer",
    "attention_loss",
    "check_contrastive_pooling",
    "contrastive_loss",
    "ensemble_logits",
    "hidden_state_loss",
    "kd_loss",
    "same_example_positives",
    "same_label_positives",
    "sentence_vector",
]
