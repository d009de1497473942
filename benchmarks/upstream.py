"""Upstream pruning of MiniLM-L6, one recipe per command.

    python benchmarks/upstream.py --sparsity 90            # recipes/prune_ofa_90.yaml, about an hour on 2 cores
    python benchmarks/upstream.py --recipe sparsebert_90   # any recipes/<name>.yaml (SparseBERT, CAP)
    python benchmarks/upstream.py --table                  # only rebuild the table from existing results

Writes the checkpoint to out/<recipe name>/model (it feeds sparse transfer), the metrics to
benchmarks/results/upstream_<s>.json (Prune OFA at sparsity s) or upstream_<recipe name>.json,
and the table of every finished run to benchmarks/results/upstream.md. MLM loss and accuracy are measured on the held-out WikiText-2
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
        recipe = Path(data["recipe"]).stem
        rows.append(
            f"| `{recipe}` | {m['sparsity']:.0%} | {m['teacher']['mlm_loss']:.3f} | {m['teacher']['mlm_accuracy']:.3f} | "
            f"{m['student']['mlm_loss']:.3f} | {m['student']['mlm_accuracy']:.3f} | {m['steps']} | "
            f"{m['train_examples_seen']:,} | {m['wall_seconds'] / 60:.0f} min ({m['device']}) | `{data['command']}` |"
        )
    table = "\n".join(
        [
            "MLM on the held-out WikiText-2 test file (256 blocks of 128 tokens, 15% masked, fixed seed).",
            "",
            "| recipe | sparsity | teacher loss | teacher acc | student loss | student acc | steps | examples | wall time | command |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
            *sorted(rows),
        ]
    )
    (RESULTS / "upstream.md").write_text(table + "\n")
    from readme_block import update_readme_block

    update_readme_block("upstream-table", table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    sparsities = sorted(int(s) for name in recipes if (s := name.removeprefix("prune_ofa_")).isdigit())
    parser.add_argument("--sparsity", type=int, choices=sparsities, help="run recipes/prune_ofa_<s>.yaml")
    parser.add_argument("--recipe", choices=recipes, help="run recipes/<name>.yaml")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.sparsity is not None and args.recipe is not None:
        parser.error("pass --sparsity or --recipe, not both")
    if args.sparsity is not None or args.recipe is not None:
        import torch
        import transformers

        from hf_sparse.upstream import UpstreamRecipe, run_upstream

        name = args.recipe or f"prune_ofa_{args.sparsity}"
        recipe = UpstreamRecipe.from_yaml(ROOT / "recipes" / f"{name}.yaml")
        metrics = run_upstream(recipe, ROOT / "out" / recipe.name)
        flag = f"--recipe {args.recipe}" if args.recipe else f"--sparsity {args.sparsity}"
        result = {
            "command": f"python benchmarks/upstream.py {flag}",
            "recipe": f"recipes/{name}.yaml",
            "checkpoint": f"out/{recipe.name}/model",
            "metrics": metrics,
            "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = name.removeprefix("prune_ofa_")  # upstream_90.json whether run by --sparsity 90 or --recipe prune_ofa_90
        (RESULTS / f"upstream_{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    elif not args.table:
        parser.error("pass --sparsity, --recipe or --table")
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
