"""Movement pruning (Sanh et al. 2020): keep the weights moving away from zero during training.

Scores accumulate `-W * dL/dW` at every optimizer step (`observe`). Hard movement ranks them per
layer; soft movement ranks them globally, so layers end at different sparsities (Sanh et al. learn
the scores with a sigmoid threshold; here the accumulated first-order scores are thresholded at
the global quantile that meets the target exactly). Pruned weights are zero in SparseBert, so
masks only shrink: a pruned weight does not come back.
"""

from __future__ import annotations

import torch

from .base import PruningMethod, gradients_are_finite


class MovementPruning(PruningMethod):
    name = "movement"
    stateful = True

    def __init__(self, soft: bool = False):
        super().__init__("global" if soft else "layer")
        self.soft = soft
        self.name = "soft_movement" if soft else "movement"
        self._scores: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def observe(self, model) -> None:
        if not gradients_are_finite(model.masked_linears().values()):
            return
        for name, module in model.masked_linears().items():
            grad = module.weight.grad
            if grad is None:
                continue
            step = -(module.weight.detach() * grad).float()
            if name in self._scores:
                self._scores[name].add_(step)
            else:
                self._scores[name] = step.clone()

    def scores(self, model) -> dict[str, torch.Tensor]:
        modules = model.masked_linears()
        missing = [n for n in modules if n not in self._scores]
        if missing:
            raise RuntimeError(f"movement scores are empty for {missing[0]!r}: call observe() after backward first")
        return {name: self._scores[name] for name in modules}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: s.clone() for name, s in self._scores.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._scores = {name: s.clone().float() for name, s in state.items()}
