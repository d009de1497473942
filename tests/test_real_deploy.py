"""Deployment on the real MiniLM-L6 and real SST-2: INT8 exports keep the fine-tuned sparse model's accuracy."""

import json
import os

import numpy as np
import pytest
import transformers

from conftest import DATA_DIR, have_onnx_exporter, have_openvino_exporter, minilm_dir
from hf_sparse import SparseBertModel
from hf_sparse.pruning import magnitude_masks
from hf_sparse.transfer.precision import cpu_bf16_is_fast

pytestmark = pytest.mark.real
needs_onnx = pytest.mark.skipif(not have_onnx_exporter(), reason="needs optimum-onnx (transformers 4.57: the default environment)")
needs_openvino = pytest.mark.skipif(
    not have_openvino_exporter(), reason="needs optimum-intel (the default or the transformers5-openvino environment)"
)

SPARSITY = 0.8
TRAIN_EXAMPLES = 4000


@pytest.fixture(scope="module")
def finetuned_sparse_sst2(tmp_path_factory):
    """MiniLM-L6 pruned one-shot to 80%, then sparse-transferred on 4,000 SST-2 examples (about a minute)."""
    from hf_sparse.transfer.finetune import FinetuneArguments, run_finetune

    tmp = tmp_path_factory.mktemp("sst2")
    sparse = SparseBertModel.from_dense(minilm_dir())
    sparse.set_masks(magnitude_masks(sparse, SPARSITY))
    sparse.save_pretrained(tmp / "sparse")
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp / "sparse")
    saved = dict(os.environ)  # bf16 TrainingArguments leak ACCELERATE_MIXED_PRECISION; the autouse
    try:  # restore fixture is function-scoped and cannot undo what a module fixture does
        results = run_finetune(
            FinetuneArguments(model=str(tmp / "sparse"), task="sst2", data_dir=str(DATA_DIR), max_train_samples=TRAIN_EXAMPLES),
            transformers.TrainingArguments(
                output_dir=str(tmp / "ft"), per_device_train_batch_size=32, learning_rate=1e-4, num_train_epochs=1,
                bf16=cpu_bf16_is_fast(), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=1,
            ),
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert results["pattern_verified"] and abs(results["sparsity"] - SPARSITY) < 1e-3
    return tmp / "ft" / "model"


@pytest.fixture(scope="module")
def torch_sst2_score(finetuned_sparse_sst2):
    """SST-2 dev accuracy of the fine-tuned sparse model in PyTorch fp32: what every export is compared with."""
    from hf_sparse.deploy.accuracy import glue_dev_score, torch_predictor

    tokenizer = transformers.AutoTokenizer.from_pretrained(finetuned_sparse_sst2)
    fp32 = glue_dev_score(torch_predictor(finetuned_sparse_sst2), tokenizer, "sst2", data_dir=DATA_DIR)["score"]
    assert fp32 >= 0.70, f"the fine-tuned model did not learn SST-2 (chance is 50.9%) ({fp32:.3f}); the INT8 comparison would be meaningless"
    return fp32


def _check_scores(predictors: dict, model_dir, fp32: float) -> None:
    """fp32 exports within 0.3 points of PyTorch fp32, INT8 exports within 1 point, on the full SST-2 dev set."""
    from hf_sparse.deploy.accuracy import glue_dev_score

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    scores = {name: glue_dev_score(predict, tokenizer, "sst2", data_dir=DATA_DIR)["score"] for name, predict in predictors.items()}
    print(json.dumps({"torch fp32": fp32, **scores}, indent=1))
    for name, score in scores.items():
        assert abs(score - fp32) <= (0.003 if "fp32" in name else 0.01), (name, score, fp32)


@needs_onnx
def test_onnx_int8_exports_stay_within_one_point_on_sst2(finetuned_sparse_sst2, torch_sst2_score, tmp_path):
    from hf_sparse.deploy.accuracy import onnx_predictor
    from hf_sparse.deploy.onnx import export_onnx

    model_dir = finetuned_sparse_sst2
    export_onnx(model_dir, tmp_path / "dynamic")
    export_onnx(model_dir, tmp_path / "static", static=True, calibration="sst2", num_calibration_samples=300)
    _check_scores({
        "ort fp32": onnx_predictor(tmp_path / "dynamic" / "model.onnx"),
        "ort int8 dynamic": onnx_predictor(tmp_path / "dynamic" / "model_quantized.onnx"),
        "ort int8 static": onnx_predictor(tmp_path / "static" / "model_quantized.onnx"),
    }, model_dir, torch_sst2_score)


@needs_openvino
def test_openvino_int8_export_stays_within_one_point_on_sst2(finetuned_sparse_sst2, torch_sst2_score, tmp_path):
    from hf_sparse.deploy.accuracy import openvino_predictor
    from hf_sparse.deploy.openvino import export_openvino, weight_layout

    model_dir = finetuned_sparse_sst2
    export_openvino(model_dir, tmp_path / "ov", calibration="sst2", num_calibration_samples=300)
    _check_scores({
        "ov fp32": openvino_predictor(tmp_path / "ov" / "openvino_model.xml"),
        "ov int8 nncf": openvino_predictor(tmp_path / "ov" / "openvino_model_int8.xml"),
    }, model_dir, torch_sst2_score)
    layout = weight_layout(tmp_path / "ov" / "openvino_model_int8.xml")
    assert layout["int8_weights"] >= 36 and layout["behind_transpose"] == 0


@needs_openvino
def test_openvino_runs_its_sparse_int8_kernel_where_the_cpu_has_amx(tmp_path):
    """The kernel OpenVINO executes for 90%-sparse int8 weights, not just the flag that asks for it.

    Its sparse INT8 kernel exists for AMX CPUs only: there every encoder linear must run it once sparse
    decompression is on (and none without it); on a CPU without AMX it must never appear.
    """
    from hf_sparse.cpu import cpu_description
    from hf_sparse.deploy.openvino import compile_model, executed_kernels, export_openvino

    model = SparseBertModel.from_dense(minilm_dir()).eval()
    model.set_masks(magnitude_masks(model, 0.9))
    model.save_pretrained(tmp_path / "m")
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp_path / "m")
    export_openvino(tmp_path / "m", tmp_path / "ov", calibration="sst2", num_calibration_samples=32, data_dir=DATA_DIR)
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 128))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    xml = tmp_path / "ov" / "openvino_model_int8.xml"

    def sparse_runs(kernels: dict) -> int:
        return sum(n for kernel, n in kernels.items() if "sparse" in kernel.lower())

    off, on = executed_kernels(compile_model(xml), inputs), executed_kernels(compile_model(xml, sparse_rate=0.5), inputs)
    assert sum(on.values()) >= 36 and sparse_runs(off) == 0, (off, on)
    if "amx_int8" in cpu_description().get("flags", []):
        assert sparse_runs(on) >= 36, on  # 6 layers x (Q, K, V, attention output, FFN in, FFN out)
    else:
        assert sparse_runs(on) == 0, on


def test_compacted_real_model_matches(tmp_path):
    """Structured pruning of real MiniLM-L6, compaction, and the same hidden states on real sentences."""
    import torch

    from hf_sparse.deploy.compact import compact_model
    from hf_sparse.pruning.structured import StructuredPruning
    from hf_sparse.tasks.glue import load_glue

    model = SparseBertModel.from_dense(minilm_dir()).eval()
    model.set_masks(StructuredPruning(("heads", "neurons")).masks(model, 0.5))
    compacted, report = compact_model(model)
    assert report.heads_after == 36 and report.neurons_after == 6 * 768
    sentences = load_glue("sst2", DATA_DIR)["validation"]["text_a"][:16]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = model(**inputs).last_hidden_state, compacted(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert report.parameters_after < 0.85 * report.parameters_before
