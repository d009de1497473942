"""Fine-tuning step time with the pattern lock vs the stock Trainer, in one run.

    python benchmarks/transfer_overhead.py [--model out/prune_ofa_90/model] [--steps 30] [--repeats 3]

Both arms fine-tune the same 90%-sparse MiniLM-L6 on the same MRPC batches (batch 32, dynamic
padding) with the stock `Trainer`, AdamW, bf16 autocast (fp32 on a CPU without native bf16): the baseline is the plain
`BertForSequenceClassification` exported with `to_dense()` (zeros in the weights, no masks, no
callback); the locked arm is `SparseBertForSequenceClassification` + `SparsityCallback` (masked
forward, drift check at the end). Arms alternate `--repeats` times; the ratio of median seconds per
step is the result (target ≤1.05). Writes benchmarks/results/transfer_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class StepTimer:
    def __init__(self):
        self.times: list[float] = []
        self._start = None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer._start)

        return _Timer()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "out" / "prune_ofa_90" / "model"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.model).is_dir():
        raise SystemExit(f"{args.model} is missing: run `python benchmarks/upstream.py --sparsity 90` first")

    import torch
    import transformers
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_sparse import SparseBertForSequenceClassification, SparsityCallback
    from hf_sparse.transfer.finetune import FinetuneArguments, glue_datasets
    from hf_sparse.transfer.precision import cpu_bf16_is_fast

    bf16 = cpu_bf16_is_fast()  # one precision for every arm and repeat, and the one recorded
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    _, train, _, _, _ = glue_datasets(FinetuneArguments(model=args.model, task="mrpc", max_train_samples=32 * args.steps), tokenizer, 0)
    timings: dict[str, list[float]] = {"stock": [], "locked": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm in ("stock", "locked"):
                transformers.set_seed(0)
                sparse = SparseBertForSequenceClassification.from_pretrained(args.model, num_labels=2)
                model = sparse.to_dense() if arm == "stock" else sparse
                timer = StepTimer()
                callbacks = [timer.callback()] + ([SparsityCallback()] if arm == "locked" else [])
                training = TrainingArguments(
                    output_dir=tmp, per_device_train_batch_size=32, max_steps=args.steps, learning_rate=1e-4, weight_decay=0.01,
                    bf16=bf16, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1000,
                )
                trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks)
                trainer.train()
                step = statistics.median(timer.times[2:])  # first steps warm up the allocator
                timings[arm].append(step)
                print(f"repeat {repeat} {arm}: median {step * 1000:.0f} ms/step", flush=True)
    stock, locked = statistics.median(timings["stock"]), statistics.median(timings["locked"])
    result = {
        "command": f"python benchmarks/transfer_overhead.py --steps {args.steps} --repeats {args.repeats}",
        "model": str(Path(args.model).relative_to(ROOT)) if Path(args.model).is_relative_to(ROOT) else args.model,
        "steps": args.steps, "repeats": args.repeats, "batch_size": 32, "task": "mrpc", "precision": "bf16 autocast" if bf16 else "fp32",
        "stock_ms_per_step": round(stock * 1000, 1), "locked_ms_per_step": round(locked * 1000, 1),
        "ratio": round(locked / stock, 4), "target": "<= 1.05", "met": locked / stock <= 1.05,
        "per_repeat_ms": {k: [round(v * 1000, 1) for v in vs] for k, vs in timings.items()},
        "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
