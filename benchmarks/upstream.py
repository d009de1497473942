"""Upstream pruning (Prune Once for All) of MiniLM-L6, one sparsity per command.

    python benchmarks/upstream.py --sparsity 90            # recipes/prune_ofa_90.yaml, about an hour on 2 cores
    python benchmarks/upstream.py --table                  # only rebuild the table from existing results

Writes the checkpoint to out/prune_ofa_<s>/model (it feeds sparse transfer), the metrics to
benchmarks/results/upstream_<s>.json, and the table of every finished sparsity to
benchmarks/results/upstream.md. MLM loss and accuracy are measured on the held-out WikiText-2
test file (fixed masking), for the dense teacher (after its MLM-head warm-up) and the pruned student.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def write_table() -> str:
    rows = []
    for file in sorted(RESULTS.glob("upstream_*.json")):
        data = json.loads(file.read_text())
        m = data["metrics"]
        rows.append(
            f"| {m['sparsity']:.0%} | {m['teacher']['mlm_loss']:.3f} | {m['teacher']['mlm_accuracy']:.3f} | "
            f"{m['student']['mlm_loss']:.3f} | {m['student']['mlm_accuracy']:.3f} | {m['steps']} | "
            f"{m['train_examples_seen']:,} | {m['wall_seconds'] / 60:.0f} min ({m['device']}) | `{data['command']}` |"
        )
    table = "\n".join(
        [
            "MLM on the held-out WikiText-2 test file (256 blocks of 128 tokens, 15% masked, fixed seed).",
            "",
            "| sparsity | teacher loss | teacher acc | student loss | student acc | steps | examples | wall time | command |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|",
            *rows,
        ]
    )
    (RESULTS / "upstream.md").write_text(table + "\n")
    from readme_block import update_readme_block

    update_readme_block("upstream-table", table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=int, choices=[80, 90, 95, 97])
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.sparsity is not None:
        import torch
        import transformers

        from hf_sparse.upstream import UpstreamRecipe, run_upstream

        recipe = UpstreamRecipe.from_yaml(ROOT / "recipes" / f"prune_ofa_{args.sparsity}.yaml")
        metrics = run_upstream(recipe, ROOT / "out" / recipe.name)
        result = {
            "command": f"python benchmarks/upstream.py --sparsity {args.sparsity}",
            "recipe": f"recipes/prune_ofa_{args.sparsity}.yaml",
            "checkpoint": f"out/{recipe.name}/model",
            "metrics": metrics,
            "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"upstream_{args.sparsity}.json").write_text(json.dumps(result, indent=2) + "\n")
    elif not args.table:
        parser.error("pass --sparsity or --table")
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
