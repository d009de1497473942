"""OpenVINO (fp32 and NNCF INT8) export of SparseBert models through optimum-intel.

`export_openvino` converts the SparseBert model with optimum-intel's exporter (the PyTorch frontend:
each linear layer becomes `MatMul(x, W, transpose_b=True)` on an [out, in] weight constant) and,
with `quantize="int8"`, quantizes weights and activations with NNCF (`OVQuantizer`, static ranges
calibrated on real text). The folder holds `openvino_model.xml/.bin` (fp32),
`openvino_model_int8.xml/.bin`, the tokenizer, a plain-BERT `config.json` and `export_info.json`.
Load with `optimum.intel.OVModelFor*.from_pretrained(folder[, file_name="openvino_model_int8.xml"])`.

Sparse INT8 weights: the CPU plugin's property `CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE` asks for a
sparse kernel for int8 weights at least that sparse. It is only taken when the int8 weight reaches
the FullyConnected node without a Transpose, and only on CPUs with AMX; otherwise OpenVINO silently
runs the dense kernel. `weight_layout` checks the first condition in the IR, `executed_kernels`
reports what the compiled model actually runs (the runtime graph's `primitiveType`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Union

from .onnx import EXPORT_INFO, QAT_CALIBRATION, ExportError, _publish, check_export, prepare_export, write_runtime_files

PathLike = Union[str, Path]

OV_CLASSES = {
    "feature-extraction": "OVModelForFeatureExtraction",
    "fill-mask": "OVModelForMaskedLM",
    "text-classification": "OVModelForSequenceClassification",
    "question-answering": "OVModelForQuestionAnswering",
    "token-classification": "OVModelForTokenClassification",
    "multiple-choice": "OVModelForMultipleChoice",
}
FP32_FILE, INT8_FILE = "openvino_model.xml", "openvino_model_int8.xml"
SPARSE_RATE_PROPERTY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"


def _optimum_intel():
    import transformers

    try:
        import openvino  # noqa: F401
        from optimum.exporters.openvino import export_from_model
        import optimum.intel as intel
    except Exception as err:
        raise ExportError(
            "OpenVINO export needs optimum-intel with openvino and nncf: optimum-intel 1.27 with transformers 4.57.x "
            "(`pip install hf-sparse[openvino]`) or optimum-intel 2.2 with transformers 5.0-5.5 "
            f"(`pip install hf-sparse[openvino-transformers5]`); this environment has transformers {transformers.__version__} "
            f"({type(err).__name__}: {err})"
        ) from None
    return intel, export_from_model


def export_openvino(
    model_dir: PathLike,
    out_dir: PathLike,
    quantize: Optional[str] = "int8",
    calibration: Union[str, Sequence[str]] = "wikitext",
    num_calibration_samples: int = 128,
    data_dir: Optional[PathLike] = None,
) -> Path:
    """Exports the SparseBert checkpoint at `model_dir` to OpenVINO IR in `out_dir` (written atomically).

    Args:
        model_dir: a `sparse_bert` checkpoint folder with its tokenizer.
        out_dir: the output folder; must not exist yet.
        quantize: "int8" (NNCF static quantization of weights and activations, adds
            `openvino_model_int8.xml`) or None.
        calibration: "wikitext", "squad", a GLUE task name, or a list of your own texts (see `calibration_texts`).
        num_calibration_samples: examples used for calibration.
        data_dir: the data folder (default ../shared/data).

    Raises:
        ExportError: optimum-intel / OpenVINO / NNCF missing or incompatible, not a SparseBert
            checkpoint, unknown quantization, `out_dir` exists, or an int8 weight does not reach
            its MatMul directly (which would silently disable sparse decompression).
    """
    import transformers

    intel, export_from_model = _optimum_intel()
    from .optimum_support import as_transformers_library

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if isinstance(calibration, str) and calibration == QAT_CALIBRATION:
        raise ExportError(
            "calibration='qat' (the QAT input ranges) is supported by the ONNX Runtime export only "
            "(`hf-sparse export --to onnx --quantize int8 --static --calibration qat`); OpenVINO calibrates with NNCF on text"
        )
    model, task, info = prepare_export(model_dir, out_dir, quantize, "openvino", FP32_FILE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "openvino"
        with as_transformers_library():
            export_from_model(model, staged, task=task)
        from .accuracy import openvino_predictor

        info["fp32_max_abs_diff"] = check_export(model, openvino_predictor(staged / FP32_FILE), f"{model_dir} -> {FP32_FILE}")
        write_runtime_files(model, model_dir, staged, info)
        if quantize == "int8":
            from .calibration import calibration_dataset

            tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
            num_choices = 2 if task == "multiple-choice" else None
            max_length = min(128, model.config.max_position_embeddings)
            dataset = calibration_dataset(
                tokenizer, calibration, num_calibration_samples, max_length, num_choices=num_choices, data_dir=data_dir
            )
            ov_model = getattr(intel, OV_CLASSES[task]).from_pretrained(staged, compile=False)
            quantized = Path(tmp) / "int8"
            intel.OVQuantizer.from_pretrained(ov_model).quantize(
                calibration_dataset=dataset,
                ov_config=intel.OVConfig(quantization_config=intel.OVQuantizationConfig(num_samples=len(dataset))),
                save_directory=quantized,
            )
            for suffix in (".xml", ".bin"):
                shutil.move(str(quantized / ("openvino_model" + suffix)), str(staged / ("openvino_model_int8" + suffix)))
            layout = weight_layout(staged / INT8_FILE)
            if layout["behind_transpose"]:
                raise ExportError(
                    f"{model_dir} -> {INT8_FILE}: {layout['behind_transpose']} int8 weights do not reach their MatMul as a "
                    f"direct [out, in] constant with transpose_b (e.g. {', '.join(layout['indirect'][:3])}); OpenVINO would "
                    "silently skip sparse decompression for them; nothing written"
                )
            info["files"]["int8"] = INT8_FILE
            info["int8"] = {
                "mode": "static (NNCF)",
                "calibration": calibration if isinstance(calibration, str) else "user texts",
                "calibration_samples": len(dataset),
                "int8_matmul_weights": layout["int8_weights"],
                "weights_behind_transpose": layout["behind_transpose"],
            }
            (staged / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _publish(staged, out_dir)
    return out_dir


def _weight_source(output):
    """Walks from a MatMul weight input up through Convert / Subtract / Multiply / Transpose / Reshape.

    Returns (ops on the way, the first other node) — a weight is a Constant at the top.
    """
    passed = []
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Transpose", "Reshape", "FakeQuantize"):
        passed.append(node.get_type_name())
        node = node.input_value(0).get_node()
    return passed, node


def weight_layout(xml: PathLike) -> dict:
    """Counts the MatMuls of an IR whose weight is an int8 constant, and those with a Transpose on the way.

    A weight is "direct" when it is an [out, in] int8 Constant (through Convert / Subtract /
    Multiply only) feeding `MatMul(..., transpose_b=True)`.
    """
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    int8 = behind = 0
    indirect = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        passed, top = _weight_source(node.input_value(1))
        if top.get_type_name() != "Constant" or top.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
            continue
        int8 += 1
        if "Transpose" in passed or not node.get_attributes().get("transpose_b", False):
            behind += 1
            indirect.append(node.get_friendly_name())
    return {"int8_weights": int8, "behind_transpose": behind, "indirect": indirect}


def compile_model(
    xml: PathLike,
    precision: str = "f32",
    sparse_rate: Optional[float] = None,
    threads: Optional[int] = None,
    static_shape: Optional[Sequence[int]] = None,
):
    """Compiles an IR for the CPU with an explicit inference precision and optional sparse decompression.

    `static_shape`, e.g. `(1, 128)`: every input is fixed to that shape before compiling (as
    `OVModel.reshape(batch, seq)` does in optimum-intel). The CPU plugin then plans memory and picks kernels once
    instead of at each call, which is faster for small models; the compiled model only accepts that shape.
    """
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision}
    if sparse_rate is not None:
        config[SPARSE_RATE_PROPERTY] = float(sparse_rate)
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    if static_shape is None:
        return core.compile_model(str(xml), "CPU", config)
    model = core.read_model(str(xml))
    shape = [int(d) for d in static_shape]
    for port in model.inputs:
        rank = port.get_partial_shape().rank
        if rank.is_static and rank.get_length() != len(shape):
            raise ExportError(
                f"{xml}: input {port.get_any_name()!r} has rank {rank.get_length()}, the static shape {tuple(shape)} has "
                f"{len(shape)} dimensions"
            )
    model.reshape({port.get_any_name(): ov.PartialShape(shape) for port in model.inputs})
    return core.compile_model(model, "CPU", config)


def cpu_runs_bf16() -> bool:
    """Whether OpenVINO's CPU plugin lists native bf16 among this CPU's capabilities (AVX512_BF16, AMX): where it does
    not, `compile_model(..., precision="bf16")` runs f32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def executed_precisions(compiled) -> dict[str, int]:
    """Counts the executed layers of a compiled model by the precision the CPU plugin chose (`runtimePrecision`:
    "f32", "bf16", "u8", "i8"...), constants, inputs and outputs left out. With `INFERENCE_PRECISION_HINT` "bf16" the
    floating-point layers (LayerNorm, softmax, GELU...) show as "bf16" only where the CPU has native bf16; the hint
    alone does not say whether it was honoured."""
    kinds = Counter()
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if "runtimePrecision" in info and info["layerType"].astype(str) not in ("Const", "Input", "Output"):
            kinds[info["runtimePrecision"].astype(str)] += 1
    return dict(kinds)


def executed_kernels(compiled, inputs: dict) -> dict[str, int]:
    """Runs `inputs` once and counts the FullyConnected kernels the CPU plugin executed (by `primitiveType`).

    With dynamic shapes the kernels are chosen at the first inference, hence the run.
    """
    compiled.create_infer_request().infer(inputs)
    kinds = Counter()
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "FullyConnected":
            kinds[info["primitiveType"].astype(str)] += 1
    return dict(kinds)
