"""ONNX export by the plain-BERT route (Optimum + ONNX Runtime INT8); a clear error where Optimum cannot run."""

import numpy as np
import pytest
import torch

from conftest import build, dummy_inputs
from hf_sparse.deploy.onnx import ExportError, _optimum_onnxruntime, export_onnx

try:
    _optimum_onnxruntime()
    HAVE_OPTIMUM = True
except ExportError:
    HAVE_OPTIMUM = False


@pytest.mark.skipif(not HAVE_OPTIMUM, reason="needs optimum-onnx (default environment); its error is tested below")
@pytest.mark.parametrize("head", ["SparseBertForSequenceClassification", "SparseBertForQuestionAnswering"])
def test_onnx_fp32_and_int8_match_pytorch(tmp_path, tiny_tokenizer, head):
    import onnxruntime

    model = build(head, sparsity=0.9)
    with torch.no_grad():  # outputs of a tiny random model are ~0.02: scale the head so tolerances mean something
        output_layer = model.classifier if hasattr(model, "classifier") else model.qa_outputs
        output_layer.weight.mul_(100.0)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    out = export_onnx(tmp_path / "m", tmp_path / "onnx")
    inputs = dummy_inputs(head)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        expected = model(**inputs)
    expected = expected.logits if hasattr(expected, "logits") else expected.start_logits
    feeds = {k: v.numpy() for k, v in inputs.items()}
    scale = float(expected.abs().max())
    assert scale > 0.2
    for file, tolerance in (("model.onnx", 1e-4), ("model_quantized.onnx", 0.1)):
        session = onnxruntime.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        got = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        np.testing.assert_allclose(got, expected.numpy(), atol=tolerance * scale if "quantized" in file else tolerance, err_msg=file)
    # the pruned weights are exact zeros in the INT8 initializers too (symmetric quantization, zero point 0)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(out / "model_quantized.onnx")).graph
    int8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    sparse = [w for w in int8 if (w == 0).mean() >= 0.85]
    assert len(sparse) >= 2 * 6, f"{len(sparse)} of {len(int8)} int8 weight matrices keep the 90% zeros"
    with pytest.raises(ExportError, match="exists"):
        export_onnx(tmp_path / "m", tmp_path / "onnx")


@pytest.mark.skipif(HAVE_OPTIMUM, reason="tests the message where optimum-onnx cannot run (the transformers 5 environment)")
def test_export_fails_clearly_without_optimum(tmp_path):
    import transformers

    with pytest.raises(ExportError, match=f"transformers {transformers.__version__}"):
        export_onnx(tmp_path / "m", tmp_path / "onnx")
