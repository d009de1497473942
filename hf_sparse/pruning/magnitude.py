"""Magnitude pruning (Zhu & Gupta; Prune Once for All): keep the weights of largest absolute value."""

from __future__ import annotations

import torch

from .base import PruningMethod, mask_from_scores  # noqa: F401  (mask_from_scores re-exported)


class MagnitudePruning(PruningMethod):
    """Scores are |W| (the base class's); `scope="global"` ranks all layers together."""

    name = "magnitude"


def magnitude_masks(model, sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Masks pruning the `sparsity` fraction of smallest-magnitude weights (per layer or globally)."""
    return MagnitudePruning(scope=scope).masks(model, sparsity)
