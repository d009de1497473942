"""Worker for test_transfer.py: sparse transfer with `SparsityCallback` under `torchrun --nproc_per_node 2` or `accelerate launch` (CPU, gloo)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build, end_two_process_worker  # noqa: E402
from test_training import RandomTokens  # noqa: E402

from hf_sparse import SparsityCallback  # noqa: E402


def tensors(model):
    masks = {k + ".weight_mask": v.to(torch.uint8) for k, v in model.get_masks().items()}
    weights = {k + ".weight": m.weight.detach().contiguous().clone() for k, m in model.masked_linears().items()}
    return {**masks, **weights}


out = Path(sys.argv[1])
model = build("SparseBertForSequenceClassification", sparsity=0.9, hidden_size=48, intermediate_size=64)
initial = tensors(model)
args = transformers.TrainingArguments(
    output_dir=str(out), per_device_train_batch_size=2, learning_rate=5e-3, weight_decay=0.1, max_steps=6, report_to=[],
    save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, ddp_backend="gloo",
)
trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(32), callbacks=[SparsityCallback()])
trainer.train()
assert dist.get_world_size() == 2
rank = dist.get_rank()
if rank == 0:
    save_file(initial, str(out / "initial.safetensors"))
save_file(tensors(model), str(out / f"rank{rank}.safetensors"))
end_two_process_worker()  # both ranks have written their files
