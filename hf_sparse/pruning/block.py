"""Block pruning: whole RxC blocks of a weight are kept or pruned, ranked by their L1 norm."""

from __future__ import annotations

import torch

from .base import PruningMethod


class BlockPruning(PruningMethod):
    """Blocks of `rows x cols` (e.g. 1x4 or 4x1) scored by the sum of |W| inside them."""

    name = "block"

    def __init__(self, block: tuple[int, int] = (1, 4), scope: str = "layer"):
        super().__init__(scope)
        self.block = (int(block[0]), int(block[1]))
        self.pattern = f"block:{self.block[0]}x{self.block[1]}"

    def select(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        r, c = self.block
        pooled = {}
        for name, s in scores.items():
            rows, cols = s.shape
            if rows % r or cols % c:
                raise ValueError(f"{name}: shape {rows}x{cols} is not divisible into {r}x{c} blocks")
            pooled[name] = s.reshape(rows // r, r, cols // c, c).sum(dim=(1, 3))
        block_masks = super().select(pooled, sparsity)
        return {name: m.repeat_interleave(r, 0).repeat_interleave(c, 1) for name, m in block_masks.items()}
