"""The timing helpers of `hf_sparse.deploy.bench` (what they call and when; no timing is asserted)."""

import pytest

from hf_sparse.deploy.bench import timed_interleaved


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
