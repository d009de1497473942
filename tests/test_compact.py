"""Structured compaction: removable heads and neurons are physically gone, outputs are unchanged."""

import pytest
import torch

import hf_sparse
from conftest import HEAD_NAMES as HEADS, build, dummy_inputs, output_tensor, tiny_config
from hf_sparse.deploy.compact import compact, compact_model
from hf_sparse.models.sparse_bert.sparse_format import SparseFormatError
from hf_sparse.pruning.structured import StructuredPruning


def _structured(head: str, sparsity: float = 0.5):
    model = build(head, sparsity=0.0)
    with torch.no_grad():  # non-zero biases make the folded constants matter
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    model.set_masks(StructuredPruning(scope="global").masks(model, sparsity))
    return model


@pytest.mark.parametrize("head", HEADS)
def test_compaction_keeps_outputs_for_every_head(head):
    model = _structured(head)
    compacted, report = compact_model(model)
    assert report.heads_after < report.heads_before and report.neurons_after < report.neurons_before
    assert report.parameters_after < report.parameters_before
    assert compacted.config.layer_num_attention_heads == report.layer_num_attention_heads
    for i, layer in enumerate(compacted.base_model.encoder.layer):
        assert layer.attention.self.query.out_features == report.layer_num_attention_heads[i] * 9  # head size 36 / 4
        assert layer.intermediate.dense.out_features == report.layer_intermediate_sizes[i]
    inputs = dummy_inputs(head)
    with torch.no_grad():
        expected, got = output_tensor(model(**inputs)), output_tensor(compacted(**inputs))
    assert expected.abs().max() > 0.05
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_constant_units_are_folded_into_biases():
    """A head whose value rows are zero outputs its value bias; a neuron with a zero input row outputs act(bias)."""
    model = build("SparseBertModel", sparsity=0.3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 1.0)
    masks = model.get_masks()
    masks = {k: v.clone() for k, v in masks.items()}
    masks["encoder.layer.0.attention.self.value"][9:18] = False  # head 1: value dead, output columns alive
    masks["encoder.layer.1.attention.self.value"][:] = False  # every head of layer 1
    masks["encoder.layer.0.intermediate.dense"][:20] = False  # 20 neurons with a constant activation
    masks["encoder.layer.1.output.dense"][:, 30:] = False  # 7 neurons whose output is unused
    model.set_masks(masks)
    compacted, report = compact_model(model)
    assert report.layer_num_attention_heads == [3, 1]  # layer 1 keeps one zeroed placeholder head
    assert report.layer_intermediate_sizes == [17, 30]
    inputs = dummy_inputs("SparseBertModel")
    with torch.no_grad():
        expected, got = model(**inputs).last_hidden_state, compacted(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # without the folding the outputs would differ: the constants are large
    assert not torch.allclose(model.encoder.layer[0].output.dense.bias, compacted.encoder.layer[0].output.dense.bias)


def test_nothing_removable_leaves_sizes_uniform():
    model = build("SparseBertModel", sparsity=0.5)
    compacted, report = compact_model(model)
    assert compacted.config.layer_num_attention_heads is None and compacted.config.layer_intermediate_sizes is None
    assert report.parameters_after == report.parameters_before


def test_compact_folder_round_trip(tmp_path, tiny_tokenizer):
    model = _structured("SparseBertForSequenceClassification", 0.6)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    report = compact(tmp_path / "m", tmp_path / "c")
    assert report.max_abs_diff <= 1e-5
    loaded = hf_sparse.SparseBertForSequenceClassification.from_pretrained(tmp_path / "c").eval()
    assert loaded.config.layer_intermediate_sizes == report.layer_intermediate_sizes
    assert (tmp_path / "c" / "tokenizer.json").is_file()
    inputs = dummy_inputs("SparseBertForSequenceClassification")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="compacted"):
        loaded.to_dense()
    with pytest.raises(FileExistsError):
        compact(tmp_path / "m", tmp_path / "c")
    # pruning engine and inspection still understand layers of different widths
    masks = StructuredPruning().masks(loaded, 0.5)
    assert all(masks[n].shape == m.weight.shape for n, m in loaded.masked_linears().items())
    from hf_sparse.convert import inspect_checkpoint

    assert all(check["ok"] for check in inspect_checkpoint(tmp_path / "c")["checks"])


def test_compacted_checkpoint_with_wrong_widths_is_refused(tmp_path):
    model = _structured("SparseBertModel", 0.5)
    compacted, _ = compact_model(model)
    compacted.save_pretrained(tmp_path / "c")
    import json

    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["layer_intermediate_sizes"] = [v + 1 for v in config["layer_intermediate_sizes"]]
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparseFormatError, match="intermediate.dense.weight"):
        hf_sparse.SparseBertModel.from_pretrained(tmp_path / "c")


@pytest.mark.parametrize("bad", [[1], [0, 2], [5, 2], "4,4", [1.5, 2]])
def test_layer_sizes_are_validated(bad):
    with pytest.raises(ValueError, match="layer_num_attention_heads"):
        tiny_config(layer_num_attention_heads=bad)
