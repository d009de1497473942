"""Worker for test_ddp.py: `torchrun --nproc_per_node 2 ddp_prune_worker.py OUT` (or `accelerate launch`) on CPU (gloo)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build, end_two_process_worker  # noqa: E402
from test_training import RandomTokens  # noqa: E402

from hf_sparse.pruning import CubicSchedule, MovementPruning, PruningCallback  # noqa: E402

out = Path(sys.argv[1])
model = build("SparseBertForSequenceClassification", sparsity=0.0, hidden_size=48, intermediate_size=64)
callback = PruningCallback(MovementPruning(), CubicSchedule(0.0, 0.8, 2, 6, 2), model)
args = transformers.TrainingArguments(
    output_dir=str(out), per_device_train_batch_size=2, learning_rate=5e-3, max_steps=6, report_to=[],
    save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, ddp_backend="gloo",
)
trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(32), callbacks=[callback])
trainer.train()
rank = dist.get_rank()
assert dist.get_world_size() == 2
masks = {k: v.to(torch.uint8) for k, v in model.get_masks().items()}
weights = {k + ".weight": m.weight.detach().contiguous() for k, m in model.masked_linears().items()}
save_file({**masks, **weights}, str(out / f"rank{rank}.safetensors"))
end_two_process_worker()  # both ranks have written their files
