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
        self.stateful = True  # the unit masks (and a learned ranking's scores) must survive a Trainer resume
        self._unit_masks: dict[str, torch.Tensor] | None = None  # whole units kept so far, without the single-weight holes

    def check_floors(self, model, sparsity: float) -> None:
        """The structured method's floor check, at the unit sparsity `sparsity` leads to."""
        self.units.check_floors(model, sparsity * self.unit_sparsity / self.target_sparsity)

    def observe(self, model) -> None:
        self.units.observe(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"units/{key}": value for key, value in self.units.state_dict().items()}
        return state | {f"unit_mask/{name}": mask for name, mask in (self._unit_masks or {}).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = [key for key in state if not key.startswith(("units/", "unit_mask/"))]
        if unknown:
            raise ValueError(f"hybrid pruning state has keys it did not write: {sorted(unknown)[:3]}")
        self.units.load_state_dict({key.removeprefix("units/"): v for key, v in state.items() if key.startswith("units/")})
        masks = {key.removeprefix("unit_mask/"): v.bool() for key, v in state.items() if key.startswith("unit_mask/")}
        self._unit_masks = masks or None

    @torch.no_grad()
    def masks(self, model, sparsity: float) -> dict[str, torch.Tensor]:
        """Units pruned to their share of `sparsity` (units only shrink), then each layer's largest-magnitude weights
        inside them up to `1 - sparsity` of the layer. Single weights are chosen afresh at every call: a weight pruned
        earlier is zero and ranks last, so it comes back (at zero) only where removing a unit since left its layer
        short, and every layer ends at exactly the target. Records the units for the next call."""
        units = self.units.masks(model, sparsity * self.unit_sparsity / self.target_sparsity, base=self._unit_masks)
        self._unit_masks = units
        modules = model.masked_linears()
        masks = {}
        for name, keep in units.items():
            scores = torch.where(keep, modules[name].weight.detach().abs().float(), torch.tensor(float("-inf")))
            # a layer whose kept units hold fewer weights than `sparsity` leaves keeps only those
            masks[name] = mask_from_scores(scores, sparsity) & keep
        return masks
