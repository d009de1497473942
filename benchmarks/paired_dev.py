"""How far below dense a pruning recipe is, with the dev-set sample and the training seed counted.

    python benchmarks/paired_dev.py --task sst2 --row prune-tuned-structured-movement-80-magnitude-90-kd-ep2-n67349-hid1-gl --seeds 1 2 3 4

For each `--row` (a transfer.py run name without `_<task>_s<seed>`, as structured_deploy.py takes it) the models
trained by benchmarks/transfer.py for `--seeds` and the dense model of the same task and budget (the row's KD teacher)
predict the full dev set in fp32 PyTorch. Each seed's difference to dense comes with a 95% paired bootstrap interval
over the dev examples; the row's mean difference with one over seeds and examples together (both resampled), i.e.
what the recipe is expected to lose on this task's dev distribution against this dense model. The dense model's own
seed is not resampled: the target compares with the one dense model it is timed against.

Writes benchmarks/results/paired_dev_<task>.json (rows merged in by name, so a row can be rerun alone) and the
benchmarks/README.md block `paired-dev-<task>`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "out" / "transfer"
RESULTS = ROOT / "benchmarks" / "results"


def table(rows: list[dict]) -> str:
    lines = ["| row | dense | seeds | mean vs dense (points) | 95% interval, seeds and examples | per seed (95% interval over examples) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = "; ".join(f"s{s['seed']} {100 * s['delta']:+.2f} ({100 * s['low']:+.2f} .. {100 * s['high']:+.2f})" for s in r["per_seed"])
        pooled = r["pooled"]
        lines.append(f"| {r['row']} | {100 * r['dense_score']:.2f} | {len(r['per_seed'])} | {100 * pooled['delta']:+.2f} | "
                     f"{100 * pooled['low']:+.2f} .. {100 * pooled['high']:+.2f} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=["sst2", "cola", "mrpc", "rte", "stsb"])
    parser.add_argument("--row", required=True, help="transfer run name without _<task>_s<seed>, e.g. prune-tuned-90-kd")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")

    import numpy as np
    from transformers import AutoTokenizer

    from hf_sparse.deploy.accuracy import glue_dev_predictions, torch_predictor
    from hf_sparse.tasks.glue import get_glue_task
    from hf_sparse.tasks.metrics import glue_metrics
    from hf_sparse.tasks.significance import paired_bootstrap
    from structured_deploy import row_commands
    from transfer import parse_run_name, run_name

    base, kd, qat, bi_encoder, overrides = parse_run_name(args.row)
    if bi_encoder:
        raise SystemExit(f"{args.row}: a bi-encoder row; this script compares cross-encoders (sequence classification)")
    dense_name, _, dense_command = row_commands(args.row, args.task, args.seeds[0])
    dense = MODELS / dense_name / "model"
    models = {}
    for seed in args.seeds:
        name, command = run_name(base, args.task, seed, kd, qat, bi_encoder, overrides)
        models[seed] = MODELS / name / "model"
        if not models[seed].is_dir():
            raise SystemExit(f"{models[seed]} is missing: run `{command}` first")
    if not dense.is_dir():
        raise SystemExit(f"{dense} is missing: run `{dense_command}` first")

    metric = get_glue_task(args.task).main_metric
    tokenizer = AutoTokenizer.from_pretrained(dense)
    dense_predictions, references = glue_dev_predictions(torch_predictor(dense), tokenizer, args.task)
    predictions, per_seed = {}, []
    for seed, folder in models.items():
        predictions[seed], _ = glue_dev_predictions(torch_predictor(folder), AutoTokenizer.from_pretrained(folder), args.task)
        score = glue_metrics(args.task, predictions[seed], references)[metric]
        print(f"seed {seed}: {score:.4f}", flush=True)
        interval = paired_bootstrap(args.task, predictions[seed], dense_predictions, references, samples=args.samples)
        per_seed.append({"seed": seed, "score": score, **{k: interval[k] for k in ("delta", "low", "high")}})
    pooled = paired_bootstrap(args.task, np.stack(list(predictions.values())), dense_predictions, references, samples=args.samples)
    command = (f"python benchmarks/paired_dev.py --task {args.task} --row {args.row} --seeds {' '.join(map(str, args.seeds))}"
               + (f" --samples {args.samples}" if args.samples != parser.get_default("samples") else ""))
    row = {
        "row": args.row, "task": args.task, "metric": metric, "precision": "fp32 PyTorch",
        "dense_model": str(dense.relative_to(ROOT)), "dense_score": glue_metrics(args.task, dense_predictions, references)[metric],
        "examples": len(references), "per_seed": per_seed,
        "pooled": {k: pooled[k] for k in ("delta", "low", "high", "confidence", "samples", "undefined_samples")},
        "command": command, "date": time.strftime("%Y-%m-%d"),
    }
    path = RESULTS / f"paired_dev_{args.task}.json"
    rows = [r for r in (json.loads(path.read_text())["rows"] if path.is_file() else []) if r["row"] != args.row]
    rows = sorted(rows + [row], key=lambda r: r["row"])
    path.write_text(json.dumps({"task": args.task, "rows": rows}, indent=1) + "\n")
    text = table(rows)
    print(text)
    print(f"wrote {path}")
    from readme_block import update_readme_block

    update_readme_block(f"paired-dev-{args.task}", text)


if __name__ == "__main__":
    main()
