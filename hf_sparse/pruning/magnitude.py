"""Magnitude pruning: keep the weights of largest absolute value, per layer or across all layers."""

from __future__ import annotations

from typing import Literal

import torch

from ..models.sparse_bert.modeling_sparse_bert import SparseBertPreTrainedModel


def mask_from_scores(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping exactly `round((1 - sparsity) * numel)` entries of highest score."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = scores.reshape(-1)
    keep = flat.numel() - round(sparsity * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


@torch.no_grad()
def magnitude_masks(
    model: SparseBertPreTrainedModel, sparsity: float, scope: Literal["layer", "global"] = "layer"
) -> dict[str, torch.Tensor]:
    """Masks that prune the `sparsity` fraction of smallest-magnitude weights of every masked layer.

    Already-pruned weights score zero, so masks only grow. With `scope="global"` one threshold is
    shared by all layers and the total count is exact; per layer, each layer's count is exact.
    """
    modules = model.masked_linears()
    scores = {name: m.weight.abs().float() * m.weight_mask for name, m in modules.items()}
    if scope == "layer":
        return {name: mask_from_scores(s, sparsity) for name, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    flat = mask_from_scores(torch.cat([s.reshape(-1) for s in scores.values()]), sparsity)
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = flat[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks
