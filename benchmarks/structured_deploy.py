"""The deployment target on a trained structured model: speed-up over dense fp32 PyTorch and task loss.

    python benchmarks/transfer.py --row prune-ft-structured-50 --task sst2 --seed 1 --kd    # train it first
    python benchmarks/structured_deploy.py --row prune-ft-structured-50-kd --task sst2

Takes the structured (heads + FFN neurons) model fine-tuned by benchmarks/transfer.py and the
dense model of the same task and training budget (its KD teacher: `dense_<task>_s1`, or for a row trained
with `--epochs E --max-train-samples N`, e.g. `--row prune-ft-structured-60-kd-ep2-n67349`, the dense row
trained the same way, `dense-ep2-n67349_<task>_s1`), compacts the structured model,
exports it (ONNX Runtime INT8 dynamic, OpenVINO NNCF INT8 calibrated on the task's training text, and
OpenVINO fp32, the fastest on CPUs without VNNI; the OpenVINO INT8 IR also compiled for a static input shape, in f32
and in bf16 inference precision, which CPUs without native bf16 run as f32; and, for the same-run ratio, the compacted
model in fp32 PyTorch and static OpenVINO INT8 computing every position of its last layer, `cls_only_last_layer: false`),
and in ONE run measures every artifact's full-dev-set score and batch-1 (and batch-16) latency at
seq 128, the artifacts timed in turns (`--rounds`). Speed-ups divide the dense model's torch-fp32 median by the artifact's;
score differences to dense come with a 95% paired bootstrap interval over the dev examples. Writes
benchmarks/results/structured_deploy_<row>_<task>[_s<seed>].json and the benchmarks/README.md block `structured-<row>-<task>[-s<seed>]`
(the seed suffix only for seeds other than 1: seed 1's names are the ones published).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "out" / "transfer"
RESULTS = ROOT / "benchmarks" / "results"


def row_commands(row: str, task: str, seed: int, dense_seed: int = 1) -> tuple[str, str, str]:
    """(dense run name, transfer.py command that trains `row`, transfer.py command that trains its dense run); the
    dense run is the row's KD teacher, seed 1, unless `dense_seed` names another seed of the same dense recipe."""
    from transfer import parse_run_name, run_name, teacher_overrides

    base, kd, qat, bi_encoder, overrides = parse_run_name(row)
    _, train = run_name(base, task, seed, kd, qat, bi_encoder, overrides)
    dense, dense_train = run_name("dense", task, dense_seed, False, False, False, teacher_overrides(overrides))
    return dense, train, dense_train


def output_names(row: str, task: str, seed: int) -> tuple[str, str, str]:
    """(results file name, README block name, command) of a deployment run; seed 1 keeps the published unsuffixed names."""
    suffix = "" if seed == 1 else f"_s{seed}"
    command = f"python benchmarks/structured_deploy.py --row {row} --task {task}" + (f" --seed {seed}" if seed != 1 else "")
    return f"structured_deploy_{row}_{task}{suffix}.json", f"structured-{row}-{task}{suffix.replace('_', '-')}", command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", required=True, help="transfer row name with -kd if used, e.g. prune-ft-structured-50-kd")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed calls per artifact and batch size")
    parser.add_argument("--rounds", type=int, default=5, help="the artifacts are timed in turns, over this many rounds")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    if 1 not in args.batch:
        parser.error("--batch must include 1 (the target is stated at batch 1)")

    from transformers import AutoTokenizer

    from hf_sparse.deploy.accuracy import glue_dev_predictions, onnx_predictor, openvino_predictor, torch_predictor
    from hf_sparse.tasks.glue import get_glue_task
    from hf_sparse.tasks.metrics import glue_metrics
    from hf_sparse.tasks.significance import paired_bootstrap
    from hf_sparse.cpu import cpu_description
    from hf_sparse.deploy.bench import Runners, make_inputs, timed_interleaved
    from hf_sparse.deploy.compact import compact
    from hf_sparse.deploy.onnx import export_onnx
    from hf_sparse.deploy.openvino import export_openvino

    dense_name, train_command, dense_command = row_commands(args.row, args.task, args.seed)
    file_name, block_name, command = output_names(args.row, args.task, args.seed)
    for flag in ("runs", "rounds", "batch"):  # the timing options, where not the defaults: the command reruns this run
        value = getattr(args, flag)
        if value != parser.get_default(flag):
            command += f" --{flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
    structured = MODELS / f"{args.row}_{args.task}_s{args.seed}" / "model"
    dense = MODELS / dense_name / "model"
    for path, missing_command in ((structured, train_command), (dense, dense_command)):
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: run `{missing_command}` first")
    tokenizer = AutoTokenizer.from_pretrained(structured)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = compact(structured, tmp / "compact")
        exports = tmp / "compact-exports"  # the layout `Runners` looks for: <work_dir>/onnx, <work_dir>/openvino
        export_onnx(tmp / "compact", exports / "onnx")
        export_openvino(tmp / "compact", exports / "openvino", calibration=args.task, num_calibration_samples=300)
        # the same model computing every position of its last layer (`cls_only_last_layer: false`), for the same-run ratio
        every_position = tmp / "compact-every-position"
        shutil.copytree(tmp / "compact", every_position)
        config = json.loads((every_position / "config.json").read_text())
        (every_position / "config.json").write_text(json.dumps({**config, "cls_only_last_layer": False}, indent=2))
        every_position_exports = tmp / "every-position-exports"
        export_openvino(every_position, every_position_exports / "openvino", calibration=args.task, num_calibration_samples=300)
        artifacts = [
            # name, predictor factory, runner folder, runtime
            # `Runners` loads the plain BERT dense model as SparseBert with all-ones masks: the same dense kernels
            ("dense torch fp32", lambda: torch_predictor(dense), dense, "torch-fp32"),
            ("structured torch fp32 (masked)", lambda: torch_predictor(structured), structured, "torch-fp32"),
            ("compact torch fp32", lambda: torch_predictor(tmp / "compact"), tmp / "compact", "torch-fp32"),
            ("compact onnxruntime int8", lambda: onnx_predictor(exports / "onnx" / "model_quantized.onnx"), tmp / "compact", "ort-int8"),
            ("compact onnxruntime fp32", lambda: onnx_predictor(exports / "onnx" / "model.onnx"), tmp / "compact", "ort-fp32"),
            ("compact openvino int8", lambda: openvino_predictor(exports / "openvino" / "openvino_model_int8.xml"), tmp / "compact", "ov-int8"),
            # the same IR compiled for one shape (scored at (1, 128), each sentence padded; timed at (batch, 128))
            ("compact openvino int8 static shape", lambda: openvino_predictor(exports / "openvino" / "openvino_model_int8.xml", static_shape=(1, 128)),
             tmp / "compact", "ov-int8-static"),
            # and with the layers left in floating point (LayerNorm, softmax, GELU...) in bf16, on CPUs with native bf16
            ("compact openvino int8 static shape, bf16",
             lambda: openvino_predictor(exports / "openvino" / "openvino_model_int8.xml", precision="bf16", static_shape=(1, 128)),
             tmp / "compact", "ov-int8-static-bf16"),
            # on CPUs without VNNI (AVX2) OpenVINO's fp32 kernels outrun its INT8 ones (benchmarks/latency.py --tag avx2)
            ("compact openvino fp32", lambda: openvino_predictor(exports / "openvino" / "openvino_model.xml"), tmp / "compact", "ov-fp32"),
            # without the [CLS]-only last layer (what the rows above ran before it existed)
            ("compact torch fp32, every position", lambda: torch_predictor(every_position), every_position, "torch-fp32"),
            ("compact openvino int8 static shape, every position",
             lambda: openvino_predictor(every_position_exports / "openvino" / "openvino_model_int8.xml", static_shape=(1, 128)),
             every_position, "ov-int8-static"),
        ]
        rows, runs, predictions = [], {batch: {} for batch in args.batch}, []
        main_metric = get_glue_task(args.task).main_metric
        for name, make, folder, runtime in artifacts:
            predicted, references = glue_dev_predictions(make(), tokenizer, args.task)
            predictions.append(predicted)
            score = glue_metrics(args.task, predicted, references)[main_metric]
            rows.append({"artifact": name, "score": score, "main_metric": main_metric, "runtime": runtime})
            work = {tmp / "compact": exports, every_position: every_position_exports}.get(folder, tmp / f"exports-{len(rows)}")
            runners = Runners(folder, work, baseline=folder == dense)  # the dense baseline: every position, as transformers
            for batch in args.batch:
                runs[batch][name], facts = runners.runner(runtime, make_inputs(batch, 128, 30522))
                if "precisions" in facts:  # what OpenVINO's layers ran in: bf16 only where the CPU has it
                    rows[-1][f"precisions_batch{batch}"] = facts["precisions"]
            print(name, f"{score:.4f}", flush=True)
        for batch in args.batch:  # every artifact in turns: the ratios to dense are not at the mercy of one slow spell
            for row, stats in zip(rows, timed_interleaved(runs[batch], args.runs, args.rounds).values()):
                row[f"batch{batch}"] = stats
        for row in rows:
            print(row["artifact"], {b: row[f"batch{b}"]["median_ms"] for b in args.batch}, flush=True)
    base, masked = rows[0], rows[1]
    for row, predicted in zip(rows, predictions):
        row["delta_points"] = round(100 * (row["score"] - base["score"]), 2)
        # the dev set is a sample: the paired bootstrap interval of the difference (same examples for both models)
        interval = paired_bootstrap(args.task, predicted, predictions[0], references, metric=main_metric)
        row["delta_points_ci95"] = [round(100 * interval["low"], 2), round(100 * interval["high"], 2)]
        row["delta_points_vs_structured_fp32"] = round(100 * (row["score"] - masked["score"]), 2)
        for batch in args.batch:
            row[f"speedup_batch{batch}"] = round(base[f"batch{batch}"]["median_ms"] / row[f"batch{batch}"]["median_ms"], 2)
    met = [r["artifact"] for r in rows[1:] if r["speedup_batch1"] >= 10 and r["delta_points"] >= -1.0]
    # the deployment step alone (compaction, export, INT8) against the same structured model in fp32 PyTorch
    deployment_met = [r["artifact"] for r in rows[2:] if r["speedup_batch1"] >= 10 and r["delta_points_vs_structured_fp32"] >= -1.0]
    result = {
        "row": args.row, "task": args.task, "structured_model": str(structured), "dense_model": str(dense),
        "compaction": report.to_dict(), "cpu": cpu_description(), "seq": 128, "runs": args.runs,
        "rounds": args.rounds, "rows": rows,
        "target": ">=10x dense fp32 torch at batch 1 with <=1 point task loss", "target_met_by": met,
        "deployment_within_1_point_of_structured_fp32_and_10x": deployment_met,
        "seed": args.seed,
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / file_name
    path.write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"| artifact | {rows[0]['main_metric']} | vs dense (points) | 95% interval | vs structured fp32 (points) | "
             + " | ".join(f"speed-up b{b}" for b in args.batch) + " |",
             "|---|---|---|---|---|" + "---|" * len(args.batch)]
    for i, r in enumerate(rows):
        own = "–" if i < 2 else f"{r['delta_points_vs_structured_fp32']:+.2f}"
        low, high = r["delta_points_ci95"]
        lines.append(f"| {r['artifact']} | {100 * r['score']:.2f} | {r['delta_points']:+.2f} | {low:+.2f} .. {high:+.2f} | {own} | "
                     + " | ".join(f"{r[f'speedup_batch{b}']:.2f}x" for b in args.batch) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"target met by: {met or 'none'}; deployment within 1 point of the structured fp32 model at >=10x: {deployment_met or 'none'}; wrote {path}")
    from readme_block import update_readme_block

    update_readme_block(block_name, table)


if __name__ == "__main__":
    main()
