"""The timing helpers of `hf_sparse.deploy.bench` (what they call and when; no timing is asserted)."""

import sys
from pathlib import Path

import pytest

from hf_sparse.deploy.bench import timed_interleaved

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import latency  # noqa: E402  (benchmarks/latency.py)


def test_timed_interleaved_takes_turns_and_counts_every_call():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("dense", "compact", "onnx")}
    stats = timed_interleaved(fns, runs=5, rounds=2, warmup=1, settle_s=0.0)
    assert list(stats) == ["dense", "compact", "onnx"]
    assert calls[:3] == ["dense", "compact", "onnx"]  # one warm-up each
    # 5 runs in 2 rounds: 3 timed calls per turn, after one untimed call
    assert calls[3:] == (["dense"] * 4 + ["compact"] * 4 + ["onnx"] * 4) * 2
    for entry in stats.values():
        assert entry["runs"] == 6 and 0 <= entry["min_ms"] <= entry["median_ms"] <= entry["p90_ms"]
    with pytest.raises(ValueError, match="runs and rounds must be at least 1"):
        timed_interleaved(fns, runs=5, rounds=0)


def test_a_plain_bert_folder_of_an_unknown_head_is_refused_by_name(tmp_path):
    import json

    from hf_sparse.deploy.bench import Runners

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForPreTraining"]}))
    with pytest.raises(ValueError, match=r"config.json: architecture 'BertForPreTraining' is not a BERT head hf-sparse knows"):
        Runners(tmp_path, tmp_path / "work").model()


def test_latency_script_times_only_the_selected_runtimes_and_always_the_baseline(monkeypatch, tmp_path):
    """`benchmarks/latency.py --runtimes` (e.g. an environment without ONNX Runtime): what reaches the timer, and the table."""
    asked = []

    def fake_benchmark(folder, batches, seq, runtimes, **kwargs):
        asked.append(list(runtimes))
        return [{"runtime": r, "batch": batches[0], "median_ms": 10.0 if r == "torch-fp32" else 2.0,
                 "speedup_vs_baseline": 1.0 if r == "torch-fp32" else 5.0, "bytes": 1e6} for r in runtimes]

    monkeypatch.setattr("hf_sparse.deploy.bench.benchmark", fake_benchmark)
    monkeypatch.setattr(latency, "build_variant", lambda shape, variant, folder: (folder, 0.0 if variant == "dense" else 0.9))
    results = latency.run(["minilm-l6"], [1], runs=1, rounds=1, selected=["ov-fp32", "ov-int8"])
    assert asked == [["torch-fp32", "ov-fp32", "ov-int8"]] * len(latency.VARIANTS)  # in RUNTIMES' order, baseline first
    table = latency.summarise(results)
    assert "| variant | sparsity | torch-fp32 | ov-fp32 | ov-int8 | INT8 MB (OV) |" in table
    assert "| structured-90-compact | 0.90 | 1.00x | 5.00x | 5.00x | 1 |" in table
    assert "ov-int8-sparse" not in table  # no kernel line for a runtime that did not run


@pytest.mark.real
def test_latency_hybrid_variants_are_90_percent_sparse_and_compact_to_the_kept_units(tmp_path):
    """`benchmarks/latency.py`'s hybrid rows time what they name: 90% of each layer, 80% of heads and neurons removed."""
    import hf_sparse

    folder, sparsity = latency.build_variant("minilm-l6", "hybrid-80-90", tmp_path / "masked")
    masked = hf_sparse.SparseBertModel.from_pretrained(folder)
    assert abs(sparsity - 0.9) < 1e-3
    assert all(abs(1 - m.weight_mask.float().mean().item() - 0.9) < 1e-3 for m in masked.masked_linears().values())
    folder, sparsity = latency.build_variant("minilm-l6", "hybrid-80-90-compact", tmp_path / "compact")
    compact = hf_sparse.SparseBertModel.from_pretrained(folder)
    assert abs(sparsity - 0.9) < 1e-3  # measured before compaction
    # MiniLM-L6: 12 heads of 32 and 1,536 neurons per layer; 80% go: 2 heads and 307 neurons remain
    for layer in compact.encoder.layer:
        assert layer.attention.self.query.out_features == 2 * 32
        assert layer.intermediate.dense.out_features == 307


def test_the_dense_baseline_runs_as_transformers_bert_and_sparse_folders_cls_only(tmp_path):
    """A plain BERT folder (the baseline) computes every position of its last layer, as transformers does; a
    sparse_bert classifier keeps its [CLS]-only last layer."""
    from conftest import build

    from hf_sparse.deploy.bench import Runners

    sparse = build("SparseBertForSequenceClassification", sparsity=0.5)
    sparse.to_dense().save_pretrained(tmp_path / "dense")
    sparse.save_pretrained(tmp_path / "sparse")
    assert Runners(tmp_path / "dense", tmp_path / "w1").model().config.cls_only_last_layer is False
    assert Runners(tmp_path / "sparse", tmp_path / "w2").model().config.cls_only_last_layer is True
    # a sparse_bert folder as the reference of a speed-up (`hf-sparse bench --reference`) runs every position too
    assert Runners(tmp_path / "sparse", tmp_path / "w3", baseline=True).model().config.cls_only_last_layer is False
