"""What this CPU is: its model name and the ISA flags that decide which kernels run (bf16 / AMX for training
precision, VNNI / AMX for INT8). Recorded in every results file whose numbers depend on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

_ISA_PREFIXES = ("amx", "avx512_vnni", "avx512_bf16", "avx512f", "avx2", "avx_vnni")


def _cpuinfo_field(key: str) -> str | None:
    """The value of the first `key` line of /proc/cpuinfo (None where it is absent or cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_isa_flags() -> list[str]:
    """This CPU's flags from /proc/cpuinfo (empty where it cannot be read)."""
    return (_cpuinfo_field("flags") or "").split()


def cpu_description() -> dict:
    """CPU model and the ISA flags that decide which kernels run (AMX, AVX-512 VNNI / BF16, AVX2 / AVX-VNNI)."""
    info = {"cores": os.cpu_count()}
    if model := _cpuinfo_field("model name"):
        info["model"] = model
    if flags := cpu_isa_flags():
        info["flags"] = sorted({f for f in flags if f.startswith(_ISA_PREFIXES)})
    return info
