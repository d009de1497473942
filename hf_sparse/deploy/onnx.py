"""ONNX (fp32 and INT8) export through Optimum, by the plain-BERT route.

`export_onnx` turns a SparseBert checkpoint into the plain `BertFor*` model it equals
(`to_dense()`: zeros in the weights, no masks), exports it with Optimum's ONNX exporter and, with
`quantize="int8"`, quantizes it with ONNX Runtime (dynamic, per-channel symmetric int8 weights, so
pruned weights stay exactly zero). The folder then holds `model.onnx`, `model_quantized.onnx`, the
config and the tokenizer, loadable with `optimum.onnxruntime.ORTModelFor*`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

_ORT_CLASSES = {
    "SparseBertModel": "ORTModelForFeatureExtraction",
    "SparseBertForMaskedLM": "ORTModelForMaskedLM",
    "SparseBertForSequenceClassification": "ORTModelForSequenceClassification",
    "SparseBertForQuestionAnswering": "ORTModelForQuestionAnswering",
    "SparseBertForTokenClassification": "ORTModelForTokenClassification",
    "SparseBertForMultipleChoice": "ORTModelForMultipleChoice",
}


class ExportError(RuntimeError):
    """The export cannot run here (missing or incompatible Optimum) or the checkpoint is not exportable."""


def _optimum_onnxruntime():
    import transformers

    try:
        import optimum.onnxruntime as ort
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except Exception as err:  # ImportError, or a version clash raised while importing
        raise ExportError(
            f"ONNX export needs optimum-onnx with onnxruntime (`pip install hf-sparse[onnx]`), which supports "
            f"transformers 4.57.x; this environment has transformers {transformers.__version__} ({type(err).__name__}: {err})"
        ) from None
    return ort, ORTQuantizer, AutoQuantizationConfig


def export_onnx(model_dir: str | Path, out_dir: str | Path, quantize: Optional[str] = "int8") -> Path:
    """Exports the SparseBert checkpoint at `model_dir` to ONNX in `out_dir` (written atomically).

    Args:
        model_dir: a `sparse_bert` checkpoint folder with its tokenizer.
        out_dir: the output folder; must not exist yet.
        quantize: "int8" (dynamic ONNX Runtime quantization, adds `model_quantized.onnx`) or None.

    Raises:
        ExportError: Optimum / ONNX Runtime missing or incompatible, unknown head, or `out_dir` exists.
    """
    import transformers

    from ..models.sparse_bert.configuration_sparse_bert import SparseBertConfig

    ort, ORTQuantizer, AutoQuantizationConfig = _optimum_onnxruntime()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or None, got {quantize!r}")
    if out_dir.exists():
        raise ExportError(f"{out_dir} exists; choose a new folder")
    config = SparseBertConfig.from_pretrained(model_dir)
    architecture = (config.architectures or ["SparseBertModel"])[0]
    if architecture not in _ORT_CLASSES:
        raise ExportError(f"{model_dir}: architecture {architecture!r} has no ONNX export; known: {sorted(_ORT_CLASSES)}")
    import hf_sparse

    sparse = getattr(hf_sparse, architecture).from_pretrained(model_dir).eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".hf-sparse-onnx-", dir=out_dir.parent) as tmp:
        plain = Path(tmp) / "plain"
        sparse.to_dense().save_pretrained(plain)
        transformers.AutoTokenizer.from_pretrained(model_dir).save_pretrained(plain)
        staged = Path(tmp) / "onnx"
        ort_model = getattr(ort, _ORT_CLASSES[architecture]).from_pretrained(plain, export=True)
        ort_model.save_pretrained(staged)
        transformers.AutoTokenizer.from_pretrained(model_dir).save_pretrained(staged)
        if quantize == "int8":
            quantizer = ORTQuantizer.from_pretrained(staged, file_name="model.onnx")
            quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True), save_dir=staged)
        shutil.move(str(staged), str(out_dir))
    return out_dir
