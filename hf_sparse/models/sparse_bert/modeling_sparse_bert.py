"""SparseBert: BERT whose encoder linear layers carry pruning masks.

The models are the `transformers` BERT classes with each prunable `nn.Linear` of the encoder
replaced by a `MaskedLinear`: the same weight and bias plus a boolean `weight_mask` buffer, as
`torch.nn.utils.prune` keeps masks next to weights. Pruned weights are exactly zero; while
gradients are on, the forward pass multiplies the weight by its mask, so pruned entries get zero
gradients and optimizers (AdamW with weight decay included) leave them at zero.

`save_pretrained` writes the compressed format of `sparse_format.py` and this file's source next
to the weights, so the checkpoint also loads with `trust_remote_code=True` where hf-sparse is
not installed. This file imports only torch, transformers and its two sibling files.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    PretrainedConfig,
)
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput
from transformers import __version__ as _TRANSFORMERS_VERSION
from transformers.models.bert.modeling_bert import BertPreTrainedModel

from .configuration_sparse_bert import SPARSITY_CONFIG_KEYS, SparseBertConfig
from .sparse_format import (
    BITMASK_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MASK_SUFFIX,
    META_FORMAT,
    META_SHAPES,
    META_VERSION,
    VALUES_SUFFIX,
    decode_state_dict,
    SparseFormatError,
    encode_state_dict,
    start_loading_sparse_checkpoint,
    write_safetensors,
)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CODE_FILES = ("configuration_sparse_bert.py", "modeling_sparse_bert.py", "sparse_format.py")
AUTO_MAP = {
    "AutoConfig": "configuration_sparse_bert.SparseBertConfig",
    "AutoModel": "modeling_sparse_bert.SparseBertModel",
    "AutoModelForMaskedLM": "modeling_sparse_bert.SparseBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_sparse_bert.SparseBertForSequenceClassification",
    "AutoModelForQuestionAnswering": "modeling_sparse_bert.SparseBertForQuestionAnswering",
    "AutoModelForTokenClassification": "modeling_sparse_bert.SparseBertForTokenClassification",
    "AutoModelForMultipleChoice": "modeling_sparse_bert.SparseBertForMultipleChoice",
}
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# Arguments of `PreTrainedModel.from_pretrained` that are not config attributes (transformers 4.57 and 5.x).
_LOADING_KWARGS = frozenset(
    """cache_dir ignore_mismatched_sizes force_download local_files_only token revision use_safetensors
    weights_only resume_download proxies output_loading_info use_auth_token trust_remote_code mirror
    _from_pipeline _from_auto dtype torch_dtype device_map max_memory offload_folder offload_state_dict
    offload_buffers load_in_8bit load_in_4bit quantization_config subfolder _commit_hash variant
    adapter_kwargs adapter_name generation_config gguf_file tp_plan tp_size distributed_config device_mesh
    use_kernels key_mapping low_cpu_mem_usage _fast_init attn_implementation fusion_config disable_mmap
    experts_implementation kernel_config""".split()
)
# Loading arguments under which transformers reads the weights' contents while loading them (to quantize,
# shard, offload or move them): the weights are then decoded before loading starts, not alongside it.
_READS_WEIGHTS_WHILE_LOADING = (
    "device_map", "max_memory", "offload_folder", "offload_state_dict", "offload_buffers", "load_in_8bit",
    "load_in_4bit", "quantization_config", "gguf_file", "tp_plan", "tp_size", "distributed_config", "device_mesh",
    "key_mapping",
)
_IGNORED_SAVE_KWARGS = ("save_function", "save_peft_format", "save_original_format", "use_temp_dir")


class MaskedLinear(nn.Linear):
    """`nn.Linear` with a boolean `weight_mask` buffer; where the mask is 0 the weight is exactly 0."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight_mask", _all_ones_mask(self.weight))
        self._register_load_state_dict_pre_hook(self._decode_compressed_weight)

    def _decode_compressed_weight(self, state_dict, prefix, *args) -> None:
        """Lets `load_state_dict` read the compressed keys of a saved file (e.g. a Trainer resuming)."""
        values, bitmask = state_dict.get(prefix + "weight" + VALUES_SUFFIX), state_dict.get(prefix + "weight" + BITMASK_SUFFIX)
        if values is None and bitmask is None:
            return
        if values is None or bitmask is None:
            raise SparseFormatError(f"state dict has only one of {prefix}weight{VALUES_SUFFIX} / {BITMASK_SUFFIX}")
        source = f"state dict entry {prefix}weight"
        decoded = decode_state_dict(
            {"weight" + VALUES_SUFFIX: values, "weight" + BITMASK_SUFFIX: bitmask},
            {META_FORMAT: FORMAT_NAME, META_VERSION: str(FORMAT_VERSION), META_SHAPES: json.dumps({"weight": list(self.weight.shape)})},
            source=source,
        )
        del state_dict[prefix + "weight" + VALUES_SUFFIX], state_dict[prefix + "weight" + BITMASK_SUFFIX]
        state_dict[prefix + "weight"] = decoded["weight"]
        state_dict[prefix + "weight_mask"] = decoded["weight_mask"]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "MaskedLinear":
        """Wraps `linear`'s own parameters (no copy) with an all-ones mask."""
        # nn.Linear.__init__ would create and initialise parameters only to drop them (a third of a
        # BERT-base model's construction time): build the module around `linear`'s parameters instead
        masked = cls.__new__(cls)
        nn.Module.__init__(masked)
        masked.in_features, masked.out_features = linear.in_features, linear.out_features
        masked.register_parameter("weight", linear.weight)
        masked.register_parameter("bias", linear.bias)
        masked.register_buffer("weight_mask", _all_ones_mask(linear.weight))
        masked._register_load_state_dict_pre_hook(masked._decode_compressed_weight)
        return masked

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.requires_grad and torch.is_grad_enabled():
            weight = weight * self.weight_mask
        return F.linear(input, weight, self.bias)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Sets the weight to zero where the mask is 0."""
        self.weight.mul_(self.weight_mask)

    def extra_repr(self) -> str:
        if self.weight_mask.device.type == "meta":
            return super().extra_repr()
        sparsity = 1.0 - self.weight_mask.float().mean().item()
        return f"{super().extra_repr()}, sparsity={sparsity:.3f}"


def _all_ones_mask(weight: torch.Tensor) -> torch.Tensor:
    """A keep-everything mask for `weight` (its shape and device; no data on the meta device)."""
    if weight.device.type == "meta":  # torch.ones_like on meta goes through slow Python decompositions
        return torch.empty(weight.shape, dtype=torch.bool, device="meta")
    return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)


def _fill_ones(tensor: torch.Tensor) -> None:
    try:  # transformers 5: skips tensors already loaded from a checkpoint
        from transformers import initialization
    except ImportError:
        initialization = None
    if initialization is not None and hasattr(initialization, "ones_"):
        initialization.ones_(tensor)
    else:
        tensor.fill_(True)


def size_encoder(encoder: nn.Module, config: SparseBertConfig) -> None:
    """Gives each encoder layer of a compacted model its own number of heads and FFN neurons."""
    if not config.is_compacted:
        return
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    for index, layer in enumerate(encoder.layer):
        attention = layer.attention.self
        heads = config.heads_in_layer(index)
        width = heads * head_size
        if attention.query.out_features != width:
            for name in ("query", "key", "value"):
                setattr(attention, name, nn.Linear(hidden, width))
            layer.attention.output.dense = nn.Linear(width, hidden)
            attention.num_attention_heads, attention.all_head_size = heads, width
        neurons = config.intermediate_size_in_layer(index)
        if layer.intermediate.dense.out_features != neurons:
            layer.intermediate.dense = nn.Linear(hidden, neurons)
            layer.output.dense = nn.Linear(neurons, hidden)


def mask_encoder(encoder: nn.Module, config: SparseBertConfig) -> None:
    """Replaces the prunable linear layers of every encoder layer by `MaskedLinear`s."""
    for layer in encoder.layer:
        for name in config.prunable_modules:
            parent_name, _, attr = name.rpartition(".")
            parent = layer.get_submodule(parent_name)
            linear = getattr(parent, attr)
            if not isinstance(linear, MaskedLinear):
                setattr(parent, attr, MaskedLinear.from_linear(linear))


def _resolve_weight_files(path: Union[str, os.PathLike], hub_kwargs: dict) -> list[str]:
    from transformers.utils import cached_file

    kwargs = dict(hub_kwargs, _raise_exceptions_for_missing_entries=False)
    first_error = None
    try:
        single = cached_file(path, WEIGHTS_NAME, **kwargs)
    except OSError as err:  # some servers answer a missing file as a missing repository
        single, first_error = None, err
    if single:
        return [single]
    try:
        index = cached_file(path, WEIGHTS_INDEX_NAME, **kwargs)
    except OSError:
        index = None
    if not index:
        if first_error is not None:
            raise first_error
        raise OSError(
            f"{path}: found neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}; hf-sparse reads safetensors checkpoints only"
        )
    with open(index, encoding="utf-8") as handle:
        try:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise SparseFormatError(f"{index}: not a safetensors index ({err!r})") from None
    files = []
    for shard in shards:
        resolved = cached_file(path, shard, **kwargs)
        if not resolved:
            raise SparseFormatError(f"{index}: shard {shard!r} is missing")
        files.append(resolved)
    return files


def expected_mask_shapes(config: SparseBertConfig) -> dict[str, tuple[int, int]]:
    """Shape of each prunable weight, keyed `encoder.layer.<i>.<module>.weight`."""
    hidden, head_size = config.hidden_size, config.hidden_size // config.num_attention_heads
    shapes = {}
    for i in range(config.num_hidden_layers):
        width, inter = config.heads_in_layer(i) * head_size, config.intermediate_size_in_layer(i)
        layer = {
            "attention.self.query": (width, hidden),
            "attention.self.key": (width, hidden),
            "attention.self.value": (width, hidden),
            "attention.output.dense": (hidden, width),
            "intermediate.dense": (inter, hidden),
            "output.dense": (hidden, inter),
        }
        shapes.update({f"encoder.layer.{i}.{name}.weight": layer[name] for name in config.prunable_modules})
    return shapes


def check_masks_against_config(state_dict: Mapping[str, torch.Tensor], config: SparseBertConfig, source: str) -> None:
    """Every prunable weight has a mask of its shape; no other tensor has one."""
    expected = expected_mask_shapes(config)
    found = {}
    for key, tensor in state_dict.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        weight_key = key[: -len(MASK_SUFFIX)]
        short = weight_key[len("bert.") :] if weight_key.startswith("bert.") else weight_key
        if short not in expected:
            raise SparseFormatError(
                f"{source}: extra mask {key!r}: the config's prunable_modules {config.prunable_modules} "
                f"for {config.num_hidden_layers} layers have no such weight"
            )
        if tuple(tensor.shape) != expected[short]:
            raise SparseFormatError(
                f"{source}: tensor {weight_key!r} has shape {list(tensor.shape)}, the config expects {list(expected[short])}"
            )
        found[short] = key
    missing = sorted(set(expected) - set(found))
    if missing:
        raise SparseFormatError(
            f"{source}: missing mask for {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )


@torch.no_grad()
def _adopt_decoded(model: nn.Module, decoded: Mapping[str, torch.Tensor], names) -> None:
    """Copies into `model` each of the `names` of `decoded` that loading did not take as is.

    transformers takes the decoded tensors themselves as parameters and buffers, unless it converts
    them (another `dtype`, say): such copies were made while the weights were still being decoded
    and are overwritten here with the finished tensors.
    """
    if not names:  # decoded before loading: nothing was read early
        return
    own = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") + "."
    for name in names:
        tensor = decoded[name]
        other = name[len(prefix) :] if name.startswith(prefix) else prefix + name  # loaded with or without the base prefix
        for key in (name, other):
            target = own.get(key)
            if target is not None and target.shape == tensor.shape:
                if target.data_ptr() != tensor.data_ptr():
                    target.copy_(tensor)
                break


def _publish_directory(tmp_dir: Path, target: Path) -> None:
    """Moves a finished temporary directory into place, file by file if `target` already exists."""
    umask = os.umask(0)
    os.umask(umask)
    tmp_dir.chmod(0o777 & ~umask)  # mkdtemp makes it private
    if not target.exists():
        os.replace(tmp_dir, target)
        return
    new_names = {p.name for p in tmp_dir.iterdir()}
    for item in tmp_dir.iterdir():
        dest = target / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    for old in target.iterdir():  # weight files of an earlier save that this one does not overwrite
        if old.name not in new_names and old.is_file() and old.name.startswith(("model", "pytorch_model")):
            if old.name.endswith((".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")):
                old.unlink()


def _write_shards(tensors: dict, metadata: dict, folder: Path, max_shard_size: Union[int, str]) -> None:
    """Writes `model.safetensors`, or shards plus an index; every shard carries the format metadata."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    where = dict(split.tensor_to_filename)
    for name in tensors:  # a bitmask goes to the shard of its values, so every shard decodes on its own
        if name.endswith(BITMASK_SUFFIX):
            where[name] = where[name[: -len(BITMASK_SUFFIX)] + VALUES_SUFFIX]
    for filename in sorted(set(where.values())):
        write_safetensors({n: t for n, t in tensors.items() if where[n] == filename}, folder / filename, metadata)
    if split.is_sharded:
        index = {"metadata": {**split.metadata, **metadata}, "weight_map": where}
        (folder / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))


def _dense_config_dict(config: BertConfig) -> dict:
    data = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "classifier_pooling",
                "cls_only_last_layer", *SPARSITY_CONFIG_KEYS):
        data.pop(key, None)
    return data


class SparseBertPreTrainedModel(BertPreTrainedModel):
    """Base class: loading, saving, masks and conversion to and from plain BERT."""

    config_class = SparseBertConfig
    config: SparseBertConfig
    base_model_prefix = "bert"
    # transformers 5 multiplies the loss under gradient accumulation when forward takes **kwargs
    accepts_loss_kwargs = False
    dense_class: type = BertPreTrainedModel

    def post_init(self):
        """Masks the encoder's prunable linear layers before transformers initialises the weights."""
        base = getattr(self, self.base_model_prefix, self)
        size_encoder(base.encoder, self.config)
        mask_encoder(base.encoder, self.config)
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MaskedLinear):
            _fill_ones(module.weight_mask)

    # ---- masks -----------------------------------------------------------------------------
    def masked_linears(self) -> dict[str, MaskedLinear]:
        """The `MaskedLinear` modules by qualified name."""
        return {name: m for name, m in self.named_modules() if isinstance(m, MaskedLinear)}

    def get_masks(self) -> dict[str, torch.Tensor]:
        """The mask buffers (not copies) by module name."""
        return {name: m.weight_mask for name, m in self.masked_linears().items()}

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replaces the masks of the named modules and zeroes the newly pruned weights.

        Raises:
            KeyError: a name is not a masked linear layer of this model.
            ValueError: a mask has the wrong shape.
        """
        modules = self.masked_linears()
        for name, mask in masks.items():
            if name not in modules:
                raise KeyError(f"{name!r} is not a masked linear layer; known: {sorted(modules)[:3]}...")
            module = modules[name]
            if tuple(mask.shape) != tuple(module.weight.shape):
                raise ValueError(
                    f"mask for {name!r} has shape {list(mask.shape)}, weight has {list(module.weight.shape)}"
                )
            module.weight_mask.copy_(mask.to(module.weight_mask.device, dtype=torch.bool))
            module.apply_mask_()

    @torch.no_grad()
    def apply_masks_(self) -> None:
        """Zeroes every weight whose mask is 0 (e.g. after an optimizer step that used stale momentum)."""
        for module in self.masked_linears().values():
            module.apply_mask_()

    def sparsity(self) -> float:
        """Fraction of prunable weights that are masked."""
        masks = list(self.get_masks().values())
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, state_dict=None, **kwargs):
        """Loads a SparseBert checkpoint written by `save_pretrained` (compressed safetensors).

        Accepts the arguments of `PreTrainedModel.from_pretrained`. Dense BERT checkpoints are
        rejected with a pointer to `from_dense`.
        """
        if pretrained_model_name_or_path is None or state_dict is not None:
            return super().from_pretrained(
                pretrained_model_name_or_path, *model_args, config=config, state_dict=state_dict, **kwargs
            )
        if kwargs.get("variant") is not None:
            raise ValueError("hf-sparse checkpoints have no weight variants; load the folder the variant was saved to")
        if kwargs.get("use_safetensors") is False:
            raise ValueError("hf-sparse checkpoints are safetensors only; use_safetensors=False is not supported")
        kwargs.pop("use_safetensors", None)
        want_info = kwargs.pop("output_loading_info", False)
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if "_commit_hash" in kwargs:
            hub_kwargs["_commit_hash"] = kwargs["_commit_hash"]
        files = _resolve_weight_files(pretrained_model_name_or_path, hub_kwargs)
        # the C decoder fills the weights in worker threads while transformers builds the model around them
        decoded, pending = start_loading_sparse_checkpoint(files)
        try:
            if any(kwargs.get(key) for key in _READS_WEIGHTS_WHILE_LOADING):
                pending.wait()
            model, info = cls._load_decoded(pretrained_model_name_or_path, files, decoded, hub_kwargs, model_args, config, kwargs)
        except BaseException:
            pending.cancel()
            raise
        pending.wait()  # raises if a weight's values disagree with its bitmask
        _adopt_decoded(model, decoded, pending.names)
        return (model, info) if want_info else model

    @classmethod
    def _load_decoded(cls, pretrained_model_name_or_path, files, decoded, hub_kwargs, model_args, config, kwargs):
        """transformers' `from_pretrained` of the (possibly still decoding) state dict: `(model, loading info)`."""
        if not isinstance(config, PretrainedConfig):  # split config kwargs (e.g. num_labels) as transformers does
            loading = {k: kwargs.pop(k) for k in list(kwargs) if k in _LOADING_KWARGS}
            config, kwargs = cls.config_class.from_pretrained(
                config if config is not None else pretrained_model_name_or_path,
                return_unused_kwargs=True,
                **hub_kwargs,
                **kwargs,
            )
            kwargs.update(loading)
        if getattr(config, "model_type", None) != "sparse_bert":
            raise ValueError(f"{cls.__name__} needs a sparse_bert config, got model_type {getattr(config, 'model_type', None)!r}")
        check_masks_against_config(decoded, config, source=files[0])  # shapes only: safe while decoding
        for key in ("subfolder", "proxies", "_commit_hash"):  # used for the files above; meaningless without a path
            kwargs.pop(key, None)
        try:
            model, info = super().from_pretrained(
                None, *model_args, config=config, state_dict=decoded, output_loading_info=True, **kwargs
            )
        except RuntimeError as err:
            if "size mismatch" in str(err):
                raise SparseFormatError(f"{files[0]}: {err}") from None
            raise
        if getattr(model.config, "_name_or_path", None) in (None, "", "None"):
            model.config._name_or_path = str(pretrained_model_name_or_path)
        return model, info

    @classmethod
    def from_dense(
        cls,
        model_or_path: Union[str, os.PathLike, BertPreTrainedModel],
        masks: Optional[Mapping[str, torch.Tensor]] = None,
        *,
        sparsity_pattern: str = "unstructured",
        target_sparsity: Optional[float] = None,
        prunable_modules: Optional[list[str]] = None,
        **from_pretrained_kwargs,
    ) -> "SparseBertPreTrainedModel":
        """Builds a sparse model from a plain BERT model or checkpoint.

        Args:
            model_or_path: an instance of the matching `BertFor*` class, or a path / Hub id of a
                plain BERT checkpoint in safetensors (loaded with that class).
            masks: masks by module name (e.g. `"bert.encoder.layer.0.intermediate.dense"`); the
                weights are zeroed where a mask is 0. `None` derives every mask from the zeros of
                the weights.
            sparsity_pattern, target_sparsity, prunable_modules: written to the `SparseBertConfig`.
            from_pretrained_kwargs: passed to the dense class's `from_pretrained` (e.g. `num_labels`).
        """
        dense_cls = cls.dense_class
        if isinstance(model_or_path, (str, os.PathLike)):
            from_pretrained_kwargs.setdefault("use_safetensors", True)
            dense = dense_cls.from_pretrained(model_or_path, **from_pretrained_kwargs)
        else:
            dense = model_or_path
            if isinstance(dense, SparseBertPreTrainedModel) or not isinstance(dense, dense_cls):
                raise TypeError(f"{cls.__name__}.from_dense expects a {dense_cls.__name__}, got {type(dense).__name__}")
        config = SparseBertConfig(
            sparsity_pattern=sparsity_pattern,
            target_sparsity=target_sparsity,
            prunable_modules=prunable_modules,
            **_dense_config_dict(dense.config),
        )
        if getattr(dense.config, "_attn_implementation", None):
            config._attn_implementation = dense.config._attn_implementation
        sparse = cls(config).to(dense.dtype)
        missing, unexpected = sparse.load_state_dict(dense.state_dict(), strict=False)
        missing = [k for k in missing if not k.endswith(MASK_SUFFIX)]
        if missing or unexpected:
            raise ValueError(f"{type(dense).__name__} and {cls.__name__} differ: missing {missing}, unexpected {unexpected}")
        if masks is None:
            masks = {name: m.weight != 0 for name, m in sparse.masked_linears().items()}
        sparse.set_masks(masks)
        sparse.train(dense.training)
        return sparse

    def to_dense(self) -> BertPreTrainedModel:
        """A plain `BertFor*` model with the same weights (zeros where pruned) and no masks.

        Raises:
            ValueError: the model is compacted (layers of different widths, which `BertConfig` cannot express).
        """
        if self.config.is_compacted:
            raise ValueError(
                "this model is compacted (layer_num_attention_heads / layer_intermediate_sizes differ per layer), "
                "which a plain BertConfig cannot express; export it with `hf-sparse export` (ONNX / OpenVINO) instead"
            )
        config = BertConfig(**_dense_config_dict(self.config))
        dense = self.dense_class(config)
        state = {k: v for k, v in self.state_dict().items() if not k.endswith(MASK_SUFFIX)}
        dense.load_state_dict(state, strict=True)
        return dense.to(self.dtype).train(self.training)

    # ---- saving ----------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        is_main_process: bool = True,
        state_dict: Optional[dict] = None,
        push_to_hub: bool = False,
        max_shard_size: Union[int, str] = "5GB",
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
        **kwargs,
    ) -> None:
        """Writes config, compressed weights and modeling code; the folder appears only when complete.

        Also accepts `repo_id`, `private`, `commit_message`, `revision` and `create_pr` with `push_to_hub=True`.
        """
        if not safe_serialization:
            raise ValueError("hf-sparse writes safetensors only; safe_serialization=False is not supported")
        if variant is not None:
            raise ValueError("hf-sparse does not write weight variants; save to another folder instead")
        push_options = {k: kwargs.pop(k) for k in ("repo_id", "private", "commit_message", "revision", "create_pr") if k in kwargs}
        unknown = [k for k in kwargs if k not in _IGNORED_SAVE_KWARGS]
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}")
        target = Path(save_directory)
        if target.is_file():
            raise ValueError(f"{target} is a file; save_pretrained needs a directory")
        if state_dict is None:
            state_dict = self.state_dict()
        seen, unique = set(), {}
        for key, tensor in state_dict.items():  # tied weights are stored once
            ident = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)) if tensor.numel() else None
            if ident is not None and ident in seen:
                continue
            seen.add(ident)
            unique[key] = tensor
        masked = [k[: -len(MASK_SUFFIX)] for k in unique if k.endswith(MASK_SUFFIX)]
        tensors, metadata = encode_state_dict(unique, masked)
        if not is_main_process:
            return

        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.auto_map = dict(AUTO_MAP)
        kept = sum(int(unique[k + MASK_SUFFIX].sum()) for k in masked)
        total = sum(unique[k + MASK_SUFFIX].numel() for k in masked)
        config.measured_sparsity = round(1.0 - kept / total, 6) if total else 0.0
        dtype = next((t.dtype for t in unique.values() if t.is_floating_point()), torch.float32)
        config.dtype = str(dtype).split(".")[-1]

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            config.save_pretrained(tmp_dir)
            _write_shards(tensors, metadata, tmp_dir, max_shard_size)
            here = Path(__file__).resolve().parent
            for name in CODE_FILES:
                shutil.copyfile(here / name, tmp_dir / name)
            _publish_directory(tmp_dir, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            repo_id = push_options.get("repo_id") or target.name
            api.create_repo(repo_id, private=push_options.get("private"), exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=target,
                commit_message=push_options.get("commit_message") or "Upload sparse model with hf-sparse",
                revision=push_options.get("revision"),
                create_pr=push_options.get("create_pr", False),
            )


class SparseBertModel(SparseBertPreTrainedModel, BertModel):
    """`BertModel` with masked encoder linear layers."""

    dense_class = BertModel


class SparseBertForMaskedLM(SparseBertPreTrainedModel, BertForMaskedLM):
    """`BertForMaskedLM` with masked encoder linear layers."""

    dense_class = BertForMaskedLM

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        only_labelled_logits: bool = False,
        **kwargs,
    ):
        """`BertForMaskedLM.forward`; with `only_labelled_logits=True` the logits (and the loss) are
        computed only where `labels != -100` and returned flat, `[n_labelled, vocab_size]`: the
        vocabulary projection is most of the cost of an MLM training step."""
        given = dict(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        kwargs.update({k: v for k, v in given.items() if v is not None})
        if not only_labelled_logits or labels is None:
            return super().forward(labels=labels, return_dict=return_dict, **kwargs)
        outputs = self.bert(return_dict=True, **kwargs)
        selected = labels != -100
        logits = self.cls(outputs.last_hidden_state[selected])
        # a batch without masked tokens contributes zero (not NaN)
        loss = F.cross_entropy(logits.float(), labels[selected]) if logits.shape[0] else logits.sum() * 0.0
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class _ClsPooledHead:
    """For heads that read only the pooled [CLS] vector (sequence classification, multiple choice): their last encoder
    layer computes the [CLS] position alone when nothing else is used (`SparseBertConfig.cls_only_last_layer`)."""

    def post_init(self):
        super().post_init()
        make_last_layer_cls_only(self.bert.encoder)  # see `_ClsOnlyLayer`

    def _last_layer_can_be_cls_only(self, kwargs: dict) -> bool:
        """Whether nothing but the pooled [CLS] vector of the last layer is used by this call."""
        config = self.config

        def asked(name: str) -> bool:
            value = kwargs.get(name)
            return bool(getattr(config, name, False) if value is None else value)

        return (
            config.cls_only_last_layer
            and not self.training
            and not asked("output_attentions")
            and not asked("output_hidden_states")
            and kwargs.get("head_mask") is None
            and not config.is_decoder
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
        )

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        given = dict(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        kwargs.update({k: v for k, v in given.items() if v is not None})
        return self._pooled_forward(labels, return_dict, kwargs)

    def _pooled_forward(self, labels, return_dict, kwargs: dict):
        """The transformers head's own forward, the last layer at [CLS] only where that is all it uses."""
        last_layer = self.bert.encoder.layer[-1]
        last_layer.cls_only = self._last_layer_can_be_cls_only(kwargs)
        try:
            return super().forward(labels=labels, return_dict=return_dict, **kwargs)
        finally:
            last_layer.cls_only = False


class SparseBertForSequenceClassification(_ClsPooledHead, SparseBertPreTrainedModel, BertForSequenceClassification):
    """`BertForSequenceClassification` with masked encoder linear layers. With `config.classifier_pooling="mean"` the
    pooler (dense + tanh) and classifier read the mean of the last hidden states over the attended tokens instead of
    the [CLS] vector; the weights are the same either way."""

    dense_class = BertForSequenceClassification

    def _pooled_forward(self, labels, return_dict, kwargs: dict):
        if self.config.classifier_pooling == "cls":
            return super()._pooled_forward(labels, return_dict, kwargs)
        outputs = self.bert(return_dict=True, **kwargs)
        mean = mean_pool(outputs.last_hidden_state, kwargs.get("attention_mask"))
        pooled = self.bert.pooler.activation(self.bert.pooler.dense(mean))
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else _sequence_classification_loss(self, logits, labels)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return_dict = return_dict if return_dict is not None else getattr(self.config, "use_return_dict", True)
        return output if return_dict else output.to_tuple()

    def to_dense(self):
        if self.config.classifier_pooling != "cls":
            raise ValueError(
                f"this model's head reads the mean of the hidden states (classifier_pooling={self.config.classifier_pooling!r}); "
                "a BertForSequenceClassification reads [CLS], so it would give other outputs: keep the sparse_bert class"
            )
        return super().to_dense()


# transformers 4.x encoder layers return a tuple (hidden states first), 5.x the hidden states
_LAYER_RETURNS_TUPLE = int(_TRANSFORMERS_VERSION.split(".")[0]) < 5


class _ClsOnlyLayer:
    """Mixed into the last `BertLayer` of a head that reads only the pooled [CLS] vector (`_ClsPooledHead`). While
    `cls_only` is set (by the head, when nothing else is used), the layer computes its output at the first position
    only: the [CLS] query attends to the keys and values of every position, then the attention output and the FFN run
    for that one position. The output is `[batch, 1, hidden]`, all the pooler reads. Each step runs inside the module
    it belongs to, so traced graphs (ONNX, OpenVINO) name their nodes as for the full layer."""

    cls_only = False

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        mask_is_dense = attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4)
        if not self.cls_only or not mask_is_dense:  # e.g. a flex-attention block mask: the full layer
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        output = self.feed_forward_chunk(self.attention(hidden_states, attention_mask, cls_only=True))
        return (output,) if _LAYER_RETURNS_TUPLE else output


class _ClsOnlyAttention:
    """`BertAttention` at the first position only, with `cls_only=True`: self-attention output and residual there."""

    def forward(self, hidden_states, attention_mask=None, *args, cls_only: bool = False, **kwargs):
        if not cls_only:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        return self.output(self.self(hidden_states, attention_mask, cls_only=True), hidden_states[:, :1])


class _ClsOnlySelfAttention:
    """`BertSelfAttention` for the first position's query only, with `cls_only=True`; `attention_mask` is a 4-d boolean
    (True: attend) or additive mask, as the encoder passes it, or None. Returns the context, `[batch, 1, heads * size]`."""

    def forward(self, hidden_states, attention_mask=None, *args, cls_only: bool = False, **kwargs):
        if not cls_only:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        head_size, first = self.attention_head_size, hidden_states[:, :1]
        query = self.query(first).view(*first.shape[:-1], -1, head_size).transpose(1, 2)
        key = self.key(hidden_states).view(*hidden_states.shape[:-1], -1, head_size).transpose(1, 2)
        value = self.value(hidden_states).view(*hidden_states.shape[:-1], -1, head_size).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)) * head_size**-0.5  # [batch, heads, 1, seq]
        if attention_mask is not None:
            mask = attention_mask[..., :1, :]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        probs = self.dropout(scores.softmax(dim=-1))
        return torch.matmul(probs, value).transpose(1, 2).reshape(*first.shape[:-1], -1)


def _mix_in(module: nn.Module, mixin: type) -> None:
    """Gives `module` the class `ClsOnly<its class>` (the mixin first): same parameters, names and other behaviour."""
    base = type(module)
    if issubclass(base, mixin):
        return
    name = "ClsOnly" + base.__name__
    mixed = globals().get(name)
    if mixed is None or mixed.__bases__ != (mixin, base):
        mixed = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name, "__doc__": mixin.__doc__})
        globals()[name] = mixed  # picklable by name, as any class of this module
    module.__class__ = mixed


def make_last_layer_cls_only(encoder: nn.Module) -> None:
    """Lets the last layer of `encoder` compute the first position only when asked (`layer.cls_only = True`)."""
    layer = encoder.layer[-1]
    _mix_in(layer, _ClsOnlyLayer)
    _mix_in(layer.attention, _ClsOnlyAttention)
    _mix_in(layer.attention.self, _ClsOnlySelfAttention)


def mean_pool(last_hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The mean of `last_hidden` ([batch, seq, hidden]) over the positions `attention_mask` marks (all without one)."""
    if attention_mask is None:
        return last_hidden.mean(dim=1)
    weights = attention_mask.to(last_hidden.dtype).unsqueeze(-1)
    return (last_hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _sequence_classification_loss(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`BertForSequenceClassification`'s loss: MSE for one label, cross-entropy for class ids, BCE for multi-label."""
    config = model.config
    if config.problem_type is None:
        if model.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if model.num_labels == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, model.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


class SparseBertForQuestionAnswering(SparseBertPreTrainedModel, BertForQuestionAnswering):
    """`BertForQuestionAnswering` with masked encoder linear layers."""

    dense_class = BertForQuestionAnswering


class SparseBertForTokenClassification(SparseBertPreTrainedModel, BertForTokenClassification):
    """`BertForTokenClassification` with masked encoder linear layers."""

    dense_class = BertForTokenClassification


class SparseBertForMultipleChoice(_ClsPooledHead, SparseBertPreTrainedModel, BertForMultipleChoice):
    """`BertForMultipleChoice` with masked encoder linear layers."""

    dense_class = BertForMultipleChoice


__all__ = [
    "MaskedLinear",
    "SparseBertForMaskedLM",
    "SparseBertForMultipleChoice",
    "SparseBertForQuestionAnswering",
    "SparseBertForSequenceClassification",
    "SparseBertForTokenClassification",
    "SparseBertModel",
    "SparseBertPreTrainedModel",
    "check_masks_against_config",
    "expected_mask_shapes",
    "mask_encoder",
    "mean_pool",
]
