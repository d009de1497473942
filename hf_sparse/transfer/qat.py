"""8-bit quantization-aware training of the masked linear layers.

Weights: symmetric, per output channel, int8 range [-127, 127], zero point 0 — so a pruned (zero)
weight quantizes to exactly zero and the sparsity pattern survives quantization. Inputs of each
layer: asymmetric, per tensor, uint8 [0, 255], range tracked by an exponential moving average during
training and frozen in eval mode. Fake quantization uses PyTorch's `fake_quantize_*` ops
(straight-through gradients).

`prepare_qat(model)` switches it on in place (no new parameters or state-dict keys, so checkpoints
keep their format); `convert_qat(model)` snaps the weights onto their int8 grid, switches it off and
returns the calibrated input ranges (plain data), which `finetune` saves as `qat_ranges.json` and the
ONNX Runtime export reads with `calibration="qat"` (`hf_sparse.deploy.onnx`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.sparse_bert.modeling_sparse_bert import MaskedLinear

QAT_RANGES_FILE = "qat_ranges.json"


@dataclass
class QATConfig:
    """Fake-quantization settings (8-bit is what ONNX Runtime and OpenVINO INT8 kernels run)."""

    weight_bits: int = 8
    activation_bits: int = 8
    momentum: float = 0.05  # EMA weight of the newest batch's input min/max

    def __post_init__(self):
        for name in ("weight_bits", "activation_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise ValueError(f"QATConfig.{name} must be in 2..8, got {getattr(self, name)}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"QATConfig.momentum must be in (0, 1], got {self.momentum}")


class _InputObserver:
    """Moving-average min/max of a layer's inputs (plain attributes: not part of the state dict)."""

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if self.min_val is None:
            self.min_val, self.max_val = low, high
        else:
            self.min_val = self.min_val + self.momentum * (low - self.min_val)
            self.max_val = self.max_val + self.momentum * (high - self.max_val)

    def qparams(self, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.clamp(self.min_val, max=0.0)  # the range must contain 0 (padding, ReLU zeros)
        high = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((high - low) / levels, min=1e-8)
        zero_point = torch.clamp(torch.round(-low / scale), 0, levels).to(torch.int32)
        return scale.reshape(1), zero_point.reshape(1)


def weight_qparams(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric scales: max |w| of each row over the largest positive level."""
    limit = 2 ** (bits - 1) - 1
    return torch.clamp(weight.detach().abs().amax(dim=1).float() / limit, min=1e-8)


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    limit = 2 ** (bits - 1) - 1
    scale = weight_qparams(weight, bits)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.dtype), zero, 0, -limit, limit)


def _qat_forward(self: MaskedLinear, input: torch.Tensor) -> torch.Tensor:
    config: QATConfig = self.qat_config
    observer: _InputObserver = self.qat_input_observer
    levels = 2**config.activation_bits - 1
    if self.training or observer.min_val is None:
        observer.observe(input)
    scale, zero_point = observer.qparams(levels)
    x = torch.fake_quantize_per_tensor_affine(input, scale.to(input.device), zero_point.to(input.device), 0, levels)
    weight = self.weight
    if weight.requires_grad and torch.is_grad_enabled():
        weight = weight * self.weight_mask
    return F.linear(x, fake_quantize_weight(weight, config.weight_bits), self.bias)


def prepare_qat(model: torch.nn.Module, config: QATConfig | None = None) -> torch.nn.Module:
    """Turns on fake quantization in every `MaskedLinear` of `model` (in place) and returns it."""
    config = config or QATConfig()
    layers = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MaskedLinear layers: QAT applies to SparseBert* models")
    for module in layers:
        module.qat_config = config
        module.qat_input_observer = _InputObserver(config.momentum)
        module.forward = types.MethodType(_qat_forward, module)
    return model


def is_qat(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "qat_config") for m in model.modules() if isinstance(m, MaskedLinear))


@torch.no_grad()
def convert_qat(model: torch.nn.Module) -> dict[str, dict]:
    """Snaps each weight onto its int8 grid, turns fake quantization off and returns the ranges.

    Returns `{layer name: {"input_min", "input_max", "weight_bits", "activation_bits"}}` — the input
    ranges QAT calibrated, for a static INT8 export.
    """
    ranges = {}
    for name, module in model.named_modules():
        if not (isinstance(module, MaskedLinear) and hasattr(module, "qat_config")):
            continue
        config, observer = module.qat_config, module.qat_input_observer
        module.weight.copy_(fake_quantize_weight(module.weight * module.weight_mask, config.weight_bits))
        if observer.min_val is not None:
            ranges[name] = {
                "input_min": float(observer.min_val),
                "input_max": float(observer.max_val),
                "weight_bits": config.weight_bits,
                "activation_bits": config.activation_bits,
            }
        del module.forward, module.qat_config, module.qat_input_observer
    if not ranges:
        raise ValueError("convert_qat: the model was not prepared with prepare_qat (or never ran a forward pass)")
    return ranges
