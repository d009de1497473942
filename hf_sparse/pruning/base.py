"""The shape every pruning method shares: scores per masked layer -> masks for a target sparsity."""

from __future__ import annotations

from typing import Literal

import torch

from ..models.sparse_bert.modeling_sparse_bert import MaskedLinear, SparseBertPreTrainedModel


def mask_from_scores(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping exactly `numel - round(sparsity * numel)` entries of highest score."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = scores.reshape(-1)
    keep = flat.numel() - round(sparsity * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(flat.float(), keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def gradients_are_finite(modules) -> bool:
    """False when any of `modules`' weight gradients holds inf/NaN: an overflowing mixed-precision step, which the
    optimizer skips, and so should the scores of gradient-based methods."""
    return all(bool(torch.isfinite(m.weight.grad).all()) for m in modules if m.weight.grad is not None)


class PruningMethod:
    """Base class. Subclasses implement `scores`; those that learn from training also `observe`.

    Attributes:
        name: the method's name in recipes.
        pattern: the `sparsity_pattern` string its masks follow.
    """

    name = "base"
    pattern = "unstructured"
    stateful = False  # True when `state_dict` must survive a Trainer resume

    def __init__(self, scope: Literal["layer", "global"] = "layer"):
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.scope = scope

    def scores(self, model: SparseBertPreTrainedModel) -> dict[str, torch.Tensor]:
        """Importance of every weight (higher = keep), per masked layer; by default its magnitude |W|."""
        return {name: m.weight.detach().abs() for name, m in model.masked_linears().items()}

    def observe(self, model: SparseBertPreTrainedModel) -> None:
        """Called with fresh gradients before each optimizer step (movement-style methods)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} pruning has no state to load, got {sorted(state)[:3]}")

    @torch.no_grad()
    def masks(self, model: SparseBertPreTrainedModel, sparsity: float) -> dict[str, torch.Tensor]:
        """Masks at `sparsity` (fraction of each layer, or of all layers with scope="global").

        Already-pruned weights score lowest and stay pruned: masks only shrink.
        """
        modules = model.masked_linears()
        scores = {name: self._exclude_pruned(s, modules[name]) for name, s in self.scores(model).items()}
        # a target below the current sparsity keeps the current masks: pruned weights stay pruned
        return {name: mask & modules[name].weight_mask for name, mask in self.select(scores, sparsity).items()}

    def select(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        if self.scope == "layer":
            return {name: mask_from_scores(s, sparsity) for name, s in scores.items()}
        flat = mask_from_scores(torch.cat([s.reshape(-1) for s in scores.values()]), sparsity)
        masks, start = {}, 0
        for name, s in scores.items():
            masks[name] = flat[start : start + s.numel()].reshape(s.shape)
            start += s.numel()
        return masks

    @staticmethod
    def _exclude_pruned(scores: torch.Tensor, module: MaskedLinear) -> torch.Tensor:
        scores = scores.float()
        return torch.where(module.weight_mask, scores, torch.full_like(scores, float("-inf")))
