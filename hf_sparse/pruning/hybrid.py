"""Hybrid pruning: whole heads and FFN neurons first, then single weights inside the units kept.

Removing units is what a CPU turns into speed (compaction makes the model smaller); removing single
weights keeps more accuracy for the same number of non-zeros. `HybridPruning` spends part of the
target on each: a structured method removes `unit_sparsity` of the heads and neurons, and the
smallest-magnitude weights of the units it keeps go until every layer reaches `target_sparsity`.
The compacted model has the widths of `unit_sparsity` and `1 - target_sparsity` of the weights.
"""

from __future__ import annotations

import torch

from .base import PruningMethod, mask_from_scores
from .structured import StructuredPruning


class HybridPruning(PruningMethod):
    """A structured method for the units, magnitude inside them.

    Args:
        units: the structured method that chooses heads and neurons (`StructuredPruning` or a subclass:
            magnitude, movement or Fisher ranking, any scope, allocation and floors).
        unit_sparsity: the fraction of heads and neurons removed when the schedule reaches `target_sparsity`.
        target_sparsity: the final fraction of each layer's weights removed; at a scheduled sparsity `s` the
            units are pruned to `s * unit_sparsity / target_sparsity`, so both reach their targets together.
    """

    name = "hybrid"
    pattern = "unstructured"

    def __init__(self, units: StructuredPruning, unit_sparsity: float, target_sparsity: float):
        if not isinstance(units, StructuredPruning):
            raise TypeError(f"units must be a StructuredPruning method, got {type(units).__name__}")
        if not 0.0 < unit_sparsity < target_sparsity < 1.0:
            raise ValueError(
                f"hybrid pruning needs 0 < unit_sparsity < target_sparsity < 1, got unit_sparsity={unit_sparsity:g}, "
                f"target_sparsity={target_sparsity:g} (unit_sparsity == target_sparsity is plain structured pruning)"
            )
        super().__init__("layer")
        self.units = units
        self.unit_sparsity = float(unit_sparsity)
        self.target_sparsity = float(target_sparsity)
        self.stateful = units.stateful

    def check_floors(self, model, sparsity: float) -> None:
        """The structured method's floor check, at the unit sparsity `sparsity` leads to."""
        self.units.check_floors(model, sparsity * self.unit_sparsity / self.target_sparsity)

    def observe(self, model) -> None:
        self.units.observe(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.units.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.units.load_state_dict(state)

    @torch.no_grad()
    def masks(self, model, sparsity: float) -> dict[str, torch.Tensor]:
        kept_units = self.units.masks(model, sparsity * self.unit_sparsity / self.target_sparsity)
        modules = model.masked_linears()
        masks = {}
        for name, keep in kept_units.items():
            scores = torch.where(keep, modules[name].weight.detach().abs().float(), torch.tensor(float("-inf")))
            # a layer whose kept units hold fewer weights than `sparsity` leaves keeps only those
            masks[name] = mask_from_scores(scores, sparsity) & keep
        return masks
