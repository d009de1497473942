"""N:M semi-structured pruning (e.g. 2:4): in every group of M consecutive inputs, keep the N largest."""

from __future__ import annotations

import torch

from .base import PruningMethod


class NMPruning(PruningMethod):
    """Keeps the `n` largest |W| of each group of `m` along the input dimension (sparsity 1 - n/m)."""

    name = "n:m"

    def __init__(self, n: int = 2, m: int = 4):
        super().__init__("layer")
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
        self.n, self.m = int(n), int(m)
        self.pattern = f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def select(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        if sparsity == 0.0:
            return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
        if abs(sparsity - self.sparsity) > 1e-9:
            raise ValueError(f"{self.pattern} pruning gives sparsity {self.sparsity:g}, not {sparsity:g}; use a one-shot schedule")
        masks = {}
        for name, s in scores.items():
            rows, cols = s.shape
            if cols % self.m:
                raise ValueError(f"{name}: {cols} inputs are not divisible into groups of {self.m}")
            groups = s.reshape(rows, cols // self.m, self.m)
            keep = groups.topk(self.n, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
            masks[name] = mask.reshape(rows, cols)
        return masks
