"""ONNX Runtime and OpenVINO exports (fp32 and INT8) of every SparseBert head, compacted models included."""

import json

import numpy as np
import pytest
import torch

from conftest import HEAD_NAMES as HEADS, build, dummy_inputs, have_onnx_exporter, have_openvino_exporter, output_tensor
from hf_sparse.deploy.onnx import ExportError, export_onnx

HAVE_ONNX, HAVE_OPENVINO = have_onnx_exporter(), have_openvino_exporter()

needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX, reason="needs optimum-onnx (transformers 4.57: the default environment); its error is tested below"
)
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO,
    reason="needs optimum-intel (the default or the transformers5-openvino environment); its error is tested below",
)
needs_exporters = pytest.mark.skipif(
    not (HAVE_ONNX and HAVE_OPENVINO), reason="needs optimum-onnx and optimum-intel (the default environment)"
)
BACKENDS = [pytest.param("onnx", marks=needs_onnx), pytest.param("openvino", marks=needs_openvino)]


def _save(model, folder, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _feeds(head):
    inputs = dummy_inputs(head)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    return inputs


def _scaled(head, sparsity=0.9):
    """A tiny random model whose outputs are O(1), so INT8 tolerances mean something."""
    model = build(head, sparsity=sparsity)
    with torch.no_grad():
        layer = model.classifier if hasattr(model, "classifier") else model.qa_outputs
        layer.weight.mul_(100.0)
    return model


def _tiny_texts(n=32, seed=0):
    """Calibration texts in the tiny tokenizer's vocabulary (real text would be all [UNK] there)."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, 94, size=rng.integers(3, 6))) for _ in range(n)]


def _ort(path, feeds):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in feeds.items() if k in names})[0]


def _ov(path, feeds):
    from hf_sparse.deploy.openvino import compile_model

    compiled = compile_model(path, precision="f32")
    return compiled({k: v.numpy() for k, v in feeds.items()})[0]


def _export_fp32(backend, folder, out):
    """Exports `folder` without quantization; returns the fp32 model file and a runner for it."""
    if backend == "onnx":
        return export_onnx(folder, out, quantize=None) / "model.onnx", _ort
    from hf_sparse.deploy.openvino import export_openvino

    return export_openvino(folder, out, quantize=None) / "openvino_model.xml", _ov


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_exports_agree_with_pytorch_for_every_head(tmp_path, tiny_tokenizer, head, backend):
    model = build(head, sparsity=0.9)
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    path, run = _export_fp32(backend, folder, tmp_path / backend)
    feeds = _feeds(head)
    with torch.no_grad():
        expected = output_tensor(model(**feeds)).numpy()
    np.testing.assert_allclose(run(path, feeds), expected, atol=1e-5, err_msg=backend)
    # the folder loads without hf-sparse's model type: config.json is plain BERT
    config = json.loads((path.parent / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == [head.replace("SparseBert", "Bert")]
    assert (path.parent / "tokenizer.json").is_file()
    info = json.loads((path.parent / "export_info.json").read_text())
    assert info["task"] and abs(info["measured_sparsity"] - 0.9) < 0.01
    assert info["versions"]["transformers"] and info["versions"]["optimum-onnx" if backend == "onnx" else "optimum-intel"]


@needs_onnx
def test_optimum_onnxruntime_class_loads_the_export(tmp_path, tiny_tokenizer):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = _scaled("SparseBertForSequenceClassification")
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    export_onnx(folder, tmp_path / "onnx")
    feeds = _feeds("SparseBertForSequenceClassification")
    with torch.no_grad():
        expected = model(**feeds).logits
    ort = ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx", file_name="model_quantized.onnx")
    scale = float(expected.abs().max())
    assert scale > 0.2
    torch.testing.assert_close(torch.as_tensor(ort(**feeds).logits), expected, atol=0.1 * scale, rtol=0)


@needs_openvino
def test_optimum_intel_classes_load_the_export(tmp_path, tiny_tokenizer):
    from optimum.intel import OVModelForSequenceClassification

    from hf_sparse.deploy.openvino import export_openvino

    model = _scaled("SparseBertForSequenceClassification")
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    export_openvino(folder, tmp_path / "ov", calibration=_tiny_texts())
    feeds = _feeds("SparseBertForSequenceClassification")
    with torch.no_grad():
        expected = model(**feeds).logits
    fp32 = OVModelForSequenceClassification.from_pretrained(tmp_path / "ov", ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    torch.testing.assert_close(torch.as_tensor(fp32(**feeds).logits), expected, atol=1e-5, rtol=0)
    ov = OVModelForSequenceClassification.from_pretrained(tmp_path / "ov", file_name="openvino_model_int8.xml")
    # NNCF also quantizes activations (LayerNorm outputs, attention matmuls) per tensor, which a tiny random
    # model does not survive; its accuracy is checked on real MiniLM (test_real_deploy.py) instead
    got = torch.as_tensor(ov(**feeds).logits)
    assert got.shape == expected.shape and torch.isfinite(got).all()


def _quantized_op_types(path) -> set:
    """The op types whose weights are stored in int8 in a QDQ ONNX model: what static INT8 quantized."""
    import onnx

    graph = onnx.load(str(path)).graph
    stored = {t.name for t in graph.initializer}
    dequantized = {o for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in stored for o in node.output}
    return {node.op_type for node in graph.node if dequantized & set(node.input)}


@needs_onnx
@pytest.mark.parametrize("head", ["SparseBertForSequenceClassification", "SparseBertForQuestionAnswering"])
def test_onnx_int8_exports_keep_zeros_and_match(tmp_path, tiny_tokenizer, head):
    import onnx
    from onnx import numpy_helper

    from hf_sparse.deploy.onnx import needs_reduced_range

    model = _scaled(head)
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    # the classifier scaled x100 makes ONNX Runtime's u8s8 kernels saturate on x86 without VNNI: 7-bit weights there
    reduced = needs_reduced_range()
    dynamic = export_onnx(folder, tmp_path / "dyn", reduce_range=reduced)
    static = export_onnx(folder, tmp_path / "static", static=True, calibration=_tiny_texts(), reduce_range=reduced)
    feeds = _feeds(head)
    with torch.no_grad():
        expected = output_tensor(model(**feeds)).numpy()
    scale = float(np.abs(expected).max())
    assert scale > 0.2
    np.testing.assert_allclose(_ort(dynamic / "model_quantized.onnx", feeds), expected, atol=0.15 * scale)
    # static INT8 fixes activation ranges from calibration text, which a tiny random model's outputs do not
    # stay within; static ORT accuracy is checked on real MiniLM and SST-2 (test_real_deploy.py)
    got = _ort(static / "model_quantized.onnx", feeds)
    assert got.shape == expected.shape and np.isfinite(got).all()
    info = json.loads((static / "export_info.json").read_text())
    assert info["int8"] == {
        "mode": "static", "weights": "int8 per-channel symmetric (pruned weights stay 0)"
        + (", 7-bit range (reduce_range: for x86 CPUs without VNNI)" if reduced else ""), "reduce_range": reduced,
        "operators": ["MatMul"], "calibration": "user texts", "calibration_samples": 32,
    }
    # static INT8 quantizes the MatMuls only: every int8 weight feeds a MatMul (the encoder linears);
    # Optimum's full list (static_operators=None) also quantizes e.g. the embeddings (Gather)
    assert _quantized_op_types(static / "model_quantized.onnx") == {"MatMul"}
    everything = export_onnx(folder, tmp_path / "static-all", static=True, calibration=_tiny_texts(), static_operators=None)
    assert {"MatMul", "Gather"} < _quantized_op_types(everything / "model_quantized.onnx")
    # pruned weights are exact zeros in the INT8 ONNX initializers (symmetric quantization, zero point 0)
    for folder in (dynamic, static):
        graph = onnx.load(str(folder / "model_quantized.onnx")).graph
        int8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert sum((w == 0).mean() >= 0.85 for w in int8) >= 2 * 6, folder
        assert max(int(np.abs(w.astype(np.int16)).max()) for w in int8) == (64 if reduced else 127), folder


@needs_openvino
@pytest.mark.parametrize("head", ["SparseBertForSequenceClassification", "SparseBertForQuestionAnswering"])
def test_openvino_int8_weights_feed_their_matmuls_directly(tmp_path, tiny_tokenizer, head):
    from hf_sparse.deploy.openvino import compile_model, executed_kernels, export_openvino, weight_layout

    model = _scaled(head)
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    ov_dir = export_openvino(folder, tmp_path / "ov", calibration=_tiny_texts())
    feeds = _feeds(head)
    with torch.no_grad():
        expected = output_tensor(model(**feeds)).numpy()
    # NNCF's static ranges come from calibration text, which a tiny random model's outputs do not stay within;
    # its accuracy is checked on real MiniLM and SST-2 (test_real_deploy.py)
    got = _ov(ov_dir / "openvino_model_int8.xml", feeds)
    assert got.shape == expected.shape and np.isfinite(got).all()
    info = json.loads((ov_dir / "export_info.json").read_text())
    assert info["int8"]["mode"] == "static (NNCF)" and info["int8"]["calibration_samples"] == 32
    # every encoder weight is an int8 constant feeding MatMul(transpose_b) directly, no Transpose
    layout = weight_layout(ov_dir / "openvino_model_int8.xml")
    assert layout["int8_weights"] >= 2 * 6 and layout["behind_transpose"] == 0
    kernels = executed_kernels(compile_model(ov_dir / "openvino_model_int8.xml", sparse_rate=0.5), {k: v.numpy() for k, v in feeds.items()})
    assert sum(kernels.values()) >= 2 * 6 and all(k.lower().endswith("i8") for k in kernels), kernels


@needs_openvino
def test_openvino_static_shape_compiles_one_shape_and_scores_like_the_dynamic_ir(tmp_path, tiny_tokenizer):
    from hf_sparse.deploy.accuracy import openvino_predictor
    from hf_sparse.deploy.openvino import compile_model, export_openvino

    head = "SparseBertForSequenceClassification"
    model = _scaled(head)
    xml = export_openvino(_save(model, tmp_path / "m", tiny_tokenizer), tmp_path / "ov", quantize=None) / "openvino_model.xml"
    compiled = compile_model(xml, static_shape=(2, 16))
    assert {tuple(port.get_shape()) for port in compiled.inputs} == {(2, 16)}
    # three sentences (one padded inside the batch), padded to 16 and run two at a time: the last pair is filled up
    feeds = {k: v.numpy() for k, v in _feeds(head).items()}
    feeds = {k: np.concatenate([v, v[:1]]) for k, v in feeds.items()}
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got = openvino_predictor(xml, static_shape=(2, 16))(feeds)
    assert got.shape == expected.shape == (3, model.config.num_labels)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got, openvino_predictor(xml)(feeds), atol=1e-5)
    long = {k: np.zeros((1, 17), dtype=np.int64) for k in feeds}
    with pytest.raises(ValueError, match="compiled for sequences of 16 tokens, got inputs of 17 tokens"):
        openvino_predictor(xml, static_shape=(1, 16))(long)
    with pytest.raises(ExportError, match="has rank 2, the static shape \\(16,\\) has 1 dimensions"):
        compile_model(xml, static_shape=(16,))


@needs_openvino
def test_openvino_bf16_precision_runs_the_float_layers_in_bf16_only_where_the_cpu_has_it(tmp_path, tiny_tokenizer):
    from hf_sparse.deploy.accuracy import openvino_predictor
    from hf_sparse.deploy.openvino import compile_model, cpu_runs_bf16, executed_precisions, export_openvino

    head = "SparseBertForSequenceClassification"
    model = _scaled(head)
    xml = export_openvino(_save(model, tmp_path / "m", tiny_tokenizer), tmp_path / "ov", quantize=None) / "openvino_model.xml"
    feeds = {k: v.numpy() for k, v in _feeds(head).items()}
    f32, bf16 = compile_model(xml, static_shape=(2, 16)), compile_model(xml, precision="bf16", static_shape=(2, 16))
    padded = {k: np.pad(v, ((0, 0), (0, 16 - v.shape[1]))) for k, v in feeds.items()}
    for compiled in (f32, bf16):
        compiled(padded)
    f32_counts, bf16_counts = executed_precisions(f32), executed_precisions(bf16)
    assert f32_counts.get("f32", 0) >= 2 * 6 and "bf16" not in f32_counts, f32_counts
    if cpu_runs_bf16():  # native bf16: the hint is honoured
        assert bf16_counts.get("bf16", 0) >= 2 * 6, bf16_counts
    else:  # otherwise the CPU plugin keeps f32, which the counts must show
        assert bf16_counts == f32_counts, bf16_counts
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got = openvino_predictor(xml, precision="bf16", static_shape=(2, 16))(feeds)
    assert got.shape == expected.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=0.1, rtol=0.05)  # bf16 keeps 8 bits of mantissa


@needs_exporters
@pytest.mark.parametrize("head", ["SparseBertModel", "SparseBertForSequenceClassification"])
def test_qat_ranges_export_runs_what_qat_simulated(tmp_path, tiny_tokenizer, head):
    """Static INT8 from the QAT ranges: ONNX Runtime computes what fake quantization simulated."""
    import onnx
    import onnxruntime

    from hf_sparse.deploy.onnx import needs_reduced_range
    from hf_sparse.deploy.openvino import export_openvino
    from hf_sparse.transfer.qat import QAT_RANGES_FILE, convert_qat, prepare_qat

    model = prepare_qat(build(head, sparsity=0.8))
    feeds = _feeds(head)
    model.train()
    with torch.no_grad():  # the observers calibrate on the data they will see
        for _ in range(3):
            model(**feeds)
    model.eval()
    with torch.no_grad():
        simulated = output_tensor(model(**feeds)).numpy()
    ranges = convert_qat(model)
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    (folder / QAT_RANGES_FILE).write_text(json.dumps(ranges))

    out = export_onnx(folder, tmp_path / "qat", static=True, calibration="qat")
    # ONNX Runtime fuses the Q/DQ pairs into integer kernels, and their result is what QAT simulated
    optimized = tmp_path / "optimized.onnx"
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    session = onnxruntime.InferenceSession(str(out / "model_quantized.onnx"), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})[0]
    kernels = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert kernels & {"MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul"}, kernels
    dynamic = _ort(export_onnx(folder, tmp_path / "dyn") / "model_quantized.onnx", feeds)
    qat_error, dynamic_error = float(np.abs(got - simulated).max()), float(np.abs(dynamic - simulated).max())
    if needs_reduced_range():
        # x86 without VNNI: ONNX Runtime's u8s8 kernels sum products pairwise in int16, so they do not reproduce the
        # simulation exactly (seen on an AVX2 CPU: 1.2e-3 at an output scale of 3.1); still far closer than other ranges
        assert qat_error <= 1e-3 * float(np.abs(simulated).max()), qat_error
        assert dynamic_error > 10 * qat_error
    else:
        assert qat_error <= 1e-4, qat_error
        assert dynamic_error > 100 * qat_error  # other ranges: visibly different
    # exactly the encoder linear layers are quantized; attention score MatMuls stay fp32
    graph = onnx.load(str(out / "model_quantized.onnx")).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    quantized = sorted(
        n.name for n in graph.node
        if n.op_type == "MatMul" and all(produced_by.get(i) is not None and produced_by[i].op_type == "DequantizeLinear" for i in n.input)
    )
    assert quantized == sorted("/" + name.replace(".", "/").replace("layer/", "layer.") + "/MatMul" for name in ranges)
    info = json.loads((out / "export_info.json").read_text())
    assert info["int8"]["calibration"].startswith(QAT_RANGES_FILE) and info["int8"]["quantized_layers"] == len(ranges)

    # bad input: no ranges file, a layer the graph lacks, 4-bit training, other modes and backends
    plain = _save(build(head), tmp_path / "plain", tiny_tokenizer)
    with pytest.raises(ExportError, match=f"{QAT_RANGES_FILE} is missing"):
        export_onnx(plain, tmp_path / "a", static=True, calibration="qat")
    with pytest.raises(ExportError, match="applies to static INT8"):
        export_onnx(folder, tmp_path / "b", calibration="qat")
    with pytest.raises(ExportError, match="ONNX Runtime export only"):
        export_openvino(folder, tmp_path / "c", calibration="qat")
    bad = dict(ranges)
    bad["bert.encoder.layer.9.output.dense"] = next(iter(ranges.values()))
    (folder / QAT_RANGES_FILE).write_text(json.dumps(bad))
    with pytest.raises(ExportError, match="'bert.encoder.layer.9.output.dense' has no MatMul node"):
        export_onnx(folder, tmp_path / "d", static=True, calibration="qat")
    four_bit = {k: {**v, "weight_bits": 4} for k, v in ranges.items()}
    (folder / QAT_RANGES_FILE).write_text(json.dumps(four_bit))
    with pytest.raises(ExportError, match="INT8 export needs 8/8"):
        export_onnx(folder, tmp_path / "e", static=True, calibration="qat")
    not_finite = {k: {**v, "input_max": float("nan")} for k, v in ranges.items()}
    (folder / QAT_RANGES_FILE).write_text(json.dumps(not_finite))
    with pytest.raises(ExportError, match="expected finite input_min <= input_max"):
        export_onnx(folder, tmp_path / "f", static=True, calibration="qat")
    assert not any((tmp_path / x).exists() for x in "abcdef")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compacted_model_exports(tmp_path, tiny_tokenizer, backend):
    from hf_sparse.deploy.compact import compact
    from hf_sparse.pruning.structured import StructuredPruning
    import hf_sparse

    model = build("SparseBertForSequenceClassification", sparsity=0.0)
    model.set_masks(StructuredPruning(scope="global").masks(model, 0.5))
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    compact(folder, tmp_path / "c")
    compacted = hf_sparse.SparseBertForSequenceClassification.from_pretrained(tmp_path / "c")
    assert compacted.config.is_compacted
    path, run = _export_fp32(backend, tmp_path / "c", tmp_path / backend)
    feeds = _feeds("SparseBertForSequenceClassification")
    with torch.no_grad():
        expected = model(**feeds).logits.numpy()
    np.testing.assert_allclose(run(path, feeds), expected, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_pooled_head_exports_and_compacts(tmp_path, tiny_tokenizer, backend):
    from hf_sparse.deploy.compact import compact
    from hf_sparse.pruning.structured import StructuredPruning
    import hf_sparse

    model = build("SparseBertForSequenceClassification", sparsity=0.0, classifier_pooling="mean")
    model.set_masks(StructuredPruning(scope="global").masks(model, 0.5))
    folder = _save(model, tmp_path / "m", tiny_tokenizer)
    feeds = _feeds("SparseBertForSequenceClassification")  # with 2 padded positions: mean over the other 5
    with torch.no_grad():
        expected = model(**feeds).logits.numpy()
        model.config.classifier_pooling = "cls"
        assert not np.allclose(model(**feeds).logits.numpy(), expected, atol=1e-3)  # the two heads differ here
    compact(folder, tmp_path / "c")
    compacted = hf_sparse.SparseBertForSequenceClassification.from_pretrained(tmp_path / "c").eval()
    assert compacted.config.is_compacted and compacted.config.classifier_pooling == "mean"
    with torch.no_grad():
        np.testing.assert_allclose(compacted(**feeds).logits.numpy(), expected, atol=1e-5)
    for source in (folder, tmp_path / "c"):
        path, run = _export_fp32(backend, source, tmp_path / f"{backend}-{source.name}")
        np.testing.assert_allclose(run(path, feeds), expected, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_refuses_bad_input(tmp_path, tiny_tokenizer, backend):
    from hf_sparse.deploy.openvino import export_openvino

    export = export_onnx if backend == "onnx" else export_openvino
    folder = _save(build("SparseBertForSequenceClassification"), tmp_path / "m", tiny_tokenizer)
    export(folder, tmp_path / "out", quantize=None)
    with pytest.raises(ExportError, match="exists"):
        export(folder, tmp_path / "out")
    with pytest.raises(ExportError, match="quantize must be"):
        export(folder, tmp_path / "x", quantize="int4")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportError, match="not a sparse_bert checkpoint"):
        export(tmp_path / "plain", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_calibration_texts_come_from_real_data():
    from hf_sparse.deploy.calibration import calibration_texts

    with pytest.raises(ValueError, match="unknown calibration source"):
        calibration_texts("imagenet", 4)
    texts = calibration_texts("sst2", 4)  # real data: four SST-2 training sentences, no pair
    assert len(texts) == 4 and all(isinstance(a, str) and a and b is None for a, b in texts)
    pairs = calibration_texts("mrpc", 3)
    assert all(a and b for a, b in pairs)


@pytest.mark.parametrize(
    "flags, reduced",
    [
        (["sse4_2", "avx2", "fma"], True),  # x86 without VNNI: u8s8 kernels can saturate
        (["sse4_2", "avx2", "avx512f", "avx512bw"], True),
        (["sse4_2", "avx2", "avx512f", "avx512_vnni"], False),
        (["sse4_2", "avx2", "avx_vnni"], False),
        (["sse4_2", "avx2", "avx512f", "amx_int8"], False),
        (["fp", "asimd", "asimddp"], False),  # Arm
        ([], False),  # unknown CPU: not treated as x86
    ],
)
def test_reduced_range_is_for_x86_without_vnni(flags, reduced):
    from hf_sparse.deploy.onnx import needs_reduced_range

    assert needs_reduced_range(flags) is reduced


@needs_onnx
def test_reduce_range_can_be_forced_either_way(tmp_path, tiny_tokenizer):
    import onnx
    from onnx import numpy_helper

    folder = _save(_scaled("SparseBertForSequenceClassification"), tmp_path / "m", tiny_tokenizer)
    for reduce_range, largest in ((False, 127), (True, 64)):
        out = export_onnx(folder, tmp_path / f"onnx-{reduce_range}", reduce_range=reduce_range)
        assert json.loads((out / "export_info.json").read_text())["int8"]["reduce_range"] is reduce_range
        graph = onnx.load(str(out / "model_quantized.onnx")).graph
        int8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert int8 and max(int(np.abs(w.astype(np.int16)).max()) for w in int8) == largest
    (folder / "qat_ranges.json").write_text("{}")
    with pytest.raises(ExportError, match="reduce_range does not apply to calibration='qat'"):
        export_onnx(folder, tmp_path / "qat", static=True, calibration="qat", reduce_range=True)
    assert not (tmp_path / "qat").exists()


@pytest.mark.skipif(HAVE_ONNX, reason="tests the message where optimum-onnx cannot run (the transformers 5 environments)")
def test_onnx_export_fails_clearly_without_optimum_onnx(tmp_path):
    import transformers

    with pytest.raises(ExportError, match=f"optimum-onnx.*transformers {transformers.__version__}.*openvino-transformers5"):
        export_onnx(tmp_path / "m", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.skipif(HAVE_OPENVINO, reason="tests the message where optimum-intel cannot run (the transformers5 environment)")
def test_openvino_export_fails_clearly_without_optimum_intel(tmp_path):
    import transformers

    from hf_sparse.deploy.openvino import export_openvino

    with pytest.raises(ExportError, match=f"optimum-intel.*openvino-transformers5.*transformers {transformers.__version__}"):
        export_openvino(tmp_path / "m", tmp_path / "ov")
    assert not (tmp_path / "ov").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_export_leaves_nothing_and_restores_optimum(tmp_path, tiny_tokenizer, monkeypatch, backend):
    from optimum.exporters.tasks import TasksManager

    from hf_sparse.deploy.onnx import check_export
    from hf_sparse.deploy.openvino import export_openvino
    from hf_sparse.deploy.optimum_support import as_transformers_library

    model = build("SparseBertForSequenceClassification", sparsity=0.9)
    folder = _save(model, tmp_path / "m", tiny_tokenizer)

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer crashed")

    if backend == "onnx":
        from optimum.onnxruntime import ORTQuantizer as quantizer
    else:
        from optimum.intel import OVQuantizer as quantizer
    monkeypatch.setattr(quantizer, "quantize", broken)
    with pytest.raises(RuntimeError, match="quantizer crashed"):  # after the fp32 export was staged
        if backend == "onnx":
            export_onnx(folder, tmp_path / "out")
        else:
            export_openvino(folder, tmp_path / "out", calibration=_tiny_texts())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "vocab.txt"]  # no out/, no .out.tmp-* left
    # the library-name patch is undone on errors too
    original = TasksManager.__dict__["_infer_library_from_model_or_model_class"]
    with pytest.raises(ValueError):
        with as_transformers_library():
            assert TasksManager.__dict__["_infer_library_from_model_or_model_class"] is not original
            raise ValueError("inside")
    assert TasksManager.__dict__["_infer_library_from_model_or_model_class"] is original
    # the output check rejects a runtime whose outputs differ (Optimum itself only warns)
    check_export(model, lambda feeds: model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.detach().numpy(), "same")
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_export(model, lambda feeds: np.zeros((2, 3), dtype=np.float32) + 5.0, "wrong")


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_exports_compute_the_last_layer_at_cls_only(tmp_path, tiny_tokenizer, backend):
    """The exported graph keeps the [CLS]-only last layer (the speed-up must survive export), named as the full one."""
    model = build("SparseBertForSequenceClassification", sparsity=0.5)
    path, run = _export_fp32(backend, _save(model, tmp_path / "m", tiny_tokenizer), tmp_path / backend)
    feeds = _feeds("SparseBertForSequenceClassification")
    model.config.cls_only_last_layer = False  # the reference: every position
    with torch.no_grad():
        expected = model(**feeds).logits.numpy()
    np.testing.assert_allclose(run(path, feeds), expected, atol=1e-5)
    if backend == "onnx":
        import onnx

        inputs = {n.name: n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}
        for layer, cls_only in ((0, False), (1, True)):  # the query reads [CLS] alone, the key every position
            scope = f"/bert/encoder/layer.{layer}/attention/self"
            assert (inputs[f"{scope}/query/MatMul"] != inputs[f"{scope}/key/MatMul"]) == cls_only, layer
    else:
        import openvino

        positions = {}
        for op in openvino.Core().read_model(path).get_ordered_ops():
            name = op.get_friendly_name()
            if op.get_type_name() == "MatMul" and ".intermediate.dense/" in name:
                positions[name.split(".intermediate")[0].rsplit(".", 1)[-1]] = op.get_output_partial_shape(0)[1]
        assert positions["1"].get_max_length() == 1 and positions["0"].is_dynamic and positions["0"].get_max_length() != 1, positions
