"""On-disk size and load time of the compressed SparseBert format vs a dense BERT checkpoint.

BERT-base shape (12 layers, hidden 768, FFN 3072) with random weights, magnitude-pruned per layer
to 0/80/90/97%. For each sparsity: bytes of the prunable weights on disk (values + bitmasks) as a
fraction of their dense fp32 bytes, total file bytes, and two median load times as ratios to the
dense `BertModel.from_pretrained` measured in the same run:

Every load runs in a fresh Python process (imports excluded from the timing), after one
unmeasured run that warms the page cache; the runs of dense and sparse files alternate, round
by round, so that drift in the machine's speed affects them alike.

* `load`: `from_pretrained` alone. For the dense safetensors file transformers maps the file and
  reads pages only when a weight is first used, so this compares unlike work (decode vs. mmap).
* `first output`: `from_pretrained` plus one forward pass (batch 1, sequence 128): the time until
  the model has produced a result, which includes reading every dense weight. The target applies here.
* `floor`: what any loader that rebuilds dense fp32 weights and bool masks in new memory must pay,
  whatever its file format: a fresh process allocates and fills tensors of the prunable weights'
  shapes (fp32 weight + bool mask each), timed alone. Added to the dense model's forward pass on
  weights already in memory (its second forward), it is a lower bound on the sparse first output.

Sparse rows load with the C decoder built at install time (`hf_sparse._bitmask`); rows marked
`numpy/torch` (by default the 90% one) repeat the load with it disabled (`HF_SPARSE_NATIVE_DECODE=0`),
the path used where hf-sparse was installed without a C compiler or through `trust_remote_code`.
With `--compare-with DIR` the same rows are also loaded by the hf_sparse package of another checkout
(an earlier commit, say), in the same interleaved rounds.

    python benchmarks/format.py                      # writes benchmarks/results/format.{json,md}
    python benchmarks/format.py --layers 2 --repeats 3   # a quick smoke run
    git worktree add /tmp/old REV && (cd /tmp/old && python setup.py -q build_ext --inplace)
    python benchmarks/format.py --sparsities 0.9 --no-cold --compare-with /tmp/old --out benchmarks/results/format_vs_REV
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from safetensors import safe_open

import hf_sparse
from hf_sparse import SparseBertModel
from hf_sparse.pruning import magnitude_masks

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_BYTES_AT_90 = 0.135
TARGET_LOAD_RATIO = 1.5


# Each load runs in a fresh process, as a user's would: no allocator or import state is reused.
_LOAD_SNIPPET = """
import json, os, sys, time
if os.environ.get("HF_SPARSE_SRC"):  # another checkout of hf-sparse (--compare-with), ahead of the installed one
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["HF_SPARSE_SRC"])
import torch, transformers
import hf_sparse
assert hf_sparse.__file__.startswith(os.environ.get("HF_SPARSE_SRC", "")), hf_sparse.__file__
transformers.logging.set_verbosity_error()
folder, kind = sys.argv[1], sys.argv[2]
cls = transformers.BertModel if kind == "dense" else hf_sparse.SparseBertModel
inputs = {"input_ids": torch.randint(1000, 30000, (1, 128), generator=torch.Generator().manual_seed(0))}
start = time.perf_counter()
model = cls.from_pretrained(folder)
loaded = time.perf_counter()
with torch.no_grad():
    model(**inputs)
    done = time.perf_counter()
    model(**inputs)  # weights now resident: the forward pass alone
    again = time.perf_counter()
print(json.dumps({"load": loaded - start, "first_output": done - start, "forward_resident": again - done}))
"""

# The floor: new fp32 weights and bool masks of the prunable shapes, allocated and filled as a decoder must.
_FLOOR_SNIPPET = """
import json, sys, time
import torch
shapes = json.loads(sys.argv[1])
torch.zeros(1 << 20), torch.ones(1 << 20, dtype=torch.bool)  # first-call and thread-pool start-up, outside the timing
start = time.perf_counter()
kept = [(torch.zeros(shape), torch.ones(shape, dtype=torch.bool)) for shape in shapes]
print(json.dumps({"floor": time.perf_counter() - start}))
"""


def evict_from_page_cache(folder: Path) -> None:
    """Drops the folder's files from the OS page cache (Linux), so the next load reads the disk."""
    os.sync()
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _run_fresh(snippet: str, *argv: str, env: dict | None = None) -> dict:
    """Runs `snippet` in a fresh Python process (with `env` added to the environment) and returns the JSON it prints last."""
    env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", snippet, *argv], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load_once(folder: Path, kind: str, env: dict | None = None) -> dict:
    return _run_fresh(_LOAD_SNIPPET, str(folder), kind, env=env)


def median_load_seconds(variants: list[tuple[Path, str, dict]], repeats: int, cold: bool) -> list[dict]:
    """Median warm-cache `load` and `first_output`, and cold-cache `first_output_cold`, in seconds, per variant.

    `variants` are `(folder, kind, env)`. Runs are interleaved (one of each variant per round), so a
    machine whose speed drifts during the benchmark slows every variant alike.
    """
    for folder, kind, env in variants:
        _load_once(folder, kind, env)  # warms the page cache
    warm = [[] for _ in variants]
    for _ in range(repeats):
        for runs, (folder, kind, env) in zip(warm, variants):
            runs.append(_load_once(folder, kind, env))
    times = [{key: statistics.median(r[key] for r in runs) for key in ("load", "first_output", "forward_resident")} for runs in warm]
    if cold:
        cold_runs = [[] for _ in variants]
        for _ in range(repeats):
            for runs, (folder, kind, env) in zip(cold_runs, variants):
                evict_from_page_cache(folder)
                runs.append(_load_once(folder, kind, env)["first_output"])
        for result, runs in zip(times, cold_runs):
            result["first_output_cold"] = statistics.median(runs)
    return times


def median_floor_seconds(shapes: list[list[int]], repeats: int) -> float:
    """Median time for a fresh process to allocate and fill an fp32 weight and a bool mask per shape."""
    return statistics.median(_run_fresh(_FLOOR_SNIPPET, json.dumps(shapes))["floor"] for _ in range(repeats))


def prunable_bytes(folder: Path) -> int:
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if key.endswith((".values", ".bitmask")):
                    t = handle.get_slice(key)
                    total += t.get_shape()[0] * {"F32": 4, "BF16": 2, "F16": 2, "U8": 1}[t.get_dtype()]
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.8, 0.9, 0.97])
    parser.add_argument("--fallback-sparsities", type=float, nargs="*", default=[0.9],
                        help="sparsities also loaded with the numpy/torch decoder (HF_SPARSE_NATIVE_DECODE=0) and by --compare-with")
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="also load the --fallback-sparsities files with the hf_sparse package of another checkout "
                        "(its C extension built in place), e.g. an earlier commit's `git worktree`")
    parser.add_argument("--out", type=Path, default=RESULTS / "format")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold page-cache timings")
    args = parser.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    from hf_sparse.models.sparse_bert import sparse_format

    native = sparse_format._native_bitmask is not None and os.environ.get("HF_SPARSE_NATIVE_DECODE", "1") != "0"
    decoders = {"native" if native else "numpy/torch": {}}
    if native:
        decoders["numpy/torch"] = {"HF_SPARSE_NATIVE_DECODE": "0"}
    if args.compare_with is not None:
        other = args.compare_with.resolve()
        if not (other / "hf_sparse" / "__init__.py").is_file():
            parser.error(f"--compare-with {other}: no hf_sparse package there")
        rev = subprocess.run(["git", "-C", str(other), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        decoders[f"native, hf-sparse at {rev or other}"] = {"HF_SPARSE_SRC": str(other)}
    config = transformers.BertConfig(num_hidden_layers=args.layers)
    dense = transformers.BertModel(config).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense.save_pretrained(tmp / "dense")
        dense_file = (tmp / "dense" / "model.safetensors").stat().st_size
        cold = args.cold and hasattr(os, "posix_fadvise")
        sparse = SparseBertModel.from_dense(dense)
        shapes = [list(m.weight.shape) for m in sparse.masked_linears().values()]
        prunable = sum(math.prod(shape) for shape in shapes)
        dense_prunable_bytes = prunable * 4
        variants, rows = [(tmp / "dense", "dense", {})], []
        for sparsity in args.sparsities:
            sparse.set_masks(magnitude_masks(sparse, sparsity))
            folder = tmp / f"sparse-{sparsity}"
            sparse.save_pretrained(folder)
            reloaded = SparseBertModel.from_pretrained(folder)  # the round trip the numbers rely on is exact
            assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in sparse.state_dict().items())
            del reloaded
            file_bytes = (folder / "model.safetensors").stat().st_size
            p_bytes = prunable_bytes(folder)
            for decoder, env in decoders.items():
                if env and sparsity not in args.fallback_sparsities:
                    continue
                variants.append((folder, "sparse", env))
                rows.append(
                    {
                        "sparsity": sparsity,
                        "decoder": decoder,
                        "measured_sparsity": round(sparse.sparsity(), 6),
                        "file_bytes": file_bytes,
                        "file_ratio_to_dense": round(file_bytes / dense_file, 4),
                        "prunable_bytes": p_bytes,
                        "prunable_ratio_to_dense_fp32": round(p_bytes / dense_prunable_bytes, 4),
                    }
                )
        del sparse
        floor = median_floor_seconds(shapes, args.repeats)
        print(f"dense: {dense_file:,} bytes; prunable weights {prunable:,}; timing {len(variants)} variants", flush=True)
        dense_times, *sparse_times = median_load_seconds(variants, args.repeats, cold)
        dense_load, dense_first = dense_times["load"], dense_times["first_output"]
        floor_first = floor + dense_times["forward_resident"]
        for row, times in zip(rows, sparse_times):
            load, first = times["load"], times["first_output"]
            row.update(
                {
                    "load_ms": round(load * 1000, 1),
                    "load_ratio_to_dense": round(load / dense_load, 3),
                    "first_output_ms": round(first * 1000, 1),
                    "first_output_ratio_to_dense": round(first / dense_first, 3),
                    "first_output_cold_ms": round(times["first_output_cold"] * 1000, 1) if cold else None,
                    "first_output_cold_ratio_to_dense": round(times["first_output_cold"] / dense_times["first_output_cold"], 3) if cold else None,
                }
            )
            print(json.dumps(row), flush=True)

    default = next(iter(decoders))
    at_90 = next((r for r in rows if r["sparsity"] == 0.9), None)
    rows_default = [r for r in rows if r["decoder"] == default]  # the targets apply to the installed decoder
    targets = {
        "prunable_bytes_at_90_le_13.5pct": None if at_90 is None else at_90["prunable_ratio_to_dense_fp32"] <= TARGET_BYTES_AT_90,
        "first_output_ratio_le_1.5_all_rows": all(r["first_output_ratio_to_dense"] <= TARGET_LOAD_RATIO for r in rows_default),
        "first_output_cold_ratio_le_1.5_all_rows": None if not cold else all(r["first_output_cold_ratio_to_dense"] <= TARGET_LOAD_RATIO for r in rows_default),
        "load_ratio_le_1.5_all_rows": all(r["load_ratio_to_dense"] <= TARGET_LOAD_RATIO for r in rows_default),
    }
    result = {
        "benchmark": "format",
        "command": "python benchmarks/format.py " + " ".join(sys.argv[1:]),
        "shape": {"layers": args.layers, "hidden": config.hidden_size, "intermediate": config.intermediate_size},
        "dtype": "float32",
        "repeats": args.repeats,
        "decoder": default,
        "dense_file_bytes": dense_file,
        "dense_prunable_fp32_bytes": dense_prunable_bytes,
        "dense_load_ms": round(dense_load * 1000, 1),
        "dense_first_output_ms": round(dense_first * 1000, 1),
        "dense_first_output_cold_ms": round(dense_times["first_output_cold"] * 1000, 1) if cold else None,
        "dense_forward_resident_ms": round(dense_times["forward_resident"] * 1000, 1),
        "floor_materialise_ms": round(floor * 1000, 1),
        "floor_first_output_ms": round(floor_first * 1000, 1),
        "floor_first_output_ratio_to_dense": round(floor_first / dense_first, 3),
        "rows": rows,
        "targets_met": targets,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "hf_sparse": hf_sparse.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"BERT-base shape ({args.layers} layers), fp32, random weights, magnitude-pruned per layer; "
        f"dense file {dense_file / 1e6:.1f} MB; dense `from_pretrained` {dense_load * 1000:.0f} ms (lazy mmap), "
        f"dense first output {dense_first * 1000:.0f} ms warm"
        + (f", {dense_times['first_output_cold'] * 1000:.0f} ms cold" if cold else "")
        + f" (medians of {args.repeats} fresh processes).",
        "",
        "| sparsity | decoder | file MB | file / dense | prunable bytes / dense fp32 | load ms | load / dense | first output ms | first output / dense | cold first output / dense |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sparsity']:.0%} | {r['decoder']} | {r['file_bytes'] / 1e6:.1f} | {r['file_ratio_to_dense']:.3f} | "
            f"{r['prunable_ratio_to_dense_fp32']:.2%} | {r['load_ms']:.0f} | {r['load_ratio_to_dense']:.2f}x | "
            f"{r['first_output_ms']:.0f} | {r['first_output_ratio_to_dense']:.2f}x | "
            + (f"{r['first_output_cold_ratio_to_dense']:.2f}x |" if cold else "- |")
        )
    lines += [
        "",
        f"Floor: allocating and filling fp32 weights and bool masks of the prunable shapes takes {floor * 1000:.0f} ms in a "
        f"fresh process; with the dense forward pass on resident weights ({dense_times['forward_resident'] * 1000:.0f} ms) that "
        f"is {floor_first * 1000:.0f} ms = {floor_first / dense_first:.2f}x the dense first output, the least any loader that "
        "rebuilds dense weights and masks can reach here.",
        "",
        f"Targets (rows of the {default} decoder): {json.dumps(targets)}",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
