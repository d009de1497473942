"""How far below dense a pruning recipe is, with the dev-set sample and the training seed counted.

    python benchmarks/paired_dev.py --task sst2 --row prune-tuned-structured-movement-80-magnitude-90-kd-ep2-n67349-hid1-gl --seeds 1 2 3 4

For each `--row` (a transfer.py run name without `_<task>_s<seed>`, as structured_deploy.py takes it) the models
trained by benchmarks/transfer.py for `--seeds` and the dense model of the same task and budget (the row's KD teacher)
predict the full dev set in fp32 PyTorch. Each seed's difference to dense comes with a 95% paired bootstrap interval
over the dev examples; the row's mean difference with one over seeds and examples together (both resampled), i.e.
what the recipe is expected to lose on this task's dev distribution against this dense model. By default the dense
model is the row's teacher (seed 1), not resampled: the target compares with the one dense model it is timed against.
`--dense-seeds 1 2 3` compares with the dense recipe instead: the mean of those dense seeds (trained with the dense
row's command and `--seed N`), whose seeds are resampled too, so the dense model's own seed luck is counted.

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
        dense_seeds = r.get("dense_seeds", [1])
        dense = f"{100 * r['dense_score']:.2f}" if dense_seeds == [1] else (
            f"{100 * r['dense_score']:.2f}, mean of s{'/'.join(map(str, dense_seeds))} "
            f"({' / '.join(f'{100 * v:.2f}' for v in r['dense_seed_scores'])})")
        lines.append(f"| {r['row']} | {dense} | {len(r['per_seed'])} | {100 * pooled['delta']:+.2f} | "
                     f"{100 * pooled['low']:+.2f} .. {100 * pooled['high']:+.2f} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=["sst2", "cola", "mrpc", "rte", "stsb"])
    parser.add_argument("--row", required=True, help="transfer run name without _<task>_s<seed>, e.g. prune-tuned-90-kd")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--dense-seeds", type=int, nargs="+", default=[1],
                        help="dense seeds to compare with (default: 1, the teacher); several: their mean, resampled")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    for flag, values in (("--seeds", args.seeds), ("--dense-seeds", args.dense_seeds)):
        if len(set(values)) != len(values):
            parser.error(f"{flag} repeats a seed: {values}")

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
    models, dense_models = {}, {}
    for seed in args.seeds:
        name, command = run_name(base, args.task, seed, kd, qat, bi_encoder, overrides)
        models[seed] = MODELS / name / "model"
        if not models[seed].is_dir():
            raise SystemExit(f"{models[seed]} is missing: run `{command}` first")
    for seed in args.dense_seeds:
        dense_name, _, dense_command = row_commands(args.row, args.task, args.seeds[0], dense_seed=seed)
        dense_models[seed] = MODELS / dense_name / "model"
        if not dense_models[seed].is_dir():
            raise SystemExit(f"{dense_models[seed]} is missing: run `{dense_command}` first")

    metric = get_glue_task(args.task).main_metric
    dense_predictions, dense_scores = [], []
    for seed, folder in dense_models.items():
        predicted, references = glue_dev_predictions(torch_predictor(folder), AutoTokenizer.from_pretrained(folder), args.task)
        dense_predictions.append(predicted)
        dense_scores.append(glue_metrics(args.task, predicted, references)[metric])
        print(f"dense seed {seed}: {dense_scores[-1]:.4f}", flush=True)
    dense_predictions = np.stack(dense_predictions)
    predictions, per_seed = {}, []
    for seed, folder in models.items():
        predictions[seed], _ = glue_dev_predictions(torch_predictor(folder), AutoTokenizer.from_pretrained(folder), args.task)
        score = glue_metrics(args.task, predictions[seed], references)[metric]
        print(f"seed {seed}: {score:.4f}", flush=True)
        interval = paired_bootstrap(args.task, predictions[seed], dense_predictions, references, samples=args.samples)
        per_seed.append({"seed": seed, "score": score, **{k: interval[k] for k in ("delta", "low", "high")}})
    pooled = paired_bootstrap(args.task, np.stack(list(predictions.values())), dense_predictions, references, samples=args.samples)
    command = (f"python benchmarks/paired_dev.py --task {args.task} --row {args.row} --seeds {' '.join(map(str, args.seeds))}"
               + (f" --dense-seeds {' '.join(map(str, args.dense_seeds))}" if args.dense_seeds != [1] else "")
               + (f" --samples {args.samples}" if args.samples != parser.get_default("samples") else ""))
    row = {
        "row": args.row, "task": args.task, "metric": metric, "precision": "fp32 PyTorch",
        "dense_model": str(dense_models[args.dense_seeds[0]].relative_to(ROOT)), "dense_score": float(np.mean(dense_scores)),
        "examples": len(references), "per_seed": per_seed,
        "pooled": {k: pooled[k] for k in ("delta", "low", "high", "confidence", "samples", "undefined_samples")},
        "command": command, "date": time.strftime("%Y-%m-%d"),
    }
    path = RESULTS / f"paired_dev_{args.task}.json"
    if args.dense_seeds != [1]:
        row.update(dense_seeds=args.dense_seeds, dense_seed_scores=dense_scores)
    key = lambda r: (r["row"], r.get("dense_seeds", [1]))  # a row against the teacher and against the dense recipe
    rows = [r for r in (json.loads(path.read_text())["rows"] if path.is_file() else []) if key(r) != key(row)]
    rows = sorted(rows + [row], key=key)
    path.write_text(json.dumps({"task": args.task, "rows": rows}, indent=1) + "\n")
    text = table(rows)
    print(text)
    print(f"wrote {path}")
    from readme_block import update_readme_block

    update_readme_block(f"paired-dev-{args.task}", text)


if __name__ == "__main__":
    main()
