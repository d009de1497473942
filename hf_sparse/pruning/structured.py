"""Structured pruning: whole attention heads and FFN neurons.

A head is its rows in Q, K, V and its columns in the attention output; a neuron is its row in the
intermediate layer and its column in the output layer. Pruning both sides makes the head's or
neuron's contribution exactly zero, so compaction can later remove it physically. A unit's score is
the sum of its weights' scores: their magnitudes (`StructuredPruning`: the L1 norm of the unit), or
their accumulated movement `-W * dL/dW` (`StructuredMovementPruning`: a first-order estimate of how
much the loss would rise without the unit, summed over training steps).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..analysis import split_module_name
from .base import PruningMethod, mask_from_scores
from .movement import MovementPruning

_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


class StructuredPruning(PruningMethod):
    """`structures` is ("heads",), ("neurons",) or both; `sparsity` is the fraction of heads/neurons removed.

    With `scope="global"` one ranking over all layers decides, so layers end with uneven widths;
    `min_heads_per_layer` / `min_neurons_per_layer` then keep each layer's best units up to that
    floor (a layer without heads can no longer mix tokens), and the rest of the budget is ranked globally.
    """

    name = "structured"

    def __init__(self, structures=("heads", "neurons"), scope: str = "layer", min_heads_per_layer: int = 0, min_neurons_per_layer: int = 0):
        super().__init__(scope)
        self.structures = tuple(s for s in ("heads", "neurons") if s in structures)
        if not self.structures:
            raise ValueError(f"structures must include 'heads' and/or 'neurons', got {structures!r}")
        self.pattern = "structured:" + "+".join(self.structures)
        self.floors = {"heads": int(min_heads_per_layer), "neurons": int(min_neurons_per_layer)}
        if min(self.floors.values()) < 0:
            raise ValueError(f"per-layer floors must be >= 0, got {self.floors}")
        if any(self.floors.values()) and scope != "global":
            raise ValueError("min_heads_per_layer / min_neurons_per_layer apply to scope='global' (scope='layer' prunes every layer alike)")

    def check_floors(self, model, sparsity: float) -> None:
        """Raises `ValueError` if the per-layer floors keep more units than `sparsity` leaves (also worth checking before training)."""
        config = model.config
        for kind in self.structures:
            if not self.floors[kind]:
                continue
            per_layer = [config.heads_in_layer(i) if kind == "heads" else config.intermediate_size_in_layer(i) for i in range(config.num_hidden_layers)]
            total = sum(per_layer)
            keep = total - round(sparsity * total)
            reserved = sum(min(self.floors[kind], n) for n in per_layer)
            if reserved > keep:
                raise ValueError(
                    f"min_{kind}_per_layer={self.floors[kind]} reserves {reserved} {kind} over {len(per_layer)} layers, "
                    f"but sparsity {sparsity} keeps only {keep} of {total}"
                )

    def _reserve_floor(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """`scores` with the layer's best `floor` live units raised to +inf, so a global ranking keeps them."""
        floor = min(self.floors[kind], int(torch.isfinite(scores).sum()))  # pruned units (-inf) are never revived
        if not floor:
            return scores
        return scores.index_fill(0, torch.topk(scores, floor).indices, float("inf"))


    @torch.no_grad()
    def masks(self, model, sparsity: float) -> dict[str, torch.Tensor]:
        head_size = model.config.hidden_size // model.config.num_attention_heads
        modules = model.masked_linears()
        weight_scores = self.scores(model)  # per weight; summed over each unit's weights below
        layers: dict[tuple, dict[str, str]] = defaultdict(dict)
        for name in modules:
            layer, module = split_module_name(name)
            layers[(name[: name.index(f"encoder.layer.{layer}.")], layer)][module] = name
        masks = {name: m.weight_mask.clone() for name, m in modules.items()}
        groups = []  # (kind, layer key, unit scores)
        for key, names in layers.items():
            if "heads" in self.structures:
                needed = (*_QKV, "attention.output.dense")
                self._require(names, needed, "heads")
                heads = modules[names["attention.output.dense"]].weight.shape[1] // head_size  # fewer if compacted
                score = sum(weight_scores[names[m]].reshape(heads, -1).sum(1) for m in _QKV)
                out = modules[names["attention.output.dense"]]
                score = score + weight_scores[names["attention.output.dense"]].reshape(out.weight.shape[0], heads, -1).sum(dim=(0, 2))
                alive = modules[names["attention.output.dense"]].weight_mask.reshape(out.weight.shape[0], heads, -1).any(dim=(0, 2))
                groups.append(("heads", key, torch.where(alive, score, torch.full_like(score, float("-inf")))))
            if "neurons" in self.structures:
                self._require(names, ("intermediate.dense", "output.dense"), "neurons")
                inter, out = modules[names["intermediate.dense"]], modules[names["output.dense"]]
                score = weight_scores[names["intermediate.dense"]].sum(1) + weight_scores[names["output.dense"]].sum(0)
                alive = out.weight_mask.any(dim=0)
                groups.append(("neurons", key, torch.where(alive, score, torch.full_like(score, float("-inf")))))
        if self.scope == "global":
            self.check_floors(model, sparsity)
        for kind in self.structures:
            kind_groups = [(key, s) for k, key, s in groups if k == kind]
            if self.scope == "global":
                keep_all = mask_from_scores(torch.cat([self._reserve_floor(kind, s.float()) for _, s in kind_groups]), sparsity)
                keeps, start = [], 0
                for key, s in kind_groups:
                    keeps.append((key, keep_all[start : start + s.numel()]))
                    start += s.numel()
            else:
                keeps = [(key, mask_from_scores(s, sparsity)) for key, s in kind_groups]
            for key, keep in keeps:
                names = layers[key]
                if kind == "heads":
                    for m in _QKV:
                        w = masks[names[m]]
                        masks[names[m]] = w & keep.repeat_interleave(head_size)[:, None]
                    w = masks[names["attention.output.dense"]]
                    masks[names["attention.output.dense"]] = w & keep.repeat_interleave(head_size)[None, :]
                else:
                    masks[names["intermediate.dense"]] &= keep[:, None]
                    masks[names["output.dense"]] &= keep[None, :]
        return masks

    @staticmethod
    def _require(names: dict, needed: tuple, kind: str) -> None:
        missing = [m for m in needed if m not in names]
        if missing:
            raise ValueError(f"pruning {kind} needs {missing} in the config's prunable_modules")


class StructuredMovementPruning(StructuredPruning):
    """Heads and FFN neurons ranked by their accumulated movement scores (see `MovementPruning`).

    Call `observe(model)` after each backward pass (the `PruningCallback` does); `masks` then sums
    the scores of each unit's weights. The scores survive a Trainer resume (`state_dict`).
    """

    name = "structured_movement"
    stateful = True

    def __init__(self, structures=("heads", "neurons"), scope: str = "layer", min_heads_per_layer: int = 0, min_neurons_per_layer: int = 0):
        super().__init__(structures, scope, min_heads_per_layer, min_neurons_per_layer)
        self._movement = MovementPruning()

    def observe(self, model) -> None:
        self._movement.observe(model)

    def scores(self, model) -> dict[str, torch.Tensor]:
        return self._movement.scores(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._movement.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._movement.load_state_dict(state)
