"""SparseBert configuration: a `BertConfig` plus plain-data sparsity metadata.

Nothing in this config names code: the pattern is a short string parsed here, the prunable
modules are names of linear sub-modules inside each encoder layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from transformers import BertConfig

from .sparse_format import FORMAT_VERSION as SPARSE_FORMAT_VERSION  # the weights file's format

# The linear layers of one encoder layer, as named inside `BertLayer`.
PRUNABLE_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

STRUCTURES = ("heads", "neurons")
CLASSIFIER_POOLINGS = ("cls", "mean")

PATTERN_HELP = (
    "expected 'unstructured', 'block:RxC' (e.g. 'block:4x1'), 'N:M' (e.g. '2:4') or "
    "'structured:heads', 'structured:neurons', 'structured:heads+neurons'"
)


@dataclass(frozen=True)
class SparsityPattern:
    """A parsed `sparsity_pattern` string."""

    kind: str  # "unstructured" | "block" | "n:m" | "structured"
    block: Optional[tuple[int, int]] = None  # (rows, cols) for kind == "block"
    n_m: Optional[tuple[int, int]] = None  # (n kept, out of m) for kind == "n:m"
    structures: tuple[str, ...] = ()  # subset of STRUCTURES for kind == "structured"

    def __str__(self) -> str:
        if self.kind == "block":
            return f"block:{self.block[0]}x{self.block[1]}"
        if self.kind == "n:m":
            return f"{self.n_m[0]}:{self.n_m[1]}"
        if self.kind == "structured":
            return "structured:" + "+".join(self.structures)
        return self.kind


def parse_sparsity_pattern(pattern: str) -> SparsityPattern:
    """Parses a pattern string such as `"unstructured"`, `"block:4x1"`, `"2:4"` or `"structured:heads"`.

    Raises:
        ValueError: if the string names no known pattern.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"sparsity_pattern must be a string, got {type(pattern).__name__}: {PATTERN_HELP}")
    text = pattern.strip().lower()
    if text == "unstructured":
        return SparsityPattern("unstructured")
    match = re.fullmatch(r"block:(\d+)x(\d+)", text)
    if match:
        rows, cols = int(match[1]), int(match[2])
        if rows < 1 or cols < 1:
            raise ValueError(f"sparsity_pattern {pattern!r}: block sizes must be positive")
        return SparsityPattern("block", block=(rows, cols))
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match:
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"sparsity_pattern {pattern!r}: N:M needs 0 < N < M")
        return SparsityPattern("n:m", n_m=(n, m))
    match = re.fullmatch(r"structured:([a-z+]+)", text)
    if match:
        parts = tuple(match[1].split("+"))
        unknown = [p for p in parts if p not in STRUCTURES]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(f"sparsity_pattern {pattern!r}: unknown structure {unknown}; {PATTERN_HELP}")
        return SparsityPattern("structured", structures=tuple(s for s in STRUCTURES if s in parts))
    raise ValueError(f"unknown sparsity_pattern {pattern!r}: {PATTERN_HELP}")


def _check_fraction(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


class SparseBertConfig(BertConfig):
    r"""Configuration of a [`SparseBertModel`]: every [`BertConfig`] field plus sparsity metadata.

    Args:
        sparsity_pattern (`str`, *optional*, defaults to `"unstructured"`):
            Shape of the sparsity: `"unstructured"`, `"block:RxC"`, `"N:M"` or
            `"structured:heads"`, `"structured:neurons"`, `"structured:heads+neurons"`.
        target_sparsity (`float`, *optional*):
            Fraction of prunable weights the pruning recipe aimed to remove.
        measured_sparsity (`float`, *optional*):
            Fraction of prunable weights that are masked; written by `save_pretrained`.
        prunable_modules (`list[str]`, *optional*):
            Linear layers of each encoder layer that carry a mask; a subset of `PRUNABLE_LINEARS`
            (the default: all six).
        sparse_format_version (`int`, *optional*, defaults to 1):
            Version of the on-disk weight format.
        layer_num_attention_heads (`list[int]`, *optional*):
            Heads kept in each encoder layer of a compacted model (see `hf_sparse.deploy.compact`);
            `None` means every layer has `num_attention_heads`.
        layer_intermediate_sizes (`list[int]`, *optional*):
            FFN neurons kept in each encoder layer of a compacted model; `None` means every layer
            has `intermediate_size`.
        classifier_pooling (`str`, *optional*, defaults to `"cls"`):
            The vector `SparseBertForSequenceClassification` feeds its pooler and classifier: `"cls"` (the [CLS]
            token, as `BertForSequenceClassification`) or `"mean"` (the mean of the last hidden states over the
            attended tokens, as ModernBERT's option of that name; for encoders trained with mean pooling, such as
            sentence-transformers models).
        cls_only_last_layer (`bool`, *optional*, defaults to `True`):
            Whether `SparseBertForSequenceClassification` (with `"cls"` pooling) and `SparseBertForMultipleChoice`
            compute their last encoder layer at the [CLS] position only when not training (queries, attention output
            and FFN for one position; keys and values for all). The pooler reads nothing else, so the logits are the
            same up to float rounding and the layer costs a fraction as much. It does not apply in training mode or
            when hidden states, attentions or a head mask are asked for.
        kwargs:
            Passed to [`BertConfig`].
    """

    model_type = "sparse_bert"

    def __init__(
        self,
        sparsity_pattern: str = "unstructured",
        target_sparsity: Optional[float] = None,
        measured_sparsity: Optional[float] = None,
        prunable_modules: Optional[Sequence[str]] = None,
        sparse_format_version: int = SPARSE_FORMAT_VERSION,
        layer_num_attention_heads: Optional[Sequence[int]] = None,
        layer_intermediate_sizes: Optional[Sequence[int]] = None,
        classifier_pooling: str = "cls",
        cls_only_last_layer: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(cls_only_last_layer, bool):
            raise ValueError(f"cls_only_last_layer must be true or false, got {cls_only_last_layer!r}")
        self.cls_only_last_layer = cls_only_last_layer
        if classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling={classifier_pooling!r}; expected one of {CLASSIFIER_POOLINGS}")
        self.classifier_pooling = classifier_pooling
        self.sparsity_pattern = str(parse_sparsity_pattern(sparsity_pattern))
        self.target_sparsity = _check_fraction("target_sparsity", target_sparsity)
        self.measured_sparsity = _check_fraction("measured_sparsity", measured_sparsity)
        modules = list(PRUNABLE_LINEARS if prunable_modules is None else prunable_modules)
        unknown = [m for m in modules if m not in PRUNABLE_LINEARS]
        if unknown or not modules:
            raise ValueError(
                f"prunable_modules {modules!r}: {unknown or 'empty'} not allowed; "
                f"choose a non-empty subset of {list(PRUNABLE_LINEARS)}"
            )
        self.prunable_modules = [m for m in PRUNABLE_LINEARS if m in modules]
        if int(sparse_format_version) != SPARSE_FORMAT_VERSION:
            raise ValueError(
                f"sparse_format_version {sparse_format_version} is not supported by this version of hf-sparse "
                f"(it reads version {SPARSE_FORMAT_VERSION}); upgrade hf-sparse"
            )
        self.sparse_format_version = SPARSE_FORMAT_VERSION
        self.layer_num_attention_heads = self._check_layer_sizes(
            "layer_num_attention_heads", layer_num_attention_heads, self.num_attention_heads
        )
        self.layer_intermediate_sizes = self._check_layer_sizes(
            "layer_intermediate_sizes", layer_intermediate_sizes, self.intermediate_size
        )

    def _check_layer_sizes(self, name: str, sizes: Optional[Sequence[int]], maximum: int) -> Optional[list[int]]:
        if sizes is None:
            return None
        if isinstance(sizes, (str, bytes)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            raise ValueError(f"{name} must be a list of integers, got {sizes!r}")
        sizes = list(sizes)
        if len(sizes) != self.num_hidden_layers:
            raise ValueError(f"{name} has {len(sizes)} entries; the model has {self.num_hidden_layers} layers")
        if not all(1 <= v <= maximum for v in sizes):
            raise ValueError(f"{name} {sizes}: each entry must be between 1 and {maximum}")
        return sizes

    @property
    def is_compacted(self) -> bool:
        """Whether some encoder layer has fewer heads or FFN neurons than the config's uniform sizes."""
        return self.layer_num_attention_heads is not None or self.layer_intermediate_sizes is not None

    def heads_in_layer(self, layer: int) -> int:
        return self.num_attention_heads if self.layer_num_attention_heads is None else self.layer_num_attention_heads[layer]

    def intermediate_size_in_layer(self, layer: int) -> int:
        return self.intermediate_size if self.layer_intermediate_sizes is None else self.layer_intermediate_sizes[layer]

    @property
    def pattern(self) -> SparsityPattern:
        return parse_sparsity_pattern(self.sparsity_pattern)


SPARSITY_CONFIG_KEYS = (
    "sparsity_pattern",
    "target_sparsity",
    "measured_sparsity",
    "prunable_modules",
    "sparse_format_version",
    "layer_num_attention_heads",
    "layer_intermediate_sizes",
)

__all__ = [
    "CLASSIFIER_POOLINGS",
    "PRUNABLE_LINEARS",
    "SPARSE_FORMAT_VERSION",
    "SPARSITY_CONFIG_KEYS",
    "SparseBertConfig",
    "SparsityPattern",
    "parse_sparsity_pattern",
]
