"""Pattern checks and magnitude masks."""

import pytest
import torch

from hf_sparse.analysis import detect_patterns, pattern_violations, sparsity_report
from hf_sparse.pruning import magnitude_masks, mask_from_scores

from conftest import build

HEADS = 4
Q, O = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.output.dense"
I, OUT = "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"


def test_block_pattern():
    good = torch.ones(8, 8, dtype=torch.bool)
    good[4:8, 0:1] = False  # one 4x1 block
    assert pattern_violations("block:4x1", {Q: good}, HEADS) == []
    bad = good.clone()
    bad[0, 5] = False
    assert "partly pruned" in pattern_violations("block:4x1", {Q: bad}, HEADS)[0]
    assert "not divisible" in pattern_violations("block:3x1", {Q: good}, HEADS)[0]


def test_n_m_pattern():
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    assert pattern_violations("2:4", {Q: mask}, HEADS) == []
    mask[0, 2] = True
    assert "keeps more than 2" in pattern_violations("2:4", {Q: mask}, HEADS)[0]


def test_structured_heads_and_neurons():
    hidden, inter = 8, 6
    q = torch.ones(hidden, hidden, dtype=torch.bool)
    o = torch.ones(hidden, hidden, dtype=torch.bool)
    q[2:4] = False  # head 1 (head_dim 2) pruned in Q rows
    o[:, 2:4] = False  # and in O columns
    i = torch.ones(inter, hidden, dtype=torch.bool)
    out = torch.ones(hidden, inter, dtype=torch.bool)
    i[5] = False
    out[:, 5] = False
    masks = {Q: q, O: o, I: i, OUT: out}
    assert pattern_violations("structured:heads+neurons", masks, HEADS) == []
    assert any("no 'neurons'" in p for p in pattern_violations("structured:heads", masks, HEADS))
    out[:, 4] = False  # neuron 4 pruned only in output.dense
    assert any("different neurons" in p for p in pattern_violations("structured:heads+neurons", masks, HEADS))
    o[0, 0] = False
    assert any("head is partly pruned" in p for p in pattern_violations("structured:heads+neurons", masks, HEADS))


def test_report_counts_heads_neurons_and_detects_patterns():
    hidden, inter = 8, 6
    o = torch.ones(hidden, hidden, dtype=torch.bool)
    o[:, 0:4] = False  # heads 0 and 1 (head_dim 2)
    i = torch.ones(inter, hidden, dtype=torch.bool)
    i[0] = i[3] = False
    masks = {O: o, I: i}
    weights = {k: v.float() for k, v in masks.items()}
    report = sparsity_report(weights, masks, num_attention_heads=HEADS, declared_pattern="unstructured")
    assert report["fully_pruned_heads"] == 2 and report["fully_pruned_neurons"] == 2
    assert report["global_sparsity"] == pytest.approx((32 + 16) / (64 + 48), abs=1e-6)
    assert all(c["ok"] for c in report["checks"])
    detected = detect_patterns(masks, HEADS)
    assert "block:1x4" in detected and "block:4x1" not in detected and "2:4" not in detected
    weights[O][0, 0] = 3.0
    bad = sparsity_report(weights, masks, num_attention_heads=HEADS)
    assert not bad["checks"][0]["ok"] and "1 non-zero" in bad["checks"][0]["detail"]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 1.0])
def test_mask_from_scores_exact_count(sparsity):
    scores = torch.rand(37, 36)
    mask = mask_from_scores(scores, sparsity)
    assert int(mask.sum()) == 37 * 36 - round(sparsity * 37 * 36)
    if 0 < sparsity < 1:
        assert scores[mask].min() >= scores[~mask].max()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_masks(scope):
    model = build("SparseBertModel", sparsity=0.0)
    masks = magnitude_masks(model, 0.9, scope=scope)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if scope == "layer":
        for name, mask in masks.items():
            assert int(mask.sum()) == mask.numel() - round(0.9 * mask.numel()), name
    else:
        assert kept == total - round(0.9 * total)
    model.set_masks(masks)
    assert model.sparsity() == pytest.approx(1 - kept / total)
    again = magnitude_masks(model, 0.95, scope=scope)
    for name, mask in again.items():
        assert not (mask & ~masks[name]).any(), "masks only grow"
