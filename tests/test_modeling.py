"""SparseBert heads: outputs, round trips, Auto classes, masks under training."""

import json

import pytest
import torch
import transformers
from safetensors import safe_open

import hf_sparse
from hf_sparse import MaskedLinear, SparseBertConfig, SparseBertForMaskedLM, SparseBertForSequenceClassification

from conftest import HEAD_NAMES, build, dummy_inputs, output_tensor, random_masks, tiny_config

AUTO = {
    "SparseBertModel": transformers.AutoModel,
    "SparseBertForMaskedLM": transformers.AutoModelForMaskedLM,
    "SparseBertForSequenceClassification": transformers.AutoModelForSequenceClassification,
    "SparseBertForQuestionAnswering": transformers.AutoModelForQuestionAnswering,
    "SparseBertForTokenClassification": transformers.AutoModelForTokenClassification,
    "SparseBertForMultipleChoice": transformers.AutoModelForMultipleChoice,
}


def assert_state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_every_prunable_linear_is_masked(head):
    model = build(head)
    masked = model.masked_linears()
    assert len(masked) == 2 * 6
    for name, module in masked.items():
        assert module.weight_mask.dtype == torch.bool
        assert torch.all(module.weight[~module.weight_mask] == 0), name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".encoder.layer." in f".{name}":
            assert isinstance(module, MaskedLinear), name


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_outputs_equal_plain_bert_with_zeroed_weights(head):
    model = build(head)
    dense = model.to_dense()
    assert type(dense) is model.dense_class
    assert not any(k.endswith("_mask") for k in dense.state_dict())
    inputs = dummy_inputs(head)
    with torch.no_grad():
        expected = output_tensor(dense(**inputs))
        got = output_tensor(model(**inputs))
    assert torch.equal(got, expected)
    # grad-enabled path (weight * mask) gives the same numbers
    assert torch.allclose(output_tensor(model(**inputs)), expected, atol=1e-6)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_save_load_round_trip_is_exact_through_auto_class(head, tmp_path):
    model = build(head)
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "configuration_sparse_bert.py", "model.safetensors", "modeling_sparse_bert.py", "sparse_format.py"]
    loaded = AUTO[head].from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert_state_equal(model, loaded)
    inputs = dummy_inputs(head)
    with torch.no_grad():
        assert torch.equal(output_tensor(model(**inputs)), output_tensor(loaded(**inputs)))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "sparse_bert"
    assert config["architectures"] == [head]
    assert config["auto_map"]["AutoModel"] == "modeling_sparse_bert.SparseBertModel"
    assert config["measured_sparsity"] == pytest.approx(model.sparsity(), abs=1e-6)


def test_file_stores_values_and_bitmasks_not_dense_weights(tmp_path):
    model = build("SparseBertForMaskedLM", sparsity=0.9)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        name = "bert.encoder.layer.0.intermediate.dense.weight"
        assert name not in keys and name + "_mask" not in keys
        values, bitmask = f.get_tensor(name + ".values"), f.get_tensor(name + ".bitmask")
    mask = model.bert.encoder.layer[0].intermediate.dense.weight_mask
    assert values.numel() == int(mask.sum())
    assert bitmask.dtype == torch.uint8 and bitmask.numel() == (mask.numel() + 7) // 8
    assert meta["hf_sparse_format"] == "bitmask" and meta["hf_sparse_format_version"] == "1"
    assert json.loads(meta["hf_sparse_shapes"])[name] == [37, 36]
    # tied decoder weight is stored once
    assert "cls.predictions.decoder.weight" not in keys


def test_tied_decoder_weight_after_load(tmp_path):
    model = build("SparseBertForMaskedLM")
    model.save_pretrained(tmp_path)
    loaded = SparseBertForMaskedLM.from_pretrained(tmp_path)
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()


def test_bf16_round_trip_keeps_dtype_and_bits(tmp_path):
    model = build("SparseBertForSequenceClassification").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = SparseBertForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert_state_equal(model, loaded)
    assert json.loads((tmp_path / "config.json").read_text()).get("torch_dtype", "bfloat16") in ("bfloat16",)


def test_sharded_round_trip_and_stale_files_removed(tmp_path):
    model = build("SparseBertForMaskedLM")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = SparseBertForMaskedLM.from_pretrained(tmp_path)
    assert_state_equal(model, loaded)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    model.save_pretrained(tmp_path)  # unsharded save over the sharded one
    assert not list(tmp_path.glob("model-*.safetensors"))
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "tokenizer_config.json").exists(), "unrelated files are kept"
    assert_state_equal(model, SparseBertForMaskedLM.from_pretrained(tmp_path))


def test_config_kwargs_and_loading_info(tmp_path):
    model = build("SparseBertForSequenceClassification")
    model.save_pretrained(tmp_path)
    loaded, info = SparseBertForSequenceClassification.from_pretrained(
        tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert loaded.config.num_labels == 5 and loaded.classifier.out_features == 5
    assert "mismatched_keys" in info
    head_from_base = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert torch.equal(head_from_base.bert.encoder.layer[1].output.dense.weight, model.bert.encoder.layer[1].output.dense.weight)


def test_mean_pooled_head_reads_the_mean_over_attended_tokens(tmp_path):
    model = build("SparseBertForSequenceClassification", classifier_pooling="mean")
    inputs = dummy_inputs("SparseBertForSequenceClassification")  # the last 2 positions are padding
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.bert(**inputs).last_hidden_state
        mean = hidden[:, :-2].mean(dim=1)  # by hand: the 5 attended positions
        expected = model.classifier(torch.tanh(model.bert.pooler.dense(mean)))
        torch.testing.assert_close(logits, expected)
        padded = dict(inputs, input_ids=inputs["input_ids"].clone())
        padded["input_ids"][:, -2:] = 7  # other ids at the padded positions: their hidden states change, the mean does not
        assert not torch.allclose(model.bert(**padded).last_hidden_state[:, -2:], hidden[:, -2:])
        torch.testing.assert_close(model(**padded).logits, logits)
        model.config.classifier_pooling = "cls"  # the same weights read [CLS]: another vector, other logits
        assert not torch.allclose(model(**inputs).logits, logits)
        model.config.classifier_pooling = "mean"
        assert torch.equal(model(**inputs, return_dict=False)[0], logits)
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(model(**inputs, labels=labels).loss, torch.nn.functional.cross_entropy(logits, labels))
    regression = build("SparseBertForSequenceClassification", classifier_pooling="mean", num_labels=1)
    scores = torch.tensor([0.5, 4.0])
    out = regression(**inputs, labels=scores)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), scores))
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.classifier_pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits)
    with pytest.raises(ValueError, match="a BertForSequenceClassification reads \\[CLS\\]"):
        model.to_dense()
    with pytest.raises(ValueError, match=r"classifier_pooling='max'; expected one of \('cls', 'mean'\)"):
        tiny_config(classifier_pooling="max")


@pytest.mark.parametrize("head", ["SparseBertForSequenceClassification", "SparseBertForMaskedLM"])
def test_pruned_weights_stay_zero_under_adamw_with_weight_decay(head):
    model = build(head, sparsity=0.7).train()
    masks = {n: m.clone() for n, m in model.get_masks().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    inputs = dummy_inputs(head)
    labels = torch.tensor([0, 2]) if head.endswith("Classification") else inputs["input_ids"]
    for _ in range(5):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        for name, module in model.masked_linears().items():
            assert torch.all(module.weight.grad[~masks[name]] == 0), name
        optimizer.step()
        optimizer.zero_grad()
    changed = False
    for name, module in model.masked_linears().items():
        assert torch.equal(module.weight_mask, masks[name])
        assert torch.all(module.weight[~masks[name]] == 0), name
        changed |= bool((module.weight[masks[name]] != 0).all())
    assert changed, "kept weights should have trained"


def test_from_dense_masks_from_zeros_and_given_masks():
    torch.manual_seed(0)
    dense = transformers.BertForMaskedLM(transformers.BertConfig(**tiny_config().to_diff_dict() | {"model_type": "bert"})).eval()
    with torch.no_grad():
        dense.bert.encoder.layer[0].intermediate.dense.weight[:5] = 0
    sparse = SparseBertForMaskedLM.from_dense(dense, target_sparsity=0.5)
    mask = sparse.bert.encoder.layer[0].intermediate.dense.weight_mask
    assert not mask[:5].any() and mask[5:].all()
    assert sparse.config.target_sparsity == 0.5
    given = random_masks(sparse, 0.6)
    sparse2 = SparseBertForMaskedLM.from_dense(dense, masks=given)
    for name, module in sparse2.masked_linears().items():
        assert torch.equal(module.weight_mask, given[name])
        assert torch.all(module.weight[~given[name]] == 0)
    assert dense.bert.encoder.layer[1].output.dense.weight.count_nonzero() == dense.bert.encoder.layer[1].output.dense.weight.numel(), "input model untouched"
    with pytest.raises(TypeError, match="expects a BertForMaskedLM"):
        SparseBertForMaskedLM.from_dense(sparse)


def test_from_dense_path_loads_checkpoint(tmp_path):
    dense = transformers.BertForSequenceClassification(transformers.BertConfig(**tiny_config().to_diff_dict() | {"model_type": "bert"}))
    dense.save_pretrained(tmp_path)
    sparse = SparseBertForSequenceClassification.from_dense(tmp_path, num_labels=2, ignore_mismatched_sizes=True)
    assert sparse.config.num_labels == 2 and sparse.sparsity() == 0.0


def test_set_masks_errors():
    model = build("SparseBertModel")
    with pytest.raises(KeyError, match="not a masked linear layer"):
        model.set_masks({"pooler.dense": torch.ones(36, 36, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has shape"):
        model.set_masks({"encoder.layer.0.output.dense": torch.ones(3, 3, dtype=torch.bool)})


def test_only_configured_modules_are_masked():
    model = hf_sparse.SparseBertModel(tiny_config(prunable_modules=["intermediate.dense", "output.dense"]))
    assert sorted({n.split(".", 3)[-1] for n in model.masked_linears()}) == ["intermediate.dense", "output.dense"]
    assert type(model.encoder.layer[0].attention.self.query) is torch.nn.Linear


PIPELINES = {
    "fill-mask": ("SparseBertForMaskedLM", lambda p: p("w1 [MASK] w3", top_k=3), lambda out: len(out) == 3),
    "text-classification": ("SparseBertForSequenceClassification", lambda p: p("w1 w2 w3"), lambda out: out[0]["label"].startswith("LABEL_")),
    "token-classification": ("SparseBertForTokenClassification", lambda p: p("w1 w2 w3"), lambda out: isinstance(out, list)),
    "feature-extraction": ("SparseBertModel", lambda p: p("w1 w2 w3"), lambda out: len(out[0][0]) == 36),
    "question-answering": (
        "SparseBertForQuestionAnswering",
        lambda p: p(question="w1 w2", context="w3 w4 w5 w6 w7"),
        lambda out: set(out) >= {"answer", "score", "start", "end"},
    ),
}


@pytest.mark.parametrize("task", sorted(PIPELINES))
def test_pipelines_run(task, tiny_tokenizer):
    head, call, check = PIPELINES[task]
    if task not in transformers.pipelines.SUPPORTED_TASKS:  # transformers 5 dropped the question-answering pipeline
        pytest.skip(f"transformers {transformers.__version__} removed the {task!r} pipeline")
    pipe = transformers.pipeline(task, model=build(head), tokenizer=tiny_tokenizer)
    assert check(call(pipe))


def test_plain_load_state_dict_reads_the_compressed_file(tmp_path):
    """What Trainer does on resume: safetensors.load_file + model.load_state_dict."""
    from safetensors.torch import load_file

    model = build("SparseBertForMaskedLM", sparsity=0.85)
    model.save_pretrained(tmp_path)
    fresh = build("SparseBertForMaskedLM", sparsity=0.1, seed=3)
    result = fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert_state_equal(model, fresh)


@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_trains_like_plain_bert_with_masked_gradients(sparsity):
    """The sparse model's optimisation is plain BERT's, projected onto the pattern: same losses, same weights."""
    head = "SparseBertForSequenceClassification"
    model = build(head, sparsity=sparsity).eval()  # eval: no dropout, so both runs are deterministic
    # the same computation as the plain model's: every position of the last layer (AdamW would amplify the rounding
    # noise in the key bias's gradient, which is zero in exact arithmetic, into diverging weights)
    model.config.cls_only_last_layer = False
    plain = model.to_dense().eval()
    masks = {n: m.clone() for n, m in model.get_masks().items()}
    plain_linears = dict(plain.named_modules())
    for name, mask in masks.items():  # the plain model's gradients, masked by hand
        plain_linears[name].weight.register_hook(lambda grad, mask=mask: grad * mask)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (model, plain)]
    inputs, labels = dummy_inputs(head), torch.tensor([0, 2])
    for _ in range(4):
        losses = []
        for m, optimizer in zip((model, plain), optimizers):
            loss = m(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    trained = plain.state_dict()
    for key, value in model.to_dense().state_dict().items():
        assert torch.allclose(value, trained[key], atol=1e-5), key


# ---- the [CLS]-only last layer of SparseBertForSequenceClassification ------------------------------------------------
def _classifier(attn="sdpa", **overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    config._attn_implementation = attn
    model = SparseBertForSequenceClassification(config).eval()
    model.set_masks(random_masks(model, 0.5, 0))
    return model


def _padded_inputs():
    ids = torch.randint(5, 99, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0  # [CLS] and one token
    return {"input_ids": ids, "attention_mask": mask}


def _last_layer_positions(model, **call) -> tuple[int, object]:
    """(positions the last encoder layer computed, the model's outputs) for one call."""
    seen = []
    layer = model.bert.encoder.layer[-1]
    handle = layer.register_forward_hook(lambda m, args, out: seen.append((out[0] if isinstance(out, tuple) else out).shape[1]))
    try:
        outputs = model(**call)
    finally:
        handle.remove()
    return seen[0], outputs


def _assert_cls_only_matches_every_position(model, inputs, seq: int):
    """The last layer computes 1 position, or `seq` with the option off, and the logits agree."""
    with torch.no_grad():
        positions, fast = _last_layer_positions(model, **inputs)
        model.config.cls_only_last_layer = False
        full_positions, full = _last_layer_positions(model, **inputs)
    assert (positions, full_positions) == (1, seq)
    torch.testing.assert_close(fast.logits, full.logits, atol=1e-6, rtol=0)
    assert fast.logits.std() > 1e-3  # not trivially equal


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("with_mask", [True, False])
def test_classifier_computes_its_last_layer_at_cls_only_with_the_same_logits(attn, with_mask):
    inputs = _padded_inputs() if with_mask else {"input_ids": _padded_inputs()["input_ids"]}
    _assert_cls_only_matches_every_position(_classifier(attn), inputs, seq=9)


def test_multiple_choice_computes_its_last_layer_at_cls_only_with_the_same_logits():
    model = build("SparseBertForMultipleChoice", sparsity=0.5)
    _assert_cls_only_matches_every_position(model, dummy_inputs("SparseBertForMultipleChoice", seq=9), seq=9)


def test_classifier_cls_only_last_layer_on_a_compacted_model_with_uneven_heads():
    model = _classifier(layer_num_attention_heads=[4, 1], layer_intermediate_sizes=[37, 5])
    _assert_cls_only_matches_every_position(model, _padded_inputs(), seq=9)


@pytest.mark.parametrize(
    "case", ["training", "output_hidden_states", "config_output_hidden_states", "output_attentions", "head_mask",
             "mean_pooling", "switched_off"],
)
def test_classifier_computes_every_position_when_more_than_cls_is_used(case):
    model = _classifier("eager")
    inputs = _padded_inputs()
    if case == "training":
        model.train()
    elif case in ("output_hidden_states", "output_attentions"):
        inputs[case] = True
    elif case == "config_output_hidden_states":
        model.config.output_hidden_states = True
    elif case == "head_mask":
        inputs["head_mask"] = torch.ones(2, 4)
    elif case == "mean_pooling":
        model.config.classifier_pooling = "mean"
    else:
        model.config.cls_only_last_layer = False
    with torch.no_grad():
        positions, outputs = _last_layer_positions(model, **inputs)
    assert positions == 9
    if "hidden_states" in case:
        assert outputs.hidden_states[-1].shape[1] == 9
    assert not model.bert.encoder.layer[-1].cls_only  # reset after the call


def test_cls_only_last_layer_config_round_trip_copy_and_errors(tmp_path):
    import copy
    import pickle

    model = _classifier()
    model.config.cls_only_last_layer = False
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["cls_only_last_layer"] is False
    assert SparseBertForSequenceClassification.from_pretrained(tmp_path).config.cls_only_last_layer is False
    assert "cls_only_last_layer" not in model.to_dense().config.to_dict()  # plain BERT has no such field
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(twin.bert.encoder.layer[-1]).__name__ == "ClsOnlyBertLayer"
        twin.config.cls_only_last_layer = True
        with torch.no_grad():
            assert _last_layer_positions(twin, **_padded_inputs())[0] == 1
    with pytest.raises(ValueError, match="cls_only_last_layer must be true or false, got 'yes'"):
        SparseBertConfig(cls_only_last_layer="yes")
