"""Training precision on CPU: bf16 autocast only where the CPU computes bf16 natively.

On CPUs without native bf16 support (x86 without AVX-512, e.g. AVX2-only parts), PyTorch emulates bf16
matrix products: a fine-tuning step under bf16 autocast was measured about 20x slower than in fp32 on
such a CPU (an AVX2 AMD EPYC, 2 threads). `cpu_bf16_is_fast` tells the two apart, so the runners can
pick bf16 where it pays and fp32 elsewhere, and `run_finetune` warns when bf16 was asked for where it
does not pay.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cpu_bf16_is_fast() -> bool:
    """True where PyTorch's CPU kernels run bf16 natively (oneDNN's bf16 check: AVX-512 or AMX on x86, BF16 on Arm;
    without oneDNN, PyTorch's CPU capability: AVX-512)."""
    check = _onednn_bf16_check()
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:  # a build without oneDNN
            pass
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn_bf16_check():
    return getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)


def training_precision(training_args) -> str:
    """'bf16', 'fp16' or 'fp32': the mixed precision a `TrainingArguments` asks for."""
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def warn_if_bf16_is_slow(training_args) -> bool:
    """Logs a warning (and returns True) when `training_args` ask for bf16 on a CPU that would emulate it."""
    on_cpu = training_args.use_cpu or not torch.cuda.is_available()
    if training_args.bf16 and on_cpu and not cpu_bf16_is_fast():
        logger.warning(
            "bf16=True on a CPU without native bf16 (PyTorch CPU capability %s): PyTorch emulates bf16 here and a "
            "training step runs many times slower than in fp32; pass bf16=False (--bf16 false) to train in fp32",
            torch.backends.cpu.get_cpu_capability(),
        )
        return True
    return False
