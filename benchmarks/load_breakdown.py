"""Where the warm-cache load time of a sparse checkpoint goes (companion to `format.py`).

BERT-base shape (12 layers), random weights, magnitude-pruned to 90%, saved once. Each timing runs in
a fresh Python process (median of `--repeats`), as a user's load would:

* `decode`: `decode_state_dict` of the whole file (72 compressed weights, 2 worker threads), with the
  C decoder and with the numpy/torch one (`HF_SPARSE_NATIVE_DECODE=0`);
* `decode_one_pass`: the C decoder on one 56.6M-entry weight, into new memory and again into the same
  memory (the second time the pages are already mapped: the decoder's own arithmetic);
* `touch_256mb`: writing one byte per 4 KiB page of 256 MiB of new anonymous memory, plain, after
  `MADV_POPULATE_WRITE`, and with `MADV_HUGEPAGE` (transparent huge pages): the price of new memory.

    python benchmarks/load_breakdown.py        # writes benchmarks/results/load_breakdown.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from format import _run_fresh as _fresh  # benchmarks/format.py: a snippet in a fresh process, its JSON back

RESULTS = Path(__file__).resolve().parent / "results"

_DECODE = """
import json, os, sys, time
from hf_sparse.models.sparse_bert import sparse_format
tensors, meta = sparse_format.read_safetensors(sys.argv[1])
start = time.perf_counter()
sparse_format.decode_state_dict(tensors, meta, sys.argv[1])
print(json.dumps({"ms": (time.perf_counter() - start) * 1000}))
"""

_ONE_PASS = """
import json, time, torch
from hf_sparse import _bitmask
from hf_sparse.models.sparse_bert.sparse_format import pack_mask
gen = torch.Generator().manual_seed(0)
n = 3072 * 768 * 24
mask = torch.rand(n, generator=gen) > 0.9
values, packed = torch.randn(int(mask.sum()), generator=gen), pack_mask(mask)
weight, out_mask = torch.empty(n), torch.empty(n, dtype=torch.bool)
times = []
for _ in range(2):
    start = time.perf_counter()
    _bitmask.decode(packed.numpy(), values.view(torch.int32).numpy(), weight.view(torch.int32).numpy(), out_mask.numpy(), 4)
    times.append((time.perf_counter() - start) * 1000)
assert torch.equal(out_mask, mask)
print(json.dumps({"new_memory_ms": times[0], "mapped_memory_ms": times[1]}))
"""

_TOUCH = """
import json, mmap, sys, time
import numpy as np
size, how = 256 << 20, sys.argv[1]
region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if how == "hugepage":
    region.madvise(mmap.MADV_HUGEPAGE)
start = time.perf_counter()
if how == "populate_write":
    region.madvise(23)  # MADV_POPULATE_WRITE (Linux 5.14)
pages = np.frombuffer(region, dtype=np.uint8)
pages[::4096] = 1
ms = (time.perf_counter() - start) * 1000
huge = next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages"))
print(json.dumps({"ms": ms, "anon_huge_kb": huge}))
"""


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "load_breakdown.json")
    args = parser.parse_args()

    import torch
    import transformers

    from hf_sparse import SparseBertModel
    from hf_sparse.models.sparse_bert import sparse_format
    from hf_sparse.pruning import magnitude_masks

    if sparse_format._native_bitmask is None:
        raise SystemExit("hf_sparse._bitmask is not built: reinstall hf-sparse with a C compiler (pip install -e .)")
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    result: dict = {"benchmark": "load_breakdown", "command": "python benchmarks/load_breakdown.py " + " ".join(sys.argv[1:]),
                    "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        sparse = SparseBertModel.from_dense(transformers.BertModel(transformers.BertConfig()).eval())
        sparse.set_masks(magnitude_masks(sparse, 0.9))
        sparse.save_pretrained(tmp)
        del sparse
        path = str(Path(tmp) / "model.safetensors")
        _fresh(_DECODE, path)  # warms the page cache
        result["decode_ms"] = {
            name: _median([_fresh(_DECODE, path, env={"HF_SPARSE_NATIVE_DECODE": flag}) for _ in range(args.repeats)], "ms")
            for name, flag in (("native", "1"), ("numpy/torch", "0"))
        }
    passes = [_fresh(_ONE_PASS) for _ in range(args.repeats)]
    result["decode_one_pass_56.6M_entries_ms"] = {key: _median(passes, key) for key in ("new_memory_ms", "mapped_memory_ms")}
    result["touch_256mb_ms"] = {}
    for how in ("plain", "populate_write", "hugepage"):
        runs = [_fresh(_TOUCH, how) for _ in range(args.repeats if how != "hugepage" else 1)]
        result["touch_256mb_ms"][how] = _median(runs, "ms")
        if how == "hugepage":
            result["touch_256mb_hugepage_anon_huge_kb"] = runs[0]["anon_huge_kb"]
    result["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "cpu": platform.processor() or platform.machine(), "kernel": platform.release()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
