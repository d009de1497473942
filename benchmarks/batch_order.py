"""Training time of random batches vs batches grouped by length (`transfer.py --group-by-length`), in one run.

    python benchmarks/batch_order.py [--task sst2] [--steps 100] [--repeats 3]

Both arms fine-tune the dense MiniLM-L6 with the stock `Trainer` on the task's full training set (batch 32,
dynamic padding, the task's max length, the precision `transfer.py` picks on this CPU): one draws batches at
random, the other uses the Trainer's `group_by_length` (a sampling strategy in transformers 5). Two figures:
- padding over one whole epoch of each arm's own batches (token slots the model computes / real tokens), exact;
- seconds for `--steps` optimizer steps, the arms alternating `--repeats` times; the ratio of the medians is
  the result. Grouped batches vary in length far more than random ones, so the steps are summed, not a median step.
Writes benchmarks/results/batch_order_<task>.json and the README block `batch-order`.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def padding(trainer) -> dict:
    """Token slots and real tokens over one epoch of the trainer's own training batches."""
    slots = real = batches = 0
    for batch in trainer.get_train_dataloader():
        slots += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        batches += 1
    return {"batches": batches, "token_slots": slots, "real_tokens": real, "slots_per_real_token": round(slots / real, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=["sst2", "mrpc", "stsb", "rte", "cola"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
    from transfer import TASK_BUDGETS, group_by_length_arguments
    from transfer_overhead import StepTimer

    from hf_sparse.cpu import cpu_description
    from hf_sparse.transfer.finetune import FinetuneArguments, glue_datasets
    from hf_sparse.transfer.precision import cpu_bf16_is_fast
    from hf_sparse.upstream import minilm_folder

    model_folder = minilm_folder()
    bf16 = cpu_bf16_is_fast()  # what transfer.py's --precision auto trains in here
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    budget = TASK_BUDGETS[args.task]
    task, train, _, max_length, _ = glue_datasets(FinetuneArguments(model=str(model_folder), task=args.task, max_length=budget.get("max_length")), tokenizer, 0)
    arms = {"random": {}, "grouped": group_by_length_arguments()}
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    pads: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm, order in arms.items():
                transformers.set_seed(repeat)
                model = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=task.num_labels)
                timer = StepTimer()
                training = TrainingArguments(
                    output_dir=tmp, per_device_train_batch_size=32, max_steps=args.steps, learning_rate=budget["learning_rate"],
                    weight_decay=0.01, bf16=bf16, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                    seed=repeat, logging_steps=10_000, dataloader_num_workers=0, **order,
                )
                trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                                  callbacks=[timer.callback()])
                if arm not in pads:
                    pads[arm] = padding(trainer)
                started = time.perf_counter()
                trainer.train()
                seconds[arm].append(sum(timer.times))
                print(f"repeat {repeat} {arm}: {seconds[arm][-1]:.1f} s for {args.steps} steps "
                      f"({time.perf_counter() - started:.1f} s with the Trainer's setup)", flush=True)
    random_s, grouped_s = statistics.median(seconds["random"]), statistics.median(seconds["grouped"])
    result = {
        "command": f"python benchmarks/batch_order.py --task {args.task} --steps {args.steps} --repeats {args.repeats}",
        "task": args.task, "train_examples": len(train), "max_length": max_length, "batch_size": 32, "steps": args.steps,
        "repeats": args.repeats, "precision": "bf16 autocast" if bf16 else "fp32",
        "seconds": {arm: [round(s, 2) for s in values] for arm, values in seconds.items()},
        "median_seconds": {"random": round(random_s, 2), "grouped": round(grouped_s, 2)},
        "speedup_grouped": round(random_s / grouped_s, 3),
        "padding_one_epoch": pads,
        "slots_ratio_random_to_grouped": round(pads["random"]["token_slots"] / pads["grouped"]["token_slots"], 3),
        "threads": torch.get_num_threads(), "cpu": cpu_description(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"batch_order_{args.task}.json").write_text(json.dumps(result, indent=1) + "\n")
    from readme_block import update_readme_block

    update_readme_block("batch-order", table(result))
    print(json.dumps(result, indent=1))
    return 0


def table(result: dict) -> str:
    pads = result["padding_one_epoch"]
    rows = [
        f"`{result['command']}` ({result['train_examples']:,} {result['task']} examples, batch {result['batch_size']}, max length "
        f"{result['max_length']}, {result['precision']}, {result['threads']} threads, {result['cpu'].get('model', 'unknown CPU')}, transformers "
        f"{result['versions']['transformers']}):",
        "",
        f"| batches | token slots per real token (one epoch) | seconds for {result['steps']} steps (median of {result['repeats']}) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for arm in ("random", "grouped"):
        speedup = result["speedup_grouped"] if arm == "grouped" else 1.0
        rows.append(f"| {arm} | {pads[arm]['slots_per_real_token']:.2f} | {result['median_seconds'][arm]:.1f} | {speedup:.2f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
