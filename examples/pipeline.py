"""The main job: the whole hf-sparse pipeline on real data with a small budget (about 10 minutes on 2 cores).

    python examples/pipeline.py --out out/pipeline

1. prune once, upstream: MiniLM-L6 → 90% sparse (MLM + KD, cubic magnitude schedule; short run);
2. sparse transfer: fine-tune on SST-2 with the pattern locked, evaluate on the full dev set;
3. export: ONNX fp32 + INT8 (Optimum, ONNX Runtime) and OpenVINO INT8 (optimum-intel, NNCF), INT8
   accuracy on the SST-2 dev set;
4. publish: assemble the repo (weights, code, tokenizer, onnx/, openvino/, card from the results files) and
   commit it into a local mirror served by olah (the local Hub);
5. load back through the server with `AutoModelForSequenceClassification.from_pretrained("org/…")`
   in a fresh process (outputs compared with the local model) and print the card's results.

Numbers from a run this short are a smoke test of the pipeline, not the zoo's results (see
benchmarks/ for those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "hf-sparse/minilm-l6-90-sparse-sst2-demo"


def step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.time()


def int8_accuracy(model_dir: Path, data_dir: Path) -> dict:
    """SST-2 dev accuracy of the ONNX fp32 / INT8 and OpenVINO INT8 exports in `model_dir`."""
    from transformers import AutoTokenizer

    from hf_sparse.deploy.accuracy import glue_dev_score, onnx_predictor, openvino_predictor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    predictors = {
        "fp32_accuracy": onnx_predictor(model_dir / "onnx" / "model.onnx"),
        "int8_accuracy": onnx_predictor(model_dir / "onnx" / "model_quantized.onnx"),
        "openvino_int8_accuracy": openvino_predictor(model_dir / "openvino" / "openvino_model_int8.xml"),
    }
    scores = {name: glue_dev_score(p, tokenizer, "sst2", data_dir=data_dir, max_length=64) for name, p in predictors.items()}
    return {**{name: s["score"] for name, s in scores.items()}, "dev_examples": scores["fp32_accuracy"]["examples"]}


LOAD_BACK = r"""
import json, sys, torch
import hf_sparse
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer
repo, local, out = sys.argv[1:4]
remote_model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
# olah answers a missing folder (additional_chat_templates/) with 401, which AutoTokenizer.from_pretrained(repo)
# re-raises; the files themselves come through the server:
tokenizer = AutoTokenizer.from_pretrained(snapshot_download(repo))
batch = tokenizer(["a gripping, beautifully acted film", "tedious and far too long"], padding=True, return_tensors="pt")
local_model = AutoModelForSequenceClassification.from_pretrained(local).eval()
with torch.no_grad():
    same = torch.equal(remote_model(**batch).logits, local_model(**batch).logits)
card = ModelCard.load(repo)
results = [{"metric": r.metric_type, "value": r.metric_value, "dataset": r.dataset_name} for r in card.data.eval_results]
json.dump({"class": type(remote_model).__name__, "identical_outputs": same, "card_results": results,
           "sparsity": remote_model.sparsity()}, open(out, "w"))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "out" / "pipeline"))
    parser.add_argument("--upstream-steps", type=int, default=120)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    out, data_dir = Path(args.out).resolve(), Path(args.data_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or pass another --out")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    started = time.time()

    import transformers
    from transformers import TrainingArguments

    from hf_sparse.hub.cards import ZooEntry
    from hf_sparse.hub.local_hub import LocalHub
    from hf_sparse.hub.publish import build_and_publish
    from hf_sparse.transfer.finetune import FinetuneArguments, run_finetune
    from hf_sparse.transfer.precision import cpu_bf16_is_fast
    from hf_sparse.upstream import UpstreamRecipe, run_upstream

    transformers.logging.set_verbosity_error()
    t = step(f"1/5 prune once: MiniLM-L6 -> 90% sparse, {args.upstream_steps} MLM+KD steps")
    recipe = UpstreamRecipe.from_yaml(
        ROOT / "recipes" / "prune_ofa_90.yaml", name="pipeline_90", data_dir=str(data_dir), max_steps=args.upstream_steps,
        head_warmup_steps=max(20, args.upstream_steps // 3), eval_blocks=64, pruning_frequency=max(1, args.upstream_steps // 20),
        save_steps=10 * args.upstream_steps,
    )
    upstream = run_upstream(recipe, out / "upstream")
    print(f"    MLM accuracy: teacher {upstream['teacher']['mlm_accuracy']:.3f}, 90% student {upstream['student']['mlm_accuracy']:.3f} "
          f"(sparsity {upstream['sparsity']:.3f}) in {time.time() - t:.0f} s")

    t = step(f"2/5 sparse transfer: SST-2, {args.train_samples} examples, pattern locked")
    finetune_args = FinetuneArguments(model=str(out / "upstream" / "model"), task="sst2", data_dir=str(data_dir), max_train_samples=args.train_samples)
    training_args = TrainingArguments(
        output_dir=str(out / "sst2"), per_device_train_batch_size=32, learning_rate=1e-4, num_train_epochs=1, bf16=cpu_bf16_is_fast(), use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=20, seed=1,
    )
    results = run_finetune(finetune_args, training_args)
    print(f"    SST-2 dev accuracy {results['score']:.4f}, pattern verified: {results['pattern_verified']}, {time.time() - t:.0f} s")

    t = step("3/5 export: ONNX fp32 + INT8 (Optimum / ONNX Runtime), OpenVINO fp32 + INT8 (optimum-intel / NNCF)")
    from hf_sparse.deploy.onnx import export_onnx
    from hf_sparse.deploy.openvino import export_openvino

    model_dir = out / "sst2" / "model"
    export_onnx(model_dir, model_dir / "onnx", quantize="int8")
    export_openvino(model_dir, model_dir / "openvino", quantize="int8", calibration="sst2", num_calibration_samples=128)
    int8 = int8_accuracy(model_dir, data_dir)
    (out / "sst2" / "int8_results.json").write_text(json.dumps(int8, indent=1))
    print(f"    SST-2 dev accuracy: ONNX fp32 {int8['fp32_accuracy']:.4f}, ONNX INT8 {int8['int8_accuracy']:.4f}, "
          f"OpenVINO INT8 {int8['openvino_int8_accuracy']:.4f}, {time.time() - t:.0f} s")

    t = step(f"4/5 publish {REPO_ID} into the local Hub mirror")
    entry = ZooEntry(name=REPO_ID.split("/")[1], kind="finetuned", task="sst2", model=str(model_dir), results=[str(out / "sst2" / "results.json")])
    mirrors = out / "hub" / "mirrors"
    published = build_and_publish(entry, REPO_ID, ROOT, local_mirror=str(mirrors))
    print(f"    {len(published.operations)} files committed: {published.commit_url}")

    t = step("5/5 load back through the local Hub server (fresh process, hf_sparse + AutoModel)")
    with LocalHub(mirrors) as hub:
        env = hub.client_env()
        env["HF_HOME"] = str(out / "hub" / "client-cache")
        report = out / "load_back.json"
        subprocess.run([sys.executable, "-c", LOAD_BACK, REPO_ID, str(model_dir), str(report)], check=True, env=env, cwd=str(ROOT))
        print(f"    served by olah at {hub.endpoint} (started in {hub.startup_seconds:.2f} s)")
    loaded = json.loads(report.read_text())
    print(f"    {loaded['class']} loaded from {REPO_ID}: identical outputs: {loaded['identical_outputs']}, sparsity {loaded['sparsity']:.3f}")
    print("    results on the card:")
    for result in loaded["card_results"]:
        print(f"      {result['dataset']}: {result['metric']} = {result['value']}")
    summary = {"upstream": {k: upstream[k] for k in ("teacher", "student", "sparsity", "steps")}, "sst2": results["metrics"], "int8": int8,
               "published": REPO_ID, "load_back": loaded, "wall_seconds": round(time.time() - started, 1)}
    (out / "pipeline.json").write_text(json.dumps(summary, indent=1))
    print(f"\ndone in {summary['wall_seconds'] / 60:.1f} min; summary in {out / 'pipeline.json'}")
    return 0 if loaded["identical_outputs"] else 1


if __name__ == "__main__":
    sys.exit(main())
