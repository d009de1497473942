"""Sparse transfer on the real MiniLM-L6 and the real GLUE files (short budgets; the full runs are benchmarks/transfer.py)."""

import json

import pytest
import transformers

from conftest import DATA_DIR, minilm_dir
from hf_sparse import SparseBertForMaskedLM, SparseBertForSequenceClassification
from hf_sparse.cli import main
from hf_sparse.pruning import magnitude_masks
from hf_sparse.tasks.glue import load_glue
from hf_sparse.transfer import mask_drift, reference_masks
from hf_sparse.transfer.precision import cpu_bf16_is_fast

pytestmark = pytest.mark.real

ROWS = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3667, 408), "rte": (2490, 277), "stsb": (5749, 1500)}


@pytest.mark.parametrize("task", list(ROWS))
def test_glue_files_load_completely(task):
    data = load_glue(task, DATA_DIR)
    assert (data["train"].num_rows, data["validation"].num_rows) == ROWS[task]
    labels = set(data["validation"]["label"])
    assert (min(labels) >= 0 and max(labels) <= 5) if task == "stsb" else labels == {0, 1}
    assert all(isinstance(t, str) and t for t in data["train"]["text_a"][:2000])  # no NA parsing, no quote mangling


def test_minilm_90_sparse_transfer_on_mrpc(tmp_path):
    folder = minilm_dir()
    upstream = SparseBertForMaskedLM.from_dense(transformers.BertForMaskedLM.from_pretrained(folder))
    upstream.set_masks(magnitude_masks(upstream, 0.9))
    upstream.save_pretrained(tmp_path / "minilm-90")
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "minilm-90")
    argv = [
        "finetune", "--model", str(tmp_path / "minilm-90"), "--task", "mrpc", "--data_dir", str(DATA_DIR),
        "--output_dir", str(tmp_path / "ft"), "--max_train_samples", "64", "--max_eval_samples", "64",
        "--per_device_train_batch_size", "16", "--max_steps", "4", "--learning_rate", "1e-4", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true", "--bf16", str(cpu_bf16_is_fast()).lower(),
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["pattern_verified"] and results["steps"] == 4 and results["sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0 and "f1" in results["metrics"]
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "ft" / "model")
    assert mask_drift(model, reference_masks(tmp_path / "minilm-90")) == []


def _bi_encoder_run(model: str, out, steps: int) -> dict:
    argv = [
        "finetune", "--model", model, "--task", "stsb", "--head", "bi-encoder", "--data_dir", str(DATA_DIR),
        "--output_dir", str(out), "--max_train_samples", "128", "--max_eval_samples", "300",
        "--per_device_train_batch_size", "16", "--max_steps", str(steps), "--learning_rate", "2e-5", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true",
    ]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_minilm_bi_encoder_on_stsb(tmp_path):
    # dense: the bi-encoder reads MiniLM-L6 as it was trained (mean-pooled cosine), so a few steps keep
    # it near its zero-shot level (86.7 on the full dev set); a broken tokenizer or pooling gives ~0
    dense = _bi_encoder_run(str(minilm_dir()), tmp_path / "dense", steps=2)
    assert dense["mode"] == "dense+bi-encoder" and dense["metrics"]["spearmanr"] > 0.8
    # 90% magnitude-masked: the pattern holds and is verified
    upstream = SparseBertForMaskedLM.from_dense(transformers.BertForMaskedLM.from_pretrained(minilm_dir()))
    upstream.set_masks(magnitude_masks(upstream, 0.9))
    upstream.save_pretrained(tmp_path / "minilm-90")
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp_path / "minilm-90")
    sparse = _bi_encoder_run(str(tmp_path / "minilm-90"), tmp_path / "sparse", steps=4)
    assert sparse["pattern_verified"] and sparse["steps"] == 4 and sparse["sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert -1.0 <= sparse["metrics"]["spearmanr"] <= 1.0
