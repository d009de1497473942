"""SparseBertConfig: plain data, validated patterns, Auto registration."""

import json

import pytest
import transformers

from hf_sparse import PRUNABLE_LINEARS, SparseBertConfig, parse_sparsity_pattern


@pytest.mark.parametrize(
    "text, kind, canonical",
    [
        ("unstructured", "unstructured", "unstructured"),
        ("block:4x1", "block", "block:4x1"),
        ("Block:1X4", "block", "block:1x4"),
        ("2:4", "n:m", "2:4"),
        ("structured:heads", "structured", "structured:heads"),
        ("structured:neurons+heads", "structured", "structured:heads+neurons"),
    ],
)
def test_patterns_parse(text, kind, canonical):
    pattern = parse_sparsity_pattern(text)
    assert pattern.kind == kind and str(pattern) == canonical


@pytest.mark.parametrize("text", ["diagonal", "4:2", "0:4", "block:0x4", "structured:rows", "structured:heads+heads", "", "2:4:8"])
def test_unknown_patterns_are_rejected(text):
    with pytest.raises(ValueError, match="sparsity_pattern"):
        SparseBertConfig(sparsity_pattern=text)


def test_other_fields_are_validated():
    with pytest.raises(ValueError, match="target_sparsity must be in"):
        SparseBertConfig(target_sparsity=1.5)
    with pytest.raises(ValueError, match=r"prunable_modules .*'pooler.dense'"):
        SparseBertConfig(prunable_modules=["pooler.dense"])
    with pytest.raises(ValueError, match="sparse_format_version 9 is not supported"):
        SparseBertConfig(sparse_format_version=9)


def test_config_is_plain_data_and_round_trips(tmp_path):
    config = SparseBertConfig(hidden_size=64, num_attention_heads=4, sparsity_pattern="2:4", target_sparsity=0.5)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "sparse_bert"
    assert data["sparsity_pattern"] == "2:4" and data["target_sparsity"] == 0.5
    assert data["prunable_modules"] == list(PRUNABLE_LINEARS)
    assert data["sparse_format_version"] == 1
    assert all(isinstance(v, (str, int, float, bool, list, dict, type(None))) for v in data.values())
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SparseBertConfig)
    assert loaded.pattern.n_m == (2, 4) and loaded.hidden_size == 64
