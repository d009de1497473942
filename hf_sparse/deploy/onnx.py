"""ONNX (fp32 and INT8) export of SparseBert models through Optimum and ONNX Runtime.

`export_onnx` exports the SparseBert model itself (compacted ones included) with Optimum's ONNX
exporter, which validates the ONNX outputs against PyTorch, and with `quantize="int8"` quantizes it
with ONNX Runtime: dynamic by default, or static with ranges calibrated on real text
(`static=True`, `calibration=<source>`; only MatMul nodes are quantized by default, see
`STATIC_OPERATORS`), or static with the input ranges that quantization-aware training calibrated (`calibration="qat"`: the checkpoint's `qat_ranges.json`; only the encoder
linear layers are quantized, exactly as QAT simulated them). Weights are int8 per-channel
symmetric, so pruned weights stay exactly zero; `reduce_range=True` keeps them to 7 bits for x86 CPUs
without VNNI whose INT8 kernels saturate (see `needs_reduced_range`). The folder holds `model.onnx`, `model_quantized.onnx`, the tokenizer, a
`config.json` that ORT loads without hf-sparse (model_type `bert`; the sparsity metadata is kept)
and `export_info.json` recording how it was made; load it with `optimum.onnxruntime.ORTModelFor*`.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from ..transfer.qat import QAT_RANGES_FILE
from .optimum_support import EXPORT_TASKS

PathLike = Union[str, Path]

ORT_CLASSES = {
    "SparseBertModel": "ORTModelForFeatureExtraction",
    "SparseBertForMaskedLM": "ORTModelForMaskedLM",
    "SparseBertForSequenceClassification": "ORTModelForSequenceClassification",
    "SparseBertForQuestionAnswering": "ORTModelForQuestionAnswering",
    "SparseBertForTokenClassification": "ORTModelForTokenClassification",
    "SparseBertForMultipleChoice": "ORTModelForMultipleChoice",
}
EXPORT_INFO = "export_info.json"
QAT_CALIBRATION = "qat"  # calibration source: the ranges recorded by quantization-aware training
# Static INT8 from text calibration quantizes the MatMuls only (the linear layers and the attention products).
# Optimum's default list also quantizes Gather (embeddings), LayerNormalization, Where, Transpose... with min-max
# ranges from a few hundred sentences; on a real SST-2 model that cost 1.03 points where MatMul-only cost 0.34.
STATIC_OPERATORS = ("MatMul",)


class ExportError(RuntimeError):
    """The export cannot run here (missing or incompatible Optimum) or the checkpoint is not exportable."""


def _optimum_onnxruntime():
    import transformers

    try:
        import optimum.onnxruntime as ort
        from optimum.exporters.onnx import onnx_export_from_model
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
    except Exception as err:  # ImportError, or a version clash raised while importing
        raise ExportError(
            f"ONNX export needs optimum-onnx with onnxruntime (`pip install hf-sparse[onnx]`), which supports "
            f"transformers 4.57.x; this environment has transformers {transformers.__version__} ({type(err).__name__}: {err}). "
            "On transformers 5.0-5.5, OpenVINO export works (`pip install hf-sparse[openvino-transformers5]`, `--to openvino`)"
        ) from None
    return ort, onnx_export_from_model, ORTQuantizer, AutoQuantizationConfig, AutoCalibrationConfig


def load_for_export(model_dir: PathLike):
    """The SparseBert model of `model_dir` (class from its config's architectures), in eval mode, and its task."""
    import hf_sparse

    from ..models.sparse_bert.configuration_sparse_bert import SparseBertConfig

    model_dir = Path(model_dir)
    try:
        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
        config = SparseBertConfig.from_pretrained(model_dir)
    except (OSError, ValueError, AttributeError) as err:
        raise ExportError(f"{model_dir}: not a sparse_bert checkpoint ({err})") from None
    if model_type != "sparse_bert":
        raise ExportError(
            f"{model_dir}/config.json: model_type {model_type!r} is not a sparse_bert checkpoint; "
            "convert it first with `hf-sparse convert`"
        )
    architecture = (config.architectures or ["SparseBertModel"])[0]
    if architecture not in EXPORT_TASKS:
        raise ExportError(f"{model_dir}/config.json: architecture {architecture!r} has no export; known: {sorted(EXPORT_TASKS)}")
    model = getattr(hf_sparse, architecture).from_pretrained(model_dir).eval()
    return model, EXPORT_TASKS[architecture]


def runtime_config(model) -> dict:
    """The model's config as plain BERT (`model_type` "bert") for runtimes, sparsity metadata kept."""
    config = model.config.to_dict()
    config["model_type"] = "bert"
    config["architectures"] = [type(model).__name__.replace("SparseBert", "Bert")]
    config.pop("auto_map", None)
    return config


def write_runtime_files(model, model_dir: Path, folder: Path, info: dict) -> None:
    """config.json (plain BERT), the tokenizer files and `export_info.json` into an export folder."""
    from .compact import _copy_tokenizer

    (folder / "config.json").write_text(json.dumps(runtime_config(model), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _copy_tokenizer(model_dir, folder)
    (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


_PACKAGES = {
    "onnx": ("optimum-onnx", "onnxruntime", "onnx"),
    "openvino": ("optimum-intel", "openvino", "nncf"),
}


def prepare_export(model_dir: Path, out_dir: Path, quantize: Optional[str], backend: str, fp32_file: str):
    """Checks the arguments, loads the model (fp32, eval), registers `sparse_bert` for `backend`.

    Returns the model, its Optimum task and the start of `export_info.json`.
    """
    from .optimum_support import register_sparse_bert

    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or None, got {quantize!r}")
    if out_dir.exists():
        raise ExportError(f"{out_dir} exists; choose a new folder")
    model, task = load_for_export(model_dir)
    model = model.float()
    register_sparse_bert(backend)
    info = {
        "runtime": "onnxruntime" if backend == "onnx" else backend,
        "source": str(model_dir),
        "source_sha256": source_digest(model_dir),
        "task": task,
        "files": {"fp32": fp32_file},
        "measured_sparsity": model.sparsity(),
        "versions": _versions("hf-sparse", "torch", "transformers", "optimum", *_PACKAGES[backend]),
    }
    return model, task, info


def _publish(staged: Path, out_dir: Path) -> None:
    from .compact import publish_folder

    try:
        publish_folder(staged, out_dir)
    except FileExistsError as err:
        raise ExportError(str(err)) from None


def check_export(model, run, what: str, atol: float = 1e-4) -> float:
    """Compares an export's first output with the PyTorch model's on a probe batch (padding included).

    `run` maps numpy int64 inputs to the runtime's first output. Returns the max abs difference.

    Raises:
        ExportError: the difference exceeds `atol` times max(1, largest |output|).
    """
    import numpy as np
    import torch

    from .compact import _first_output, _probe_inputs

    inputs = _probe_inputs(model.config, type(model).__name__)
    with torch.no_grad():
        expected = _first_output(model(**inputs)).float().numpy()
    got = np.asarray(run({k: v.numpy() for k, v in inputs.items()}))
    if got.shape != expected.shape:
        raise ExportError(f"{what}: output shape {list(got.shape)} differs from PyTorch's {list(expected.shape)}; nothing written")
    diff = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not diff <= atol * scale:
        raise ExportError(f"{what}: outputs differ from PyTorch by {diff:.3g} (largest |output| {scale:.3g}); nothing written")
    return diff


def source_digest(model_dir: PathLike) -> str:
    """SHA-256 over the checkpoint's weights and config: which checkpoint an export was made from."""
    import hashlib

    digest = hashlib.sha256()
    model_dir = Path(model_dir)
    for path in sorted(model_dir.glob("model*.safetensors")) + [model_dir / "config.json"]:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def read_qat_ranges(ranges_path: PathLike) -> dict[str, tuple[float, float]]:
    """The input range of each layer in a `qat_ranges.json` (written by `hf-sparse finetune --qat`).

    Raises:
        ExportError: the file is missing or malformed, a range is not finite or inverted, or a layer
            was not trained with 8-bit weights and inputs.
    """
    ranges_path = Path(ranges_path)
    if not ranges_path.is_file():
        raise ExportError(
            f"{ranges_path} is missing: calibration='qat' needs a checkpoint fine-tuned with `hf-sparse finetune --qat`"
        )
    try:
        ranges = json.loads(ranges_path.read_text(encoding="utf-8"))
        layers = {str(k): (float(v["input_min"]), float(v["input_max"]), int(v["weight_bits"]), int(v["activation_bits"])) for k, v in ranges.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ExportError(f"{ranges_path}: expected {{layer: {{input_min, input_max, weight_bits, activation_bits}}}} ({err!r})") from None
    if not layers:
        raise ExportError(f"{ranges_path} lists no layers")
    for name, (low, high, weight_bits, activation_bits) in layers.items():
        if (weight_bits, activation_bits) != (8, 8):
            raise ExportError(f"{ranges_path}: layer {name!r} was trained with {weight_bits}-bit weights / {activation_bits}-bit inputs; INT8 export needs 8/8")
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ExportError(f"{ranges_path}: layer {name!r} has input range [{low}, {high}]; expected finite input_min <= input_max")
    return {name: (low, high) for name, (low, high, _, _) in layers.items()}


def qat_quantization_plan(onnx_path: PathLike, ranges_path: PathLike):
    """The MatMul nodes of the QAT layers and their input ranges, for ONNX Runtime static INT8.

    Each layer `name` of `qat_ranges.json` (e.g. `bert.encoder.layer.0.attention.self.query`) is the
    ONNX node `/bert/encoder/layer.0/attention/self/query/MatMul` of Optimum's export; its first input
    gets the layer's calibrated range. Layers that share an input (Q, K, V) get the union of their ranges.

    Returns:
        `(node names, TensorsData)` for ONNX Runtime's quantizer.

    Raises:
        ExportError: see `read_qat_ranges`; or a layer has no MatMul node in the exported graph.
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    layers = read_qat_ranges(ranges_path)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    by_layer = {n.name[1:-len("/MatMul")].replace("/", "."): n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("/MatMul")}
    missing = sorted(set(layers) - set(by_layer))
    if missing:
        raise ExportError(
            f"{ranges_path}: layer {missing[0]!r} has no MatMul node in the exported graph (expected nodes like "
            f"{sorted(n.name for n in by_layer.values())[:1]})" + (f"; {len(missing) - 1} more layers are missing" if len(missing) > 1 else "")
        )
    outputs = {o.name for o in graph.output}
    tensors: dict[str, tuple[float, float]] = {}
    for name, (low, high) in layers.items():
        tensor = by_layer[name].input[0]
        if tensor in outputs:
            raise ExportError(f"the input of layer {name!r} ({tensor}) is also a graph output; it cannot be quantized for that layer alone")
        old = tensors.get(tensor, (low, high))
        tensors[tensor] = (min(old[0], low), max(old[1], high))
    data = {t: TensorData(lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32)) for t, (low, high) in tensors.items()}
    return sorted(by_layer[name].name for name in layers), TensorsData(CalibrationMethod.MinMax, data)


def quantize_with_ranges(fp32_path: PathLike, out_path: PathLike, nodes: Sequence[str], ranges) -> None:
    """ONNX Runtime static QDQ INT8 of the MatMul `nodes` only, with given input ranges.

    Weights int8 per-channel symmetric, inputs uint8 asymmetric, outputs left in fp32: the arithmetic
    of QAT's fake quantization (`hf_sparse.transfer.qat`). Optimum's `ORTQuantizer` would also
    quantize each MatMul's output, which QAT did not simulate, so ONNX Runtime's quantizer is used directly.
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    quantizer = QDQQuantizer(
        onnx.load(str(fp32_path)),
        per_channel=True,
        reduce_range=False,
        weight_qType=QuantType.QInt8,
        activation_qType=QuantType.QUInt8,
        tensors_range=ranges,
        nodes_to_quantize=list(nodes),
        nodes_to_exclude=[],
        op_types_to_quantize=["MatMul"],
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "OpTypesToExcludeOutputQuantization": ["MatMul"]},
    )
    quantizer.quantize_model()
    # ONNX Runtime feeds the dequantized tensor to every consumer (e.g. the residual Add after the
    # LayerNorm that feeds Q, K and V); QAT quantized only the linear layers' inputs: rewire the rest
    graph = quantizer.model.model.graph
    producer = {output: node for node in graph.node for output in node.output}
    original = {}
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear":
            original[node.output[0]] = source.input[0]
    quantized = set(nodes)
    for node in graph.node:
        if node.name not in quantized and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            for i, name in enumerate(node.input):
                if name in original:
                    node.input[i] = original[name]
    # ONNX Runtime skips a tensor it cannot type with only a log line: every planned layer must be quantized
    for node in graph.node:
        if node.name in quantized:
            activation, weight = (producer.get(name) for name in node.input[:2])
            if not (
                activation is not None and activation.op_type == "DequantizeLinear" and activation.output[0] in original
                and weight is not None and weight.op_type == "DequantizeLinear" and weight.input[0] not in producer
            ):
                raise ExportError(f"ONNX Runtime did not quantize the input and weight of {node.name}")
    quantizer.model.save_model_to_file(str(out_path))


def needs_reduced_range(flags: Optional[Sequence[str]] = None) -> bool:
    """True on an x86 CPU without VNNI (AVX-512 VNNI, AVX-VNNI or AMX): ONNX Runtime's u8s8 INT8 kernels there
    sum pairs of uint8 x int8 products in int16 (`vpmaddubsw`), which saturates with full-range int8 weights
    (255 * 127 * 2 > 32767); 7-bit weights cannot saturate. `flags`: the CPU's flags (default: this CPU's
    /proc/cpuinfo; a CPU whose flags cannot be read is not treated as x86)."""
    if flags is None:
        from ..cpu import cpu_isa_flags

        flags = cpu_isa_flags()
    flags = set(flags)
    x86 = "avx2" in flags or "sse4_2" in flags
    return x86 and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def export_onnx(
    model_dir: PathLike,
    out_dir: PathLike,
    quantize: Optional[str] = "int8",
    static: bool = False,
    calibration: Union[str, Sequence[str]] = "wikitext",
    num_calibration_samples: int = 128,
    data_dir: Optional[PathLike] = None,
    static_operators: Optional[Sequence[str]] = STATIC_OPERATORS,
    reduce_range: bool = False,
) -> Path:
    """Exports the SparseBert checkpoint at `model_dir` to ONNX in `out_dir` (written atomically).

    Args:
        model_dir: a `sparse_bert` checkpoint folder with its tokenizer.
        out_dir: the output folder; must not exist yet.
        quantize: "int8" (adds `model_quantized.onnx`) or None.
        static: static INT8 (activation ranges calibrated on `calibration` text) instead of dynamic.
        calibration: "wikitext", "squad", a GLUE task name, or a list of your own texts (see `calibration_texts`);
            or "qat": the ranges in `model_dir/qat_ranges.json` from quantization-aware training (see
            `qat_quantization_plan`), quantizing the encoder linear layers only.
        num_calibration_samples: examples used for calibration.
        data_dir: the data folder (default ../shared/data).
        static_operators: the ONNX operator types static INT8 quantizes (default MatMul only); None gives
            Optimum's default list for AVX-512 VNNI (MatMul, Gather, LayerNormalization, Transpose and more).
            Dynamic INT8 always uses Optimum's default.
        reduce_range: quantize weights to 7 bits (ONNX Runtime's `reduce_range`) for x86 CPUs without VNNI, whose
            INT8 kernels can saturate with full-range weights (`needs_reduced_range`). Off by default: on real
            MiniLM (SST-2, an AVX2 CPU) full range matched or beat 7 bits (benchmarks/int8_accuracy.py); turn it on
            when INT8 accuracy drops on such a CPU. Not with `calibration="qat"`, whose ranges QAT simulated in
            full 8 bits. `export_info.json` records it.

    Raises:
        ExportError: Optimum / ONNX Runtime missing or incompatible, not a SparseBert checkpoint,
            unknown quantization, or `out_dir` exists.
    """
    import transformers

    ort, onnx_export_from_model, ORTQuantizer, AutoQuantizationConfig, AutoCalibrationConfig = _optimum_onnxruntime()
    from .optimum_support import as_transformers_library

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    use_qat = isinstance(calibration, str) and calibration == QAT_CALIBRATION
    if use_qat and not (static and quantize == "int8"):
        raise ExportError("calibration='qat' applies to static INT8 (static=True, quantize='int8')")
    if use_qat:
        if reduce_range:
            raise ExportError("reduce_range does not apply to calibration='qat': QAT simulated full 8-bit weights")
        read_qat_ranges(model_dir / QAT_RANGES_FILE)  # fail before the (long) fp32 export
    model, task, info = prepare_export(model_dir, out_dir, quantize, "onnx", "model.onnx")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "onnx"
        with as_transformers_library():
            onnx_export_from_model(model, staged, task=task, do_validation=True)  # Optimum only warns on mismatch
        from .accuracy import onnx_predictor

        info["fp32_max_abs_diff"] = check_export(model, onnx_predictor(staged / "model.onnx"), f"{model_dir} -> model.onnx")
        write_runtime_files(model, model_dir, staged, info)
        if use_qat:  # static INT8, checked above
            nodes, ranges = qat_quantization_plan(staged / "model.onnx", model_dir / QAT_RANGES_FILE)
            quantize_with_ranges(staged / "model.onnx", staged / "model_quantized.onnx", nodes, ranges)
            int8_info = {"calibration": f"{QAT_RANGES_FILE} (quantization-aware training)", "quantized_layers": len(nodes)}
        elif quantize == "int8":
            quantizer = ORTQuantizer.from_pretrained(staged, file_name="model.onnx")
            operators = list(static_operators) if static and static_operators is not None else None
            qconfig = AutoQuantizationConfig.avx512_vnni(is_static=static, per_channel=True, operators_to_quantize=operators)
            qconfig.reduce_range = bool(reduce_range)  # int8 activations uint8, weights int8 (7-bit when reduced)
            ranges, int8_info = None, {"operators": list(qconfig.operators_to_quantize)}
            if static:
                from .calibration import calibration_dataset

                tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
                num_choices = 2 if task == "multiple-choice" else None
                max_length = min(128, model.config.max_position_embeddings)
                dataset = calibration_dataset(
                    tokenizer, calibration, num_calibration_samples, max_length, num_choices=num_choices, data_dir=data_dir
                )
                ranges = quantizer.fit(
                    dataset=dataset,
                    calibration_config=AutoCalibrationConfig.minmax(dataset),
                    operators_to_quantize=qconfig.operators_to_quantize,
                    onnx_augmented_model_name=Path(tmp) / "augmented_model.onnx",
                )
                int8_info["calibration"] = calibration if isinstance(calibration, str) else "user texts"
                int8_info["calibration_samples"] = len(dataset)
            quantizer.quantize(quantization_config=qconfig, save_dir=staged, calibration_tensors_range=ranges)
        if quantize == "int8":
            info["files"]["int8"] = "model_quantized.onnx"
            info["int8"] = {
                "mode": "static" if static else "dynamic",
                "weights": "int8 per-channel symmetric (pruned weights stay 0)"
                + (", 7-bit range (reduce_range: for x86 CPUs without VNNI)" if reduce_range else ""),
                "reduce_range": bool(reduce_range),
                **int8_info,
            }
            (staged / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _publish(staged, out_dir)
    return out_dir
