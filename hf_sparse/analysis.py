"""Sparsity statistics and pattern checks on masks (used by `hf-sparse inspect` and the tests)."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .models.sparse_bert.configuration_sparse_bert import (
    PRUNABLE_LINEARS,
    SparsityPattern,
    parse_sparsity_pattern,
)

_LAYER_RE = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(" + "|".join(re.escape(n) for n in PRUNABLE_LINEARS) + r")$")
_ATTENTION_IN = ("attention.self.query", "attention.self.key", "attention.self.value")
# Patterns that `detect_patterns` tries on masks of unknown origin.
CANDIDATE_PATTERNS = ("block:1x4", "block:4x1", "block:2x2", "2:4", "1:4", "structured:heads", "structured:neurons")


def split_module_name(name: str) -> tuple[int, str]:
    """`"bert.encoder.layer.3.intermediate.dense"` -> `(3, "intermediate.dense")`."""
    match = _LAYER_RE.search(name)
    if not match:
        raise ValueError(f"{name!r} is not a prunable linear layer of a BERT encoder")
    return int(match[1]), match[2]


def _uniform(groups: torch.Tensor, dims) -> bool:
    """True if every group (reduced over `dims`) is all-kept or all-pruned."""
    return bool(torch.equal(groups.all(dim=dims), groups.any(dim=dims)))


def pattern_violations(
    pattern: SparsityPattern | str, masks: Mapping[str, torch.Tensor], num_attention_heads: int
) -> list[str]:
    """Lists the modules whose mask does not follow `pattern` (empty: all follow it).

    Args:
        pattern: a `SparsityPattern` or its string.
        masks: boolean masks keyed by module name (`...encoder.layer.<i>.<module>`).
        num_attention_heads: needed for the `structured:heads` pattern.
    """
    if isinstance(pattern, str):
        pattern = parse_sparsity_pattern(pattern)
    problems = []
    heads_by_layer: dict[int, dict[str, torch.Tensor]] = {}
    neurons_by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, mask in masks.items():
        mask = mask.bool()
        rows, cols = mask.shape
        layer, module = split_module_name(name)
        if pattern.kind == "block":
            r, c = pattern.block
            if rows % r or cols % c:
                problems.append(f"{name}: shape {rows}x{cols} is not divisible into {r}x{c} blocks")
            elif not _uniform(mask.reshape(rows // r, r, cols // c, c), (1, 3)):
                problems.append(f"{name}: a {r}x{c} block is partly pruned")
        elif pattern.kind == "n:m":
            n, m = pattern.n_m
            if cols % m:
                problems.append(f"{name}: {cols} input features are not divisible into groups of {m}")
            elif bool((mask.reshape(rows, cols // m, m).sum(-1) > n).any()):
                problems.append(f"{name}: a group of {m} keeps more than {n}")
        elif pattern.kind == "structured":
            heads = "heads" in pattern.structures
            neurons = "neurons" in pattern.structures
            if module in _ATTENTION_IN or module == "attention.output.dense":
                if not heads:
                    if not bool(mask.all()):
                        problems.append(f"{name}: attention weights are pruned but the pattern has no 'heads'")
                    continue
                # head size from the hidden side, so compacted layers (fewer heads) work too
                head_dim = (cols if module in _ATTENTION_IN else rows) // num_attention_heads
                if module in _ATTENTION_IN:
                    grouped, dims = mask.reshape(-1, head_dim, cols), (1, 2)
                    kept = grouped.any(dim=dims)
                else:
                    grouped, dims = mask.reshape(rows, -1, head_dim), (0, 2)
                    kept = grouped.any(dim=dims)
                if not _uniform(grouped, dims):
                    problems.append(f"{name}: a head is partly pruned")
                heads_by_layer.setdefault(layer, {})[module] = kept
            else:
                if not neurons:
                    if not bool(mask.all()):
                        problems.append(f"{name}: feed-forward weights are pruned but the pattern has no 'neurons'")
                    continue
                dim = 1 if module == "intermediate.dense" else 0
                if not _uniform(mask, dim):
                    problems.append(f"{name}: a neuron is partly pruned")
                neurons_by_layer.setdefault(layer, {})[module] = mask.any(dim=dim)
    for layer, kept in sorted(heads_by_layer.items()):
        if len({tuple(v.tolist()) for v in kept.values()}) > 1:
            problems.append(f"encoder.layer.{layer}: Q, K, V and attention output prune different heads")
    for layer, kept in sorted(neurons_by_layer.items()):
        if len({tuple(v.tolist()) for v in kept.values()}) > 1:
            problems.append(f"encoder.layer.{layer}: intermediate rows and output columns prune different neurons")
    return problems


def detect_patterns(masks: Mapping[str, torch.Tensor], num_attention_heads: int) -> list[str]:
    """The candidate patterns (besides 'unstructured') that the masks follow; empty if none or no sparsity."""
    if all(bool(m.all()) for m in masks.values()):
        return []
    return [p for p in CANDIDATE_PATTERNS if not pattern_violations(p, masks, num_attention_heads)]


def sparsity_report(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    num_attention_heads: int,
    declared_pattern: str | None = None,
) -> dict:
    """Per-layer and global sparsity, pattern checks and mask/zero agreement.

    Args:
        weights: weight tensors keyed by module name.
        masks: boolean masks keyed by the same module names.
        num_attention_heads: for head-structure checks.
        declared_pattern: the pattern the config claims, checked if given.
    """
    layers = []
    total = kept = kept_zeros = stray = 0
    heads_pruned = neurons_pruned = 0
    for name in sorted(masks, key=lambda n: split_module_name(n)):
        mask = masks[name].bool()
        weight = weights[name]
        layer, module = split_module_name(name)
        n_kept = int(mask.sum())
        layers.append(
            {
                "name": name,
                "layer": layer,
                "module": module,
                "shape": list(mask.shape),
                "kept": n_kept,
                "sparsity": round(1.0 - n_kept / mask.numel(), 6),
            }
        )
        total += mask.numel()
        kept += n_kept
        kept_zeros += int((weight.masked_select(mask) == 0).sum())
        stray += int(weight.masked_select(~mask).count_nonzero())
        if module == "attention.output.dense":
            heads = mask.reshape(mask.shape[0], -1, mask.shape[0] // num_attention_heads).any(dim=(0, 2))
            heads_pruned += int((~heads).sum())
        elif module == "intermediate.dense":
            neurons_pruned += int((~mask.any(dim=1)).sum())
    checks = [
        {
            "check": "pruned weights are zero",
            "ok": stray == 0,
            "detail": f"{stray} non-zero weights where the mask is 0",
        }
    ]
    if declared_pattern is not None:
        problems = pattern_violations(declared_pattern, masks, num_attention_heads)
        checks.append(
            {
                "check": f"masks follow the declared pattern {declared_pattern!r}",
                "ok": not problems,
                "detail": "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
            }
        )
    return {
        "global_sparsity": round(1.0 - kept / total, 6) if total else 0.0,
        "prunable_weights": total,
        "kept_weights": kept,
        "kept_but_zero": kept_zeros,
        "fully_pruned_heads": heads_pruned,
        "fully_pruned_neurons": neurons_pruned,
        "consistent_with": detect_patterns(masks, num_attention_heads),
        "layers": layers,
        "checks": checks,
    }
