import os
from pathlib import Path

from hf_sparse.cpu import cpu_description, cpu_isa_flags


def test_cpu_description_records_model_and_isa_flags():
    info = cpu_description()
    assert info["cores"] == os.cpu_count()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "model name" in text:
        assert info["model"] and info["model"] in text
    flags = set(cpu_isa_flags())
    # only the flags that decide kernels, each one this CPU really has
    assert set(info.get("flags", [])) <= flags
    assert all(f.startswith(("amx", "avx512_vnni", "avx512_bf16", "avx512f", "avx2", "avx_vnni")) for f in info.get("flags", []))
    if "avx2" in flags:
        assert "avx2" in info["flags"]
