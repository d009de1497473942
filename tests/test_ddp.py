"""Two CPU processes under torchrun (gloo): gradual movement pruning ends with identical masks on both."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_two_process_ddp_masks_identical(tmp_path):
    worker = Path(__file__).resolve().parent / "ddp_prune_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    masks = [k for k in rank0 if not k.endswith(".weight")]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    kept = sum(int(rank0[k].sum()) for k in masks)
    total = sum(rank0[k].numel() for k in masks)
    assert abs(1 - kept / total - 0.8) < 1e-3
