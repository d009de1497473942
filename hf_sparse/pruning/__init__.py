"""Pruning methods. Each module turns weights into scores and scores into masks for a target sparsity."""

from .magnitude import magnitude_masks, mask_from_scores

__all__ = ["magnitude_masks", "mask_from_scores"]
