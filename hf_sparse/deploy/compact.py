"""Structured compaction: physically remove attention heads and FFN neurons that do nothing.

A head contributes nothing that depends on the input when its value rows are all zero (its output
is then the value bias, a constant) or its columns in the attention output are all zero. An FFN
neuron is likewise removable when its intermediate row is all zero (its activation is the constant
`act(bias)`) or its column in the output layer is. Constant contributions are folded into the
output bias, so the compacted model computes the same function (up to float rounding).

The result is a `sparse_bert` checkpoint whose config lists the heads and neurons kept per layer
(`layer_num_attention_heads`, `layer_intermediate_sizes`); masks are kept for any unstructured
sparsity that remains. It loads with `hf_sparse` or `trust_remote_code`, and exports to ONNX and
OpenVINO like any SparseBert. A layer keeps at least one head and one neuron (zeroed if all were
removable) so no tensor has a zero-sized dimension.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import torch

from ..models.sparse_bert.modeling_sparse_bert import MaskedLinear, SparseBertPreTrainedModel

PathLike = Union[str, Path]


@dataclass
class CompactionReport:
    """What `compact_model` removed."""

    heads_before: int
    heads_after: int
    neurons_before: int
    neurons_after: int
    parameters_before: int
    parameters_after: int
    layer_num_attention_heads: list[int]
    layer_intermediate_sizes: list[int]
    max_abs_diff: float | None = None  # masked vs compacted outputs on a probe batch (set by `compact`)

    def to_dict(self) -> dict:
        return asdict(self)


def _zero_columns(linear: torch.nn.Linear, columns: torch.Tensor) -> None:
    linear.weight[:, columns] = 0
    if isinstance(linear, MaskedLinear):
        linear.weight_mask[:, columns] = False


@torch.no_grad()
def _plan_layer(layer, head_size: int, activation) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds constant contributions into output biases; returns the head and neuron indices to keep."""
    value, attn_out = layer.attention.self.value, layer.attention.output.dense
    heads = attn_out.in_features // head_size
    value_dead = value.weight.reshape(heads, -1).eq(0).all(dim=1)
    out_dead = attn_out.weight.reshape(attn_out.out_features, heads, head_size).eq(0).all(dim=(0, 2))
    for h in torch.nonzero(value_dead & ~out_dead).flatten().tolist():
        cols = slice(h * head_size, (h + 1) * head_size)
        attn_out.bias += attn_out.weight[:, cols] @ value.bias[cols]  # softmax rows sum to 1: output is b_v
    keep_heads = torch.nonzero(~(value_dead | out_dead)).flatten()
    if keep_heads.numel() == 0:  # keep one head that contributes nothing
        keep_heads = torch.tensor([0])
        _zero_columns(attn_out, torch.arange(0, head_size))

    inter, ffn_out = layer.intermediate.dense, layer.output.dense
    in_dead = inter.weight.eq(0).all(dim=1)
    out_dead = ffn_out.weight.eq(0).all(dim=0)
    folded = in_dead & ~out_dead
    if folded.any():
        ffn_out.bias += ffn_out.weight[:, folded] @ activation(inter.bias[folded])
    keep_neurons = torch.nonzero(~(in_dead | out_dead)).flatten()
    if keep_neurons.numel() == 0:
        keep_neurons = torch.tensor([0])
        _zero_columns(ffn_out, torch.tensor([0]))
    return keep_heads, keep_neurons


def _rows(index: torch.Tensor, unit: int) -> torch.Tensor:
    return (index[:, None] * unit + torch.arange(unit)).flatten()


@torch.no_grad()
def compact_model(model: SparseBertPreTrainedModel) -> tuple[SparseBertPreTrainedModel, CompactionReport]:
    """Returns a new model without the removable heads and neurons of `model` (left unchanged).

    Raises:
        TypeError: `model` is not a SparseBert model.
    """
    from transformers.activations import ACT2FN

    if not isinstance(model, SparseBertPreTrainedModel):
        raise TypeError(f"compact_model expects a SparseBert model, got {type(model).__name__}")
    work = copy.deepcopy(model).float().eval()
    config = work.config
    base = getattr(work, work.base_model_prefix, work)
    head_size = config.hidden_size // config.num_attention_heads
    activation = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
    plans = [_plan_layer(layer, head_size, activation) for layer in base.encoder.layer]

    state = work.state_dict()
    prefix = f"{work.base_model_prefix}.encoder.layer" if any(k.startswith(work.base_model_prefix + ".") for k in state) else "encoder.layer"
    for i, (keep_heads, keep_neurons) in enumerate(plans):
        rows = _rows(keep_heads, head_size)
        p = f"{prefix}.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            for suffix in ("weight", "bias", "weight_mask"):
                if p + name + "." + suffix in state:
                    state[p + name + "." + suffix] = state[p + name + "." + suffix][rows]
        for suffix in ("weight", "weight_mask"):
            key = p + "attention.output.dense." + suffix
            if key in state:
                state[key] = state[key][:, rows]
            key = p + "output.dense." + suffix
            if key in state:
                state[key] = state[key][:, keep_neurons]
        for suffix in ("weight", "bias", "weight_mask"):
            key = p + "intermediate.dense." + suffix
            if key in state:
                state[key] = state[key][keep_neurons]

    heads = [int(h.numel()) for h, _ in plans]
    neurons = [int(n.numel()) for _, n in plans]
    new_config = copy.deepcopy(config)
    full_heads = [config.heads_in_layer(i) for i in range(config.num_hidden_layers)]
    full_neurons = [config.intermediate_size_in_layer(i) for i in range(config.num_hidden_layers)]
    new_config.layer_num_attention_heads = None if heads == [config.num_attention_heads] * len(heads) else heads
    new_config.layer_intermediate_sizes = None if neurons == [config.intermediate_size] * len(neurons) else neurons
    compacted = type(model)(new_config)
    compacted.load_state_dict(state, strict=True)
    compacted = compacted.to(model.dtype).eval()
    report = CompactionReport(
        heads_before=sum(full_heads),
        heads_after=sum(heads),
        neurons_before=sum(full_neurons),
        neurons_after=sum(neurons),
        parameters_before=sum(p.numel() for p in model.parameters()),
        parameters_after=sum(p.numel() for p in compacted.parameters()),
        layer_num_attention_heads=heads,
        layer_intermediate_sizes=neurons,
    )
    return compacted, report


def _probe_inputs(config, architecture: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (2, 2, 24) if architecture.endswith("MultipleChoice") else (2, 24)
    ids = torch.randint(0, config.vocab_size, shape, generator=generator)
    mask = torch.ones_like(ids)
    mask[..., 18:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _first_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else next(iter(output.values()))


def compact(model_dir: PathLike, out_dir: PathLike, atol: float = 1e-4) -> CompactionReport:
    """Compacts the SparseBert checkpoint in `model_dir` into `out_dir` (with its tokenizer).

    The compacted model's fp32 outputs are compared with the masked model's on a probe batch
    before anything is written.

    Raises:
        FileExistsError: `out_dir` exists.
        ValueError: the checkpoint is not a SparseBert one, or the outputs differ by more than `atol`.
    """
    import hf_sparse
    from ..models.sparse_bert.configuration_sparse_bert import SparseBertConfig

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new folder")
    config = SparseBertConfig.from_pretrained(model_dir)
    architecture = (config.architectures or ["SparseBertModel"])[0]
    cls = getattr(hf_sparse, architecture, None)
    if not (isinstance(cls, type) and issubclass(cls, SparseBertPreTrainedModel)):
        raise ValueError(f"{model_dir}/config.json: architecture {architecture!r} is not a SparseBert class")
    model = cls.from_pretrained(model_dir).eval()
    dtype = model.dtype
    compacted, report = compact_model(model)
    inputs = _probe_inputs(model.config, architecture)
    with torch.no_grad():
        expected = _first_output(model.float()(**inputs))
        got = _first_output(compacted.float()(**inputs))
    report.max_abs_diff = float((expected - got).abs().max())
    if not report.max_abs_diff <= atol:
        raise ValueError(f"{model_dir}: compacted outputs differ from the masked model's by {report.max_abs_diff:.3g} > {atol}")
    compacted = compacted.to(dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "model"
        compacted.save_pretrained(staged)
        _copy_tokenizer(model_dir, staged)
        publish_folder(staged, out_dir)
    return report


def publish_folder(staged: Path, out_dir: Path) -> None:
    """Renames a finished staging folder to `out_dir` (same filesystem), refusing to nest or overwrite."""
    import os

    if out_dir.exists():
        raise FileExistsError(f"{out_dir} appeared while it was being written; nothing was moved into it")
    os.rename(staged, out_dir)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
