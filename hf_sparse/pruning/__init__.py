"""Pruning methods (score -> mask for a target sparsity), schedules, and the Trainer callback."""

from .base import PruningMethod, mask_from_scores
from .block import BlockPruning
from .callback import PruningCallback
from .hybrid import HybridPruning
from .magnitude import MagnitudePruning, magnitude_masks
from .movement import MovementPruning
from .n_m import NMPruning
from .schedule import ConstantSchedule, CubicSchedule, OneShotSchedule
from .structured import StructuredFisherPruning, StructuredMovementPruning, StructuredPruning

__all__ = [
    "BlockPruning",
    "ConstantSchedule",
    "CubicSchedule",
    "HybridPruning",
    "OneShotSchedule",
    "PruningCallback",
    "MagnitudePruning",
    "MovementPruning",
    "NMPruning",
    "PruningMethod",
    "StructuredFisherPruning",
    "StructuredMovementPruning",
    "StructuredPruning",
    "magnitude_masks",
    "mask_from_scores",
]
