"""Conversions between plain BERT checkpoints (zeros in weights) and SparseBert checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

from .analysis import split_module_name, sparsity_report
from .models.sparse_bert import modeling_sparse_bert as msb
from .models.sparse_bert.configuration_sparse_bert import SparseBertConfig
from .models.sparse_bert.sparse_format import MASK_SUFFIX, SparseFormatError, load_sparse_checkpoint, read_safetensors

# Heads by CLI name. Classes are chosen from these fixed tables, never imported by a config string.
HEADS = {
    "base": msb.SparseBertModel,
    "masked-lm": msb.SparseBertForMaskedLM,
    "sequence-classification": msb.SparseBertForSequenceClassification,
    "question-answering": msb.SparseBertForQuestionAnswering,
    "token-classification": msb.SparseBertForTokenClassification,
    "multiple-choice": msb.SparseBertForMultipleChoice,
}
_BY_ARCHITECTURE = {cls.dense_class.__name__: cls for cls in HEADS.values()}
_BY_ARCHITECTURE.update({cls.__name__: cls for cls in HEADS.values()})
# Pre-training checkpoints (Intel's pruneofa models among them) keep their MLM head; NSP is dropped.
_BY_ARCHITECTURE["BertForPreTraining"] = msb.SparseBertForMaskedLM
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")


def read_config(path: Union[str, os.PathLike], **hub_kwargs) -> tuple[dict, str]:
    """The raw `config.json` of a local folder or Hub repo, and its resolved file path."""
    from transformers.utils import cached_file

    file = cached_file(path, "config.json", **hub_kwargs)
    try:
        with open(file, encoding="utf-8") as handle:
            return json.load(handle), file
    except ValueError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None


def head_class(config: dict, head: Optional[str], source: str):
    """The SparseBert class for `head`, or for the checkpoint's first architecture."""
    if head is not None:
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
        return HEADS[head]
    architectures = config.get("architectures") or ["BertModel"]
    cls = _BY_ARCHITECTURE.get(architectures[0])
    if cls is None:
        raise ValueError(
            f"{source}: architecture {architectures[0]!r} has no sparse counterpart; pass --head one of {sorted(HEADS)}"
        )
    return cls


def _copy_tokenizer(src: Union[str, os.PathLike], dest: Path, **hub_kwargs) -> list[str]:
    from transformers.utils import cached_file

    copied = []
    for name in TOKENIZER_FILES:
        try:
            file = cached_file(src, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        except OSError:
            file = None
        if file:
            shutil.copyfile(file, dest / name)
            copied.append(name)
    return copied


def _write_atomically(out: Union[str, os.PathLike], write) -> None:
    """Calls `write(tmp_dir)` and moves the finished folder to `out`; nothing is left on failure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        msb._publish_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dense_to_sparse(
    src: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    *,
    head: Optional[str] = None,
    sparsity_pattern: str = "unstructured",
    target_sparsity: Optional[float] = None,
) -> msb.SparseBertPreTrainedModel:
    """Converts a plain BERT checkpoint with zeros in its weights; masks are derived from the zeros."""
    config, file = read_config(src)
    if config.get("model_type") == SparseBertConfig.model_type:
        raise ValueError(f"{file}: already a sparse_bert checkpoint; use --to-bert to go the other way")
    if config.get("model_type") != "bert":
        raise ValueError(f"{file}: model_type {config.get('model_type')!r} is not supported; expected 'bert'")
    cls = head_class(config, head, file)
    model = cls.from_dense(src, sparsity_pattern=sparsity_pattern, target_sparsity=target_sparsity)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _copy_tokenizer(src, tmp)

    _write_atomically(out, write)
    return model


def sparse_to_dense(src: Union[str, os.PathLike], out: Union[str, os.PathLike], *, head: Optional[str] = None):
    """Exports a SparseBert checkpoint as a plain `BertFor*` one (zeros in weights, no masks)."""
    config, file = read_config(src)
    if config.get("model_type") != SparseBertConfig.model_type:
        raise ValueError(f"{file}: model_type {config.get('model_type')!r} is not 'sparse_bert'")
    cls = head_class(config, head, file)
    dense = cls.from_pretrained(src).to_dense()

    def write(tmp: Path) -> None:
        dense.save_pretrained(tmp, safe_serialization=True)
        _copy_tokenizer(src, tmp)

    _write_atomically(out, write)
    return dense


def inspect_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Report on a SparseBert checkpoint, or on a plain BERT one (masks derived from its zeros)."""
    raw_config, config_file = read_config(path)
    model_type = raw_config.get("model_type")
    files = msb._resolve_weight_files(path, {})
    if model_type == SparseBertConfig.model_type:
        config = SparseBertConfig.from_pretrained(path)
        state = load_sparse_checkpoint(files)
        msb.check_masks_against_config(state, config, source=files[0])
        masks = {k[: -len(".weight" + MASK_SUFFIX)]: v for k, v in state.items() if k.endswith(MASK_SUFFIX)}
        source = "sparse_bert checkpoint"
        declared = config.sparsity_pattern
    elif model_type == "bert":
        config = SparseBertConfig(**{k: v for k, v in raw_config.items() if k != "model_type"})
        state = {}
        for file in files:
            state.update(read_safetensors(file)[0])
        masks = {}
        for key, tensor in state.items():
            if key.endswith(".weight"):
                try:
                    split_module_name(key[: -len(".weight")])
                except ValueError:
                    continue
                masks[key[: -len(".weight")]] = tensor != 0
        source = "plain BERT checkpoint (masks derived from zeros)"
        declared = None
    else:
        raise ValueError(f"{config_file}: model_type {model_type!r} is neither 'sparse_bert' nor 'bert'")
    if not masks:
        raise SparseFormatError(f"{files[0]}: no prunable encoder weights found")
    weights = {name: state[name + ".weight"] for name in masks}
    report = sparsity_report(weights, masks, num_attention_heads=config.num_attention_heads, declared_pattern=declared)
    if model_type == SparseBertConfig.model_type:
        recorded = config.measured_sparsity
        report["checks"].append(
            {
                "check": "config measured_sparsity matches the masks",
                "ok": recorded is not None and abs(recorded - report["global_sparsity"]) < 1e-5,
                "detail": f"config says {recorded}, masks give {report['global_sparsity']}",
            }
        )
    sizes = {Path(f).name: os.path.getsize(f) for f in files}
    dtype = next((t.dtype for k, t in state.items() if k.endswith(".weight") and t.is_floating_point()), torch.float32)
    return {
        "path": str(path),
        "source": source,
        "model_type": model_type,
        "architectures": raw_config.get("architectures"),
        "sparsity_pattern": declared,
        "target_sparsity": raw_config.get("target_sparsity"),
        "format_version": raw_config.get("sparse_format_version"),
        "dtype": str(dtype).replace("torch.", ""),
        "weight_files": sizes,
        "weight_bytes": sum(sizes.values()),
        **report,
    }
