"""`SparsityCallback`: keeps the upstream sparsity pattern fixed under the stock `Trainer`, and proves it."""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
from transformers import TrainerCallback


class MaskDriftError(RuntimeError):
    """The sparsity pattern changed during training (a mask differs from the reference, or a pruned weight is not zero)."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / `torch.compile` / accelerate wrappers, or the one `SparseBert*` model inside
    a composite model (a sentence-transformers `SentenceTransformer`, for example)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            break
        model = inner
    if hasattr(model, "masked_linears"):
        return model
    sparse = [m for m in model.modules() if m is not model and hasattr(m, "masked_linears")]
    return sparse[0] if len(sparse) == 1 else model


def reference_masks(source: Union[str, os.PathLike, torch.nn.Module, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Masks to compare against: from a model, a `{name: mask}` dict or a saved checkpoint folder.

    Names are relative to the encoder (`encoder.layer.0.attention.self.query`), so an MLM checkpoint
    and a classification model built from it compare layer by layer.
    """
    if isinstance(source, Mapping):
        masks = dict(source)
    elif isinstance(source, torch.nn.Module):
        masks = unwrap_model(source).get_masks()
    else:
        from ..models.sparse_bert.modeling_sparse_bert import _resolve_weight_files
        from ..models.sparse_bert.sparse_format import load_sparse_checkpoint

        state = load_sparse_checkpoint(_resolve_weight_files(source, {}))
        masks = {k[: -len(".weight_mask")]: v for k, v in state.items() if k.endswith(".weight_mask")}
        if not masks:
            raise ValueError(f"{source}: no masks in the checkpoint (is it a sparse_bert checkpoint?)")
    return {_encoder_relative(name): mask.detach().to("cpu", torch.bool).clone() for name, mask in masks.items()}


def _encoder_relative(name: str) -> str:
    index = name.find("encoder.layer.")
    return name[index:] if index >= 0 else name


@torch.no_grad()
def mask_drift(model: torch.nn.Module, reference: Mapping[str, torch.Tensor]) -> list[str]:
    """Every difference between the model's pattern and `reference`; empty when the pattern is intact.

    Checks that both name the same layers, that each mask equals its reference bit for bit, and that
    every weight the mask prunes is exactly zero.
    """
    modules = {_encoder_relative(n): m for n, m in unwrap_model(model).masked_linears().items()}
    problems = []
    for name in sorted(set(reference) - set(modules)):
        problems.append(f"{name}: in the reference masks but not a masked layer of the model")
    for name in sorted(set(modules) - set(reference)):
        problems.append(f"{name}: masked layer of the model without a reference mask")
    for name in sorted(set(modules) & set(reference)):
        module, expected = modules[name], reference[name]
        mask = module.weight_mask.detach().to("cpu")
        if tuple(mask.shape) != tuple(expected.shape):
            problems.append(f"{name}: mask shape {tuple(mask.shape)}, reference {tuple(expected.shape)}")
            continue
        changed = int((mask != expected).sum())
        if changed:
            problems.append(f"{name}: {changed} mask entries differ from the reference")
        revived = int((module.weight.detach().to("cpu")[~mask] != 0).sum())
        if revived:
            problems.append(f"{name}: {revived} pruned weights are not zero")
    return problems


class SparsityCallback(TrainerCallback):
    """Locks the sparsity pattern of a `SparseBert*` model during fine-tuning on the stock `Trainer`.

    The lock itself is in the model: `MaskedLinear` multiplies the weight by its mask when gradients
    are on, so pruned weights get exactly zero gradient, and AdamW (weight decay included), gradient
    accumulation, autocast, `torch.compile` and DDP all leave them at zero. This callback records
    the reference pattern, checks it at every checkpoint save and at the end of training (and every
    `check_every` steps if set), and raises `MaskDriftError` listing what changed.

    Args:
        reference: the pattern to hold — a checkpoint folder (e.g. the upstream model), a model, or
            `{name: mask}`. Default: the model's masks when training begins (after a resume: the
            resumed checkpoint's masks).
        check_every: also check every this many optimizer steps (0: only at saves and at the end).
    """

    def __init__(self, reference=None, check_every: int = 0):
        self._reference_source = reference
        self.reference: Optional[dict[str, torch.Tensor]] = None
        self.check_every = check_every
        self.checks = 0

    def _model(self, kwargs) -> torch.nn.Module:
        model = unwrap_model(kwargs["model"])
        if not hasattr(model, "masked_linears"):
            raise TypeError(
                f"SparsityCallback needs a SparseBert* model, got {type(model).__name__}; "
                "convert a plain BERT with SparseBertFor*.from_dense(...)"
            )
        return model

    def verify(self, model: torch.nn.Module, when: str) -> None:
        problems = mask_drift(model, self.reference)
        self.checks += 1
        if problems:
            shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise MaskDriftError(f"sparsity pattern drifted ({when}):\n  {shown}")

    def on_train_begin(self, args, state, control, **kwargs):
        model = self._model(kwargs)
        source = self._reference_source if self._reference_source is not None else model
        self.reference = reference_masks(source)
        self.verify(model, "at the start of training: the model does not match the reference pattern")

    def on_step_end(self, args, state, control, **kwargs):
        if self.check_every and state.global_step % self.check_every == 0:
            self.verify(self._model(kwargs), f"after step {state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        self.verify(self._model(kwargs), f"at the checkpoint of step {state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.verify(self._model(kwargs), "at the end of training")
