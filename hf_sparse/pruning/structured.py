"""Structured pruning: whole attention heads and FFN neurons.

A head is its rows in Q, K, V and its columns in the attention output; a neuron is its row in the
intermediate layer and its column in the output layer. Pruning both sides makes the head's or
neuron's contribution exactly zero, so compaction can later remove it physically. A unit's score is
the sum of its weights' scores: their magnitudes (`StructuredPruning`: the L1 norm of the unit), or
their accumulated movement `-W * dL/dW` (`StructuredMovementPruning`: a first-order estimate of how
much the loss would rise without the unit, summed over training steps). `StructuredFisherPruning`
scores the unit itself: the squared gradient of a gate on its output, summed over training steps (the
empirical Fisher information of that gate; Molchanov et al. 2019, Kwon et al. 2022), so that batches
where the unit matters in opposite directions add up instead of cancelling.

`allocation="uniform"` (default) removes the same fraction of heads and of neurons; `allocation="joint"`
ranks heads and neurons together by score per weight and keeps the best that fit in the weight budget
(`1 - sparsity` of the units' weights), so the method chooses how the budget splits between them.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..analysis import split_module_name
from .base import PruningMethod, gradients_are_finite, mask_from_scores
from .movement import MovementPruning

_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
ALLOCATIONS = ("uniform", "joint")


class StructuredPruning(PruningMethod):
    """`structures` is ("heads",), ("neurons",) or both; `sparsity` is the fraction of heads/neurons removed.

    With `scope="global"` one ranking over all layers decides, so layers end with uneven widths;
    `min_heads_per_layer` / `min_neurons_per_layer` then keep each layer's best units up to that
    floor (a layer without heads can no longer mix tokens), and the rest of the budget is ranked globally.
    """

    name = "structured"

    def __init__(
        self, structures=("heads", "neurons"), scope: str = "layer", min_heads_per_layer: int = 0, min_neurons_per_layer: int = 0,
        allocation: str = "uniform",
    ):
        super().__init__(scope)
        self.structures = tuple(s for s in ("heads", "neurons") if s in structures)
        if not self.structures:
            raise ValueError(f"structures must include 'heads' and/or 'neurons', got {structures!r}")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
        if allocation == "joint" and self.structures != ("heads", "neurons"):
            raise ValueError(f"allocation='joint' splits one budget between heads and neurons: it needs both structures, got {structures!r}")
        self.allocation = allocation
        self.pattern = "structured:" + "+".join(self.structures)
        self.floors = {"heads": int(min_heads_per_layer), "neurons": int(min_neurons_per_layer)}
        if min(self.floors.values()) < 0:
            raise ValueError(f"per-layer floors must be >= 0, got {self.floors}")
        if any(self.floors.values()) and scope != "global" and allocation != "joint":
            raise ValueError(
                "min_heads_per_layer / min_neurons_per_layer apply to scope='global' or allocation='joint' "
                "(uniform allocation with scope='layer' prunes every layer alike)"
            )

    def check_floors(self, model, sparsity: float) -> None:
        """Raises `ValueError` if the per-layer floors keep more units than `sparsity` leaves (also worth checking before training)."""
        config = model.config
        if self.allocation == "joint":
            self._check_joint_floors(config, sparsity)
            return
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

    def _check_joint_floors(self, config, sparsity: float) -> None:
        head_size = config.hidden_size // config.num_attention_heads
        cost = {"heads": 4 * config.hidden_size * head_size, "neurons": 2 * config.hidden_size}  # weights per unit
        layers = range(config.num_hidden_layers)
        units = [{"heads": config.heads_in_layer(i), "neurons": config.intermediate_size_in_layer(i)} for i in layers]
        partitions = [[u] for u in units] if self.scope == "layer" else [units]
        for part in partitions:
            total = sum(cost[k] * u[k] for u in part for k in cost)
            reserved = sum(cost[k] * min(self.floors[k], u[k]) for u in part for k in cost)
            budget = total - round(sparsity * total)
            if reserved > budget:
                where = "a layer" if self.scope == "layer" else f"{len(part)} layers"
                raise ValueError(
                    f"min_heads_per_layer={self.floors['heads']} and min_neurons_per_layer={self.floors['neurons']} reserve "
                    f"{reserved:,} weights in {where}, but sparsity {sparsity} keeps only {budget:,} of {total:,}"
                )

    def _reserve_floor(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """`scores` with the layer's best `floor` live units raised to +inf, so a global ranking keeps them."""
        floor = min(self.floors[kind], int(torch.isfinite(scores).sum()))  # pruned units (-inf) are never revived
        if not floor:
            return scores
        return scores.index_fill(0, torch.topk(scores, floor).indices, float("inf"))


    @torch.no_grad()
    def masks(self, model, sparsity: float, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Masks at `sparsity` of the heads and neurons. Units are pruned from `base` (default: the model's current
        masks): a unit with no weight left in `base` stays pruned, and the result keeps nothing `base` prunes."""
        head_size = model.config.hidden_size // model.config.num_attention_heads
        modules = model.masked_linears()
        weight_scores = self.scores(model)  # per weight; summed over each unit's weights below
        layers: dict[tuple, dict[str, str]] = defaultdict(dict)
        for name in modules:
            layer, module = split_module_name(name)
            layers[(name[: name.index(f"encoder.layer.{layer}.")], layer)][module] = name
        masks = {name: (m.weight_mask if base is None else base[name]).clone() for name, m in modules.items()}
        groups = []  # (kind, layer key, unit scores, weights per unit)
        for key, names in layers.items():
            if "heads" in self.structures:
                needed = (*_QKV, "attention.output.dense")
                self._require(names, needed, "heads")
                out = modules[names["attention.output.dense"]]
                heads = out.weight.shape[1] // head_size  # fewer if compacted
                score = self.head_scores(names, weight_scores, heads)
                alive = masks[names["attention.output.dense"]].reshape(out.weight.shape[0], heads, -1).any(dim=(0, 2))
                cost = head_size * (sum(modules[names[m]].weight.shape[1] for m in _QKV) + out.weight.shape[0])
                groups.append(("heads", key, torch.where(alive, score, torch.full_like(score, float("-inf"))), cost))
            if "neurons" in self.structures:
                self._require(names, ("intermediate.dense", "output.dense"), "neurons")
                score = self.neuron_scores(names, weight_scores)
                alive = masks[names["output.dense"]].any(dim=0)
                cost = modules[names["intermediate.dense"]].weight.shape[1] + modules[names["output.dense"]].weight.shape[0]
                groups.append(("neurons", key, torch.where(alive, score, torch.full_like(score, float("-inf"))), cost))
        if self.scope == "global" or self.allocation == "joint":
            self.check_floors(model, sparsity)
        keeps = self._joint_keeps(groups, sparsity) if self.allocation == "joint" else self._uniform_keeps(groups, sparsity)
        for kind, key, keep in keeps:
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

    def _uniform_keeps(self, groups: list, sparsity: float) -> list[tuple[str, tuple, torch.Tensor]]:
        """The same fraction of each kind of unit: in each layer, or ranked over all layers with scope='global'."""
        keeps = []
        for kind in self.structures:
            kind_groups = [(key, s) for k, key, s, _ in groups if k == kind]
            if self.scope == "global":
                keep_all = mask_from_scores(torch.cat([self._reserve_floor(kind, s.float()) for _, s in kind_groups]), sparsity)
                start = 0
                for key, s in kind_groups:
                    keeps.append((kind, key, keep_all[start : start + s.numel()]))
                    start += s.numel()
            else:
                keeps += [(kind, key, mask_from_scores(s, sparsity)) for key, s in kind_groups]
        return keeps

    def _joint_keeps(self, groups: list, sparsity: float) -> list[tuple[str, tuple, torch.Tensor]]:
        """Heads and neurons in one ranking by score per weight, kept best-first while they fit in the weight budget
        (`1 - sparsity` of all units' weights, per layer or over all layers). Pruned units are never kept, so weights
        freed when a later step drops a unit that no longer fits cannot go back to units pruned before."""
        partitions: dict[tuple, list] = defaultdict(list)
        for group in groups:
            partitions[group[1] if self.scope == "layer" else ()].append(group)
        keeps = []
        for part in partitions.values():
            scores = torch.cat([self._reserve_floor(kind, s.float()) for kind, _, s, _ in part])
            costs = torch.cat([torch.full((s.numel(),), cost, dtype=torch.long) for _, _, s, cost in part])
            total = int(costs.sum())
            left = total - round(sparsity * total)
            keep = torch.zeros(scores.numel(), dtype=torch.bool)
            order = torch.argsort(scores / costs, descending=True, stable=True)
            smallest = int(costs.min())
            for i, cost in zip(order.tolist(), costs[order].tolist()):
                if scores[i] == float("-inf") or left < smallest:  # pruned units sort last
                    break
                if cost <= left:  # a unit too big for what is left is skipped; smaller ones may still fit
                    keep[i] = True
                    left -= cost
            start = 0
            for kind, key, s, _ in part:
                keeps.append((kind, key, keep[start : start + s.numel()]))
                start += s.numel()
        return keeps

    def head_scores(self, names: dict[str, str], weight_scores: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
        """One layer's head scores: the sum of each head's weight scores (its rows of Q, K, V, its columns of the output).

        `names` maps the layer's module kinds ("attention.self.query", ...) to their names in `weight_scores`.
        """
        score = sum(weight_scores[names[m]].reshape(heads, -1).sum(1) for m in _QKV)
        out = weight_scores[names["attention.output.dense"]]
        return score + out.reshape(out.shape[0], heads, -1).sum(dim=(0, 2))

    def neuron_scores(self, names: dict[str, str], weight_scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """One layer's FFN neuron scores: the sum of each neuron's row of the intermediate layer and column of the output."""
        return weight_scores[names["intermediate.dense"]].sum(1) + weight_scores[names["output.dense"]].sum(0)

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

    def __init__(
        self, structures=("heads", "neurons"), scope: str = "layer", min_heads_per_layer: int = 0, min_neurons_per_layer: int = 0,
        allocation: str = "uniform",
    ):
        super().__init__(structures, scope, min_heads_per_layer, min_neurons_per_layer, allocation)
        self._movement = MovementPruning()

    def observe(self, model) -> None:
        self._movement.observe(model)

    def scores(self, model) -> dict[str, torch.Tensor]:
        return self._movement.scores(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._movement.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._movement.load_state_dict(state)


class StructuredFisherPruning(StructuredPruning):
    """Heads and FFN neurons ranked by the empirical Fisher information of a gate on their output.

    A gate g multiplying a unit's output has, at g = 1, the gradient `sum(W * dL/dW)` over the unit's
    columns of the layer its output feeds (the attention output for a head, the FFN output for a
    neuron). `observe(model)` after each backward pass adds its square per unit (the `PruningCallback`
    calls it); `masks` ranks the sums. Unlike summed movement, where per-batch first-order terms of
    opposite sign cancel, a unit that changes the loss on many batches in either direction scores high.
    The sums survive a Trainer resume (`state_dict`).
    """

    name = "structured_fisher"
    stateful = True

    def __init__(
        self, structures=("heads", "neurons"), scope: str = "layer", min_heads_per_layer: int = 0, min_neurons_per_layer: int = 0,
        allocation: str = "uniform",
    ):
        super().__init__(structures, scope, min_heads_per_layer, min_neurons_per_layer, allocation)
        self._fisher: dict[str, torch.Tensor] = {}  # output layer name -> per input column (head channels or neurons)

    def _gated(self, model) -> dict[str, tuple[torch.nn.Module, str]]:
        """The layers whose input columns are the units' outputs, with the units' kind: attention output (heads)
        and FFN output (neurons)."""
        kinds = {"attention.output.dense": "heads", "output.dense": "neurons"}
        gated = {name: (m, kinds.get(split_module_name(name)[1])) for name, m in model.masked_linears().items()}
        return {name: (m, kind) for name, (m, kind) in gated.items() if kind in self.structures}

    @torch.no_grad()
    def observe(self, model) -> None:
        gated = self._gated(model)
        if not gradients_are_finite(m for m, _ in gated.values()):
            return
        head_size = model.config.hidden_size // model.config.num_attention_heads
        for name, (module, kind) in gated.items():
            if module.weight.grad is None:
                continue
            per_column = (module.weight.detach() * module.weight.grad).float().sum(0)  # gate gradient of each input channel
            if kind == "heads":
                per_column = per_column.reshape(-1, head_size).sum(1)  # a head's gate scales all its channels
            square = per_column.square()
            if name in self._fisher:
                self._fisher[name].add_(square)
            else:
                self._fisher[name] = square.clone()

    def scores(self, model) -> dict[str, torch.Tensor]:
        missing = [n for n in self._gated(model) if n not in self._fisher]
        if missing:
            raise RuntimeError(f"Fisher scores are empty for {missing[0]!r}: call observe() after backward first")
        return dict(self._fisher)  # per unit, read by head_scores / neuron_scores

    def head_scores(self, names: dict[str, str], unit_scores: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
        name = names["attention.output.dense"]
        if unit_scores[name].numel() != heads:
            raise RuntimeError(f"Fisher scores of {name!r} cover {unit_scores[name].numel()} heads, the layer has {heads}: "
                               "the model changed shape since observe()")
        return unit_scores[name]

    def neuron_scores(self, names: dict[str, str], unit_scores: dict[str, torch.Tensor]) -> torch.Tensor:
        return unit_scores[names["output.dense"]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: s.clone() for name, s in self._fisher.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._fisher = {name: s.clone().float() for name, s in state.items()}
