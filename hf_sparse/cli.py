"""The `hf-sparse` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .deploy.bench import RUNTIMES
from .deploy.onnx import ExportError
from .models.sparse_bert.sparse_format import SparseFormatError
from .transfer.callback import MaskDriftError


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import dense_to_sparse, inspect_checkpoint, sparse_to_dense

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} exists and is not empty; pass --force to write into it")
    if args.to_bert:
        sparse_to_dense(args.src, out, head=args.head)
        print(f"wrote plain BERT checkpoint to {out}")
        return 0
    dense_to_sparse(args.src, out, head=args.head, sparsity_pattern=args.pattern, target_sparsity=args.target_sparsity)
    report = inspect_checkpoint(out)
    print(f"wrote sparse checkpoint to {out}: global sparsity {report['global_sparsity']:.4f}, {report['weight_bytes']:,} bytes of weights")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .convert import inspect_checkpoint

    report = inspect_checkpoint(args.path)
    failed = [c for c in report["checks"] if not c["ok"]]
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if failed else 0
    print(f"{report['path']}: {report['source']}")
    print(f"  architectures: {report['architectures']}  dtype: {report['dtype']}  format version: {report['format_version']}")
    print(f"  declared pattern: {report['sparsity_pattern']}  target sparsity: {report['target_sparsity']}")
    print(f"  weight files: {report['weight_bytes']:,} bytes ({', '.join(report['weight_files'])})")
    print(
        f"  global sparsity: {report['global_sparsity']:.4f} ({report['kept_weights']:,} of "
        f"{report['prunable_weights']:,} prunable weights kept)"
    )
    print(f"  fully pruned heads: {report['fully_pruned_heads']}  fully pruned neurons: {report['fully_pruned_neurons']}")
    print(f"  masks also follow: {', '.join(report['consistent_with']) or '-'}")
    print(f"  {'layer':<48} {'shape':>12} {'sparsity':>9}")
    for layer in report["layers"]:
        shape = "x".join(str(d) for d in layer["shape"])
        print(f"  {layer['name']:<48} {shape:>12} {layer['sparsity']:>9.4f}")
    for check in report["checks"]:
        print(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['check']}" + ("" if check["ok"] else f": {check['detail']}"))
    return 1 if failed else 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from .upstream import UpstreamRecipe, run_upstream

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        import yaml

        overrides[key] = yaml.safe_load(value)
    recipe = UpstreamRecipe.from_yaml(args.recipe, **overrides)
    out = Path(args.output_dir or Path("out") / recipe.name)
    if (out / "model").exists() and not args.force:
        raise ValueError(f"{out / 'model'} exists; pass --force to overwrite it")
    metrics = run_upstream(recipe, out, resume=args.resume)
    print(json.dumps({k: metrics[k] for k in ("teacher", "student", "sparsity", "steps", "wall_seconds")}, indent=2))
    print(f"wrote {out / 'model'}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from transformers import HfArgumentParser, TrainingArguments

    from .transfer.finetune import FinetuneArguments, run_finetune

    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        HfArgumentParser((FinetuneArguments, TrainingArguments), prog="hf-sparse finetune").print_help()
        return 0
    if not any(a == "--output_dir" or a.startswith("--output_dir=") or a == "--output-dir" for a in rest):
        model = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--model"), "model")
        task = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--task"), "task")
        rest += ["--output_dir", str(Path("out") / "finetune" / f"{Path(model).name}-{task}")]
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments), prog="hf-sparse finetune")
    finetune_args, training_args = parser.parse_args_into_dataclasses(rest)
    results = run_finetune(finetune_args, training_args)
    print(json.dumps({k: results[k] for k in ("task", "mode", "main_metric", "score", "sparsity", "steps", "train_seconds")}, indent=2))
    print(f"wrote {Path(training_args.output_dir) / 'model'} and {Path(training_args.output_dir) / 'results.json'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.model).with_name(Path(args.model).name + f"-{args.to}")
    quantize = None if args.quantize == "none" else args.quantize
    calibration = args.calibration
    if args.to == "onnx":
        from .deploy.onnx import export_onnx

        export_onnx(
            args.model, out, quantize=quantize, static=args.static, calibration=calibration, num_calibration_samples=args.calibration_samples,
            reduce_range=args.reduce_range,
        )
    else:
        if args.static:
            raise ValueError("--static applies to ONNX Runtime; OpenVINO INT8 (NNCF) is always static")
        if args.reduce_range:
            raise ValueError("--reduce-range applies to ONNX Runtime; NNCF guards OpenVINO INT8 against overflow itself")
        from .deploy.openvino import export_openvino

        export_openvino(args.model, out, quantize=quantize, calibration=calibration, num_calibration_samples=args.calibration_samples)
    info = json.loads((out / "export_info.json").read_text())
    print(json.dumps({k: info[k] for k in ("runtime", "task", "files", "int8") if k in info}, indent=2))
    print(f"wrote {out}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from .deploy.compact import compact

    report = compact(args.model, args.out)
    print(
        f"heads {report.heads_before} -> {report.heads_after}, FFN neurons {report.neurons_before} -> {report.neurons_after}, "
        f"parameters {report.parameters_before:,} -> {report.parameters_after:,}; "
        f"max |compacted - masked| on a probe batch {report.max_abs_diff:.2e}"
    )
    print(f"wrote {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .cpu import cpu_description
    from .deploy.bench import benchmark, format_table

    rows = benchmark(
        args.model, args.batch, args.seq, runtimes=args.runtimes or RUNTIMES, runs=args.runs, rounds=args.rounds,
        reference_dir=args.reference,
    )
    cpu = cpu_description()
    baseline = f"torch-fp32 of {args.reference}" if args.reference else "torch-fp32 of the same model"
    print(f"{args.model} on {cpu.get('model', '?')} ({cpu.get('cores')} cores; {' '.join(cpu.get('flags', []))}); "
          f"speed-up relative to {baseline} at the same batch, timed in turns with the rows")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "cpu": cpu, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Sparse pre-trained BERT models for the Hugging Face ecosystem.")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="dense BERT with zeros -> sparse_bert (masks from zeros), or back with --to-bert")
    convert.add_argument("src", help="local folder or Hub id of the source checkpoint (safetensors)")
    convert.add_argument("out", help="output folder")
    convert.add_argument("--to-bert", action="store_true", help="export a sparse_bert checkpoint as a plain BertFor* one")
    convert.add_argument("--head", help="model head (default: from the checkpoint's architectures): base, masked-lm, ...")
    convert.add_argument("--pattern", default="unstructured", help="sparsity pattern to record, e.g. unstructured, 2:4, block:4x1")
    convert.add_argument("--target-sparsity", type=float, default=None, help="target sparsity to record in the config")
    convert.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    convert.set_defaults(func=_cmd_convert)

    prune = sub.add_parser("prune", help="prune once, upstream: MLM + KD + gradual pruning from a recipe")
    prune.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    prune.add_argument("--output-dir", help="default: out/<recipe name>")
    prune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe setting (repeatable)")
    prune.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in the output dir")
    prune.add_argument("--force", action="store_true", help="overwrite an existing output model")
    prune.set_defaults(func=_cmd_prune)

    finetune = sub.add_parser(
        "finetune",
        add_help=False,
        help="sparse transfer: fine-tune on sst2/cola/mrpc/rte/stsb/squad with the pattern locked (--help for all options)",
    )
    finetune.set_defaults(func=_cmd_finetune, rest=[])

    export = sub.add_parser("export", help="ONNX Runtime or OpenVINO export, optionally INT8 (Optimum / NNCF)")
    export.add_argument("model", help="sparse_bert checkpoint folder")
    export.add_argument("--to", choices=("onnx", "openvino"), default="onnx")
    export.add_argument("--quantize", choices=("int8", "none"), default="int8")
    export.add_argument("--static", action="store_true", help="ONNX: static INT8 of the MatMul nodes with calibrated activation ranges (default dynamic)")
    export.add_argument(
        "--calibration", default="wikitext",
        help="calibration text: wikitext, squad or a GLUE task (default wikitext); with --to onnx --static, `qat` uses the "
        "input ranges of a `finetune --qat` checkpoint (its qat_ranges.json)",
    )
    export.add_argument("--calibration-samples", type=int, default=128)
    export.add_argument(
        "--reduce-range", action="store_true",
        help="ONNX INT8: 7-bit weights, for x86 CPUs without VNNI whose INT8 kernels can saturate (try it if INT8 accuracy drops there)",
    )
    export.add_argument("--out", help="output folder (default: <model>-<to>)")
    export.set_defaults(func=_cmd_export)

    compact = sub.add_parser("compact", help="physically remove pruned attention heads and FFN neurons")
    compact.add_argument("model", help="sparse_bert checkpoint folder")
    compact.add_argument("out", help="output folder (must not exist)")
    compact.set_defaults(func=_cmd_compact)

    bench = sub.add_parser("bench", help="latency table across runtimes (torch, ONNX Runtime, OpenVINO; fp32 / INT8)")
    bench.add_argument("model", help="sparse_bert checkpoint folder")
    bench.add_argument("--batch", type=int, nargs="+", default=[1])
    bench.add_argument("--seq", type=int, default=128)
    bench.add_argument("--runs", type=int, default=20, help="timed runs per row (median reported)")
    bench.add_argument("--rounds", type=int, default=5, help="the runtimes are timed in turns, over this many rounds")
    bench.add_argument("--reference", help="a model folder (e.g. the dense one) whose torch-fp32 latency is the speed-up baseline")
    bench.add_argument("--runtimes", nargs="+", default=None, help="subset of: " + " ".join(RUNTIMES))
    bench.add_argument("--json", help="also write the rows to this JSON file")
    bench.set_defaults(func=_cmd_bench)

    inspect = sub.add_parser("inspect", help="per-layer and global sparsity, pattern and integrity checks")
    inspect.add_argument("path", help="local folder or Hub id")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "finetune":  # its options are dataclass fields + TrainingArguments (HfArgumentParser)
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        return args.func(args)
    except (SparseFormatError, MaskDriftError, ExportError, ValueError, OSError, KeyError, TypeError, ModuleNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hf-sparse: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
