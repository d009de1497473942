"""Two CPU processes under torchrun and accelerate launch (gloo): gradual movement pruning ends with identical masks on both."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_two_process_worker


@pytest.mark.parametrize("launcher, port", [("torchrun", 29533), ("accelerate", 29535)])
def test_two_process_ddp_masks_identical(tmp_path, launcher, port):
    run_two_process_worker("ddp_prune_worker.py", tmp_path, port=port, launcher=launcher)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    masks = [k for k in rank0 if not k.endswith(".weight")]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    kept = sum(int(rank0[k].sum()) for k in masks)
    total = sum(rank0[k].numel() for k in masks)
    assert abs(1 - kept / total - 0.8) < 1e-3
