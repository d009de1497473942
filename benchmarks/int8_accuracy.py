"""INT8 accuracy of a fine-tuned sparse model: PyTorch vs ONNX Runtime vs OpenVINO, fp32 and INT8.

    python benchmarks/int8_accuracy.py --model out/transfer/upstream-90-kd_sst2_s1/model --task sst2

Exports the model (ONNX fp32 + dynamic INT8, ONNX static INT8 and OpenVINO NNCF INT8, both
calibrated on the task's training text), scores every artifact on the full dev set and writes
`benchmarks/results/int8_accuracy_<task>[_<name>].json` with each score's difference to PyTorch fp32 and its 95%
paired bootstrap interval over the dev examples (`hf_sparse.tasks.significance`; `--name` keeps results of several
models apart). An INT8 artifact is *shown* within 1 point when the interval's low end is above -1 point, not only
its difference. Static ONNX Runtime INT8 runs twice: with the
MatMul nodes only (`export_onnx`'s default) and with Optimum's full operator list (`static_operators=None`).
Dynamic and static (MatMul) ONNX Runtime INT8 also run with 7-bit weights (`reduce_range=True`, meant for x86
CPUs without VNNI, whose INT8 kernels can saturate with full-range weights); the results record the CPU.

A model fine-tuned with `--qat` (its folder holds `qat_ranges.json`) also gets the ONNX Runtime
static INT8 export that uses the QAT input ranges (`calibration="qat"`), and the results go to
`int8_accuracy_<task>_qat.json`, with the score QAT simulated during fine-tuning for reference.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned sparse_bert sequence-classification folder")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--calibration_samples", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="", help="suffix of the results file and benchmarks/README.md block (several models)")
    args = parser.parse_args()
    if args.name and not re.fullmatch(r"[A-Za-z0-9.-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '.' and '-' only (it becomes part of a file name)")

    from transformers import AutoTokenizer

    from hf_sparse.deploy.accuracy import glue_dev_predictions, onnx_predictor, openvino_predictor, torch_predictor
    from hf_sparse.tasks.glue import get_glue_task
    from hf_sparse.tasks.metrics import glue_metrics
    from hf_sparse.tasks.significance import paired_bootstrap
    from hf_sparse.cpu import cpu_description
    from hf_sparse.deploy.onnx import export_onnx
    from hf_sparse.deploy.openvino import export_openvino

    model_dir = Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows, predictions = [], []
    main_metric = get_glue_task(args.task).main_metric
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.time()
        export_onnx(model_dir, tmp / "dynamic")
        export_onnx(model_dir, tmp / "static", static=True, calibration=args.task, num_calibration_samples=args.calibration_samples)
        export_onnx(
            model_dir, tmp / "static-all", static=True, calibration=args.task,
            num_calibration_samples=args.calibration_samples, static_operators=None,
        )
        export_onnx(model_dir, tmp / "dynamic-7bit", reduce_range=True)
        export_onnx(
            model_dir, tmp / "static-7bit", static=True, calibration=args.task, num_calibration_samples=args.calibration_samples, reduce_range=True,
        )
        export_openvino(model_dir, tmp / "ov", calibration=args.task, num_calibration_samples=args.calibration_samples)
        qat = (model_dir / "qat_ranges.json").is_file()
        if qat:
            export_onnx(model_dir, tmp / "qat", static=True, calibration="qat")
        export_seconds = time.time() - t
        artifacts = [
            ("torch fp32", lambda: torch_predictor(model_dir)),
            ("onnxruntime fp32", lambda: onnx_predictor(tmp / "dynamic" / "model.onnx")),
            ("onnxruntime int8 dynamic", lambda: onnx_predictor(tmp / "dynamic" / "model_quantized.onnx")),
            ("onnxruntime int8 static (MatMul)", lambda: onnx_predictor(tmp / "static" / "model_quantized.onnx")),
            ("onnxruntime int8 static (all operators)", lambda: onnx_predictor(tmp / "static-all" / "model_quantized.onnx")),
            ("onnxruntime int8 dynamic, 7-bit weights", lambda: onnx_predictor(tmp / "dynamic-7bit" / "model_quantized.onnx")),
            ("onnxruntime int8 static (MatMul), 7-bit weights", lambda: onnx_predictor(tmp / "static-7bit" / "model_quantized.onnx")),
            ("openvino fp32", lambda: openvino_predictor(tmp / "ov" / "openvino_model.xml")),
            ("openvino int8 (nncf)", lambda: openvino_predictor(tmp / "ov" / "openvino_model_int8.xml")),
        ]
        if qat:
            artifacts.append(("onnxruntime int8 static (QAT ranges)", lambda: onnx_predictor(tmp / "qat" / "model_quantized.onnx")))
        for name, make in artifacts:
            t = time.time()
            predicted, references = glue_dev_predictions(make(), tokenizer, args.task, max_length=args.max_length)
            metrics = glue_metrics(args.task, predicted, references)
            predictions.append(predicted)
            rows.append({"artifact": name, "metrics": metrics, "score": metrics[main_metric], "main_metric": main_metric,
                         "examples": len(references), "seconds": round(time.time() - t, 1)})
            print(f"{name:28s} {main_metric} {metrics[main_metric]:.4f}", flush=True)
    base = rows[0]["score"]
    for row, predicted in zip(rows, predictions):
        row["delta_points"] = round(100 * (row["score"] - base), 2)
        interval = paired_bootstrap(args.task, predicted, predictions[0], references, metric=main_metric)
        row["delta_points_ci95"] = [round(100 * interval["low"], 2), round(100 * interval["high"], 2)]
        row["changed_predictions"] = int(np.sum(~np.isclose(predicted, predictions[0]))) if args.task == "stsb" else int(np.sum(predicted != predictions[0]))
    int8 = [r for r in rows if "int8" in r["artifact"]]
    report = {
        "model": str(model_dir),
        "task": args.task,
        "calibration": f"{args.calibration_samples} {args.task} training examples",
        "export_seconds": round(export_seconds, 1),
        "rows": rows,
        "target": "INT8 within 1 point of fp32",
        "target_met": {r["artifact"]: abs(r["delta_points"]) <= 1.0 for r in int8},
        # the dev set is a sample: within 1 point for the whole dev distribution at 95% (a loss only; a gain passes)
        "shown_within_1_point": {r["artifact"]: r["delta_points_ci95"][0] >= -1.0 for r in int8},
        "cpu": cpu_description(),  # INT8 kernels differ by CPU (VNNI, AMX): so can INT8 scores
        "command": f"python benchmarks/int8_accuracy.py --model {args.model} --task {args.task}"
        + (f" --name {args.name}" if args.name else ""),
    }
    finetune_results = model_dir.parent / "results.json"
    if qat and finetune_results.is_file():
        report["qat_simulated_score"] = json.loads(finetune_results.read_text())["score"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = (f"_{args.name}" if args.name else "") + ("_qat" if qat else "")
    path = out / f"int8_accuracy_{args.task}{suffix}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    if out == ROOT / "benchmarks" / "results":
        lines = [f"| artifact | {rows[0]['main_metric']} | vs torch fp32 (points) | 95% interval | predictions changed |", "|---|---|---|---|---|"]
        lines += [f"| {r['artifact']} | {100 * r['score']:.2f} | {r['delta_points']:+.2f} | "
                  f"{r['delta_points_ci95'][0]:+.2f} .. {r['delta_points_ci95'][1]:+.2f} | {r['changed_predictions']} |" for r in rows]
        from readme_block import update_readme_block

        if "qat_simulated_score" in report:
            lines.append(f"| (QAT-simulated score at the end of fine-tuning) | {100 * report['qat_simulated_score']:.2f} | – | – | – |")
        update_readme_block(f"int8-table-{args.task}{suffix.replace('_', '-')}", "\n".join(lines))


if __name__ == "__main__":
    main()
