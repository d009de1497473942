"""Pruning methods reach their exact targets and patterns; the cubic schedule; the Trainer callback."""

import json

import pytest
import torch
import transformers

from hf_sparse.analysis import pattern_violations
from hf_sparse.pruning import (
    BlockPruning,
    CubicSchedule,
    HybridPruning,
    MagnitudePruning,
    MovementPruning,
    NMPruning,
    OneShotSchedule,
    PruningCallback,
    StructuredFisherPruning,
    StructuredMovementPruning,
    StructuredPruning,
)

from conftest import build, dummy_inputs
from test_training import RandomTokens


def fresh(**overrides):
    # hidden 48 / intermediate 64: divisible by the block and group sizes used here
    return build("SparseBertForSequenceClassification", sparsity=0.0, hidden_size=48, intermediate_size=64, **overrides)


def kept_fraction(masks):
    return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


@pytest.mark.parametrize(
    "method, sparsity",
    [
        (MagnitudePruning("layer"), 0.9),
        (MagnitudePruning("global"), 0.97),
        (BlockPruning((1, 4)), 0.8),
        (BlockPruning((4, 1), scope="global"), 0.9),
        (NMPruning(2, 4), 0.5),
        (StructuredPruning(("heads",)), 0.5),
        (StructuredPruning(("neurons",)), 0.75),
        (StructuredPruning(("heads", "neurons"), scope="global"), 0.5),
    ],
    ids=lambda x: getattr(x, "pattern", None) and f"{x.name}-{x.pattern}-{x.scope}" or str(x),
)
def test_method_reaches_exact_target_and_pattern(method, sparsity):
    model = fresh()
    masks = method.masks(model, sparsity)
    model.set_masks(masks)
    assert pattern_violations(method.pattern, model.get_masks(), model.config.num_attention_heads) == []
    if method.name == "structured":
        heads = model.config.num_attention_heads
        for name, mask in masks.items():
            if name.endswith("attention.output.dense") and "heads" in method.structures and method.scope == "layer":
                assert int((~mask.reshape(48, heads, -1).any(dim=(0, 2))).sum()) == round(sparsity * heads)
            if name.endswith("intermediate.dense") and "neurons" in method.structures and method.scope == "layer":
                assert int((~mask.any(dim=1)).sum()) == round(sparsity * 64)
    else:  # exact at the granularity of the pattern (single weights, or whole blocks)
        unit = method.block[0] * method.block[1] if method.name == "block" else 1
        if method.scope == "layer":
            for name, mask in masks.items():
                assert int((~mask).sum()) == round(sparsity * mask.numel() / unit) * unit, name
        else:
            total = sum(m.numel() for m in masks.values())
            assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total / unit) * unit
    for module in model.masked_linears().values():
        assert torch.all(module.weight[~module.weight_mask] == 0)


def test_magnitude_keeps_the_largest():
    model = fresh()
    masks = MagnitudePruning().masks(model, 0.5)
    for name, module in model.masked_linears().items():
        w = module.weight.abs()
        assert w[masks[name]].min() >= w[~masks[name]].max(), name


def test_nm_rejects_other_targets():
    with pytest.raises(ValueError, match="2:4 pruning gives sparsity 0.5, not 0.9"):
        NMPruning(2, 4).masks(fresh(), 0.9)


def test_movement_scores_follow_minus_weight_times_grad():
    model = fresh().train()
    method = MovementPruning()
    inputs = dummy_inputs("SparseBertForSequenceClassification")
    model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    method.observe(model)
    name, module = next(iter(model.masked_linears().items()))
    assert torch.allclose(method.scores(model)[name], -(module.weight * module.weight.grad))
    masks = method.masks(model, 0.6)
    assert int((~masks[name]).sum()) == round(0.6 * module.weight.numel())
    soft = MovementPruning(soft=True)
    soft.load_state_dict(method.state_dict())
    total = sum(m.weight.numel() for m in model.masked_linears().values())
    assert sum(int((~m).sum()) for m in soft.masks(model, 0.6).values()) == round(0.6 * total)


def test_cubic_schedule_matches_formula():
    schedule = CubicSchedule(0.0, 0.9, start_step=10, end_step=110, frequency=10)
    assert schedule.sparsity_at(0) == 0.0 and schedule.sparsity_at(10) == 0.0
    for t in (20, 50, 90):
        assert schedule.sparsity_at(t) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - (t - 10) / 100) ** 3)
    assert schedule.sparsity_at(25) == schedule.sparsity_at(20), "held between pruning steps"
    assert schedule.sparsity_at(110) == schedule.sparsity_at(500) == 0.9
    assert [t for t in range(0, 130) if schedule.is_update_step(t)] == list(range(10, 120, 10))
    values = [schedule.sparsity_at(t) for t in range(0, 130)]
    assert values == sorted(values), "monotone"
    with pytest.raises(ValueError):
        CubicSchedule(0.5, 0.1, 0, 10)


def trainer_for(model, callback, out, **args):
    defaults = dict(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=5e-3, weight_decay=0.1, max_steps=8,
        logging_steps=2, report_to=[], save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    defaults.update(args)
    return transformers.Trainer(
        model=model, args=transformers.TrainingArguments(**defaults), train_dataset=RandomTokens(32), callbacks=[callback]
    )


def test_structured_movement_ranks_heads_and_neurons_by_summed_movement():
    model = fresh().train()
    method = StructuredMovementPruning()
    inputs = dummy_inputs("SparseBertForSequenceClassification")
    for labels in ([0, 1], [1, 1]):  # scores accumulate over steps
        model.zero_grad()
        model(**inputs, labels=torch.tensor(labels)).loss.backward()
        method.observe(model)
    movement = {name: -(m.weight * m.weight.grad) for name, m in model.masked_linears().items()}  # the last step
    masks = method.masks(model, 0.5)
    assert pattern_violations(method.pattern, masks, model.config.num_attention_heads) == []
    heads, prefix = model.config.num_attention_heads, "bert.encoder.layer.0."
    scores = method.scores(model)
    assert not torch.allclose(scores[prefix + "intermediate.dense"], movement[prefix + "intermediate.dense"])  # two steps summed
    head_score = sum(scores[prefix + f"attention.self.{m}"].reshape(heads, -1).sum(1) for m in ("query", "key", "value"))
    head_score = head_score + scores[prefix + "attention.output.dense"].reshape(48, heads, -1).sum(dim=(0, 2))
    kept_heads = masks[prefix + "attention.output.dense"].reshape(48, heads, -1).any(dim=(0, 2))
    assert int(kept_heads.sum()) == heads - round(0.5 * heads)
    assert head_score[kept_heads].min() > head_score[~kept_heads].max()
    neuron_score = scores[prefix + "intermediate.dense"].sum(1) + scores[prefix + "output.dense"].sum(0)
    kept_neurons = masks[prefix + "intermediate.dense"].any(dim=1)
    assert int(kept_neurons.sum()) == 32 and neuron_score[kept_neurons].min() > neuron_score[~kept_neurons].max()
    # not the magnitude ranking: the same model pruned by L1 norm keeps other neurons
    assert not torch.equal(StructuredPruning().masks(model, 0.5)[prefix + "intermediate.dense"], masks[prefix + "intermediate.dense"])
    restored = StructuredMovementPruning()
    restored.load_state_dict(method.state_dict())
    assert all(torch.equal(m, restored.masks(model, 0.5)[name]) for name, m in masks.items())
    with pytest.raises(RuntimeError, match="call observe"):
        StructuredMovementPruning().masks(fresh(), 0.5)


@pytest.mark.parametrize("method", [StructuredMovementPruning, StructuredFisherPruning])
def test_structured_learned_scores_in_the_trainer(tmp_path, method):
    model = fresh()
    # the schedule starts at step 0 as `hf-sparse finetune --prune_method` does: no scores exist yet
    callback = PruningCallback(method(), CubicSchedule(0.0, 0.5, 0, 8, 2), model)
    trainer_for(model, callback, tmp_path).train()
    assert [h["step"] for h in callback.history] == [0, 2, 4, 6, 8] and callback.history[0]["sparsity"] == 0
    assert pattern_violations("structured:heads+neurons", model.get_masks(), model.config.num_attention_heads) == []
    for name, mask in model.get_masks().items():
        if name.endswith("intermediate.dense"):
            assert int((~mask.any(dim=1)).sum()) == 32, name
    for module in model.masked_linears().values():
        assert torch.all(module.weight[~module.weight_mask] == 0)


def gate_gradients(model, inputs, labels):
    """d loss / d g for a gate g = 1 multiplying each head's context output and each FFN neuron's activation, measured
    with real gates on the inputs of the attention output and FFN output layers (independent of the method's formula)."""
    heads, gates, handles = model.config.num_attention_heads, {}, []
    for name, module in model.masked_linears().items():
        if name.endswith("attention.output.dense") or (name.endswith("output.dense") and "attention" not in name):
            units = heads if "attention" in name else module.weight.shape[1]
            gate = gates[name] = torch.ones(units, requires_grad=True)
            width = module.weight.shape[1] // units
            handles.append(module.register_forward_pre_hook(lambda m, args, g=gate, w=width: (args[0] * g.repeat_interleave(w),)))
    model.zero_grad()
    model(**inputs, labels=torch.tensor(labels)).loss.backward()
    for handle in handles:
        handle.remove()
    return {name: gate.grad.clone() for name, gate in gates.items()}


def test_structured_fisher_ranks_units_by_summed_squared_gate_gradients():
    model = fresh().train()  # no dropout in the tiny config: the gated pass and the plain one see the same network
    method = StructuredFisherPruning()
    inputs = dummy_inputs("SparseBertForSequenceClassification")
    expected = {}
    for labels in ([0, 1], [1, 1], [1, 0]):  # squares accumulate over steps
        for name, grad in gate_gradients(model, inputs, labels).items():
            expected[name] = expected.get(name, 0) + grad.square()
        model.zero_grad()
        model(**inputs, labels=torch.tensor(labels)).loss.backward()
        method.observe(model)
    scores = method.scores(model)
    assert sorted(scores) == sorted(expected)
    for name in expected:
        assert torch.allclose(scores[name], expected[name], rtol=1e-4, atol=1e-10), name
    masks = method.masks(model, 0.5)
    assert pattern_violations(method.pattern, masks, model.config.num_attention_heads) == []
    heads, prefix = model.config.num_attention_heads, "bert.encoder.layer.0."
    kept_heads = masks[prefix + "attention.output.dense"].reshape(48, heads, -1).any(dim=(0, 2))
    head_score = expected[prefix + "attention.output.dense"]
    assert int(kept_heads.sum()) == heads - round(0.5 * heads) and head_score[kept_heads].min() > head_score[~kept_heads].max()
    kept_neurons = masks[prefix + "intermediate.dense"].any(dim=1)
    neuron_score = expected[prefix + "output.dense"]
    assert int(kept_neurons.sum()) == 32 and neuron_score[kept_neurons].min() > neuron_score[~kept_neurons].max()
    restored = StructuredFisherPruning()
    restored.load_state_dict(method.state_dict())
    assert all(torch.equal(m, restored.masks(model, 0.5)[name]) for name, m in masks.items())
    with pytest.raises(RuntimeError, match="call observe"):
        StructuredFisherPruning().masks(fresh(), 0.5)


def test_structured_fisher_keeps_a_unit_whose_movement_cancels():
    """Two batches on which a neuron changes the loss by +d and -d: summed movement calls it useless, Fisher does not."""
    model = fresh().train()
    prefix = "bert.encoder.layer.0."
    out = model.masked_linears()[prefix + "output.dense"]
    fisher, movement = StructuredFisherPruning(("neurons",)), StructuredMovementPruning(("neurons",))
    for sign in (1.0, -1.0):
        model.zero_grad()
        for module in model.masked_linears().values():
            module.weight.grad = torch.zeros_like(module.weight)
        out.weight.grad[:, 0] = sign / out.weight[:, 0]  # neuron 0's gate gradient is +-48 on the two steps
        out.weight.grad[:, 1] = 0.01 / out.weight[:, 1]  # neuron 1: a small, steady effect
        fisher.observe(model)
        movement.observe(model)
    assert fisher.scores(model)[prefix + "output.dense"][0] == pytest.approx(2 * 48**2)
    assert fisher.masks(model, 0.5)[prefix + "intermediate.dense"][0].all()
    neuron_movement = movement.neuron_scores({"intermediate.dense": prefix + "intermediate.dense", "output.dense": prefix + "output.dense"},
                                             movement.scores(model))
    assert neuron_movement[0] == pytest.approx(0, abs=1e-4)  # cancelled out: movement ranks it with the useless neurons


@pytest.mark.parametrize("method", [MovementPruning, StructuredMovementPruning, StructuredFisherPruning])
def test_scores_skip_a_step_with_non_finite_gradients(method):
    model = fresh().train()
    method = method()
    model(**dummy_inputs("SparseBertForSequenceClassification"), labels=torch.tensor([0, 1])).loss.backward()
    method.observe(model)
    before = method.state_dict()
    ffn_output = model.masked_linears()["bert.encoder.layer.0.output.dense"]  # scored by every method here
    ffn_output.weight.grad[0, 0] = float("inf")  # an overflowing fp16 step
    method.observe(model)
    assert all(torch.equal(before[name], score) for name, score in method.state_dict().items())
    ffn_output.weight.grad[0, 0] = 0.0
    method.observe(model)  # a finite step counts again
    assert not all(torch.equal(before[name], score) for name, score in method.state_dict().items())


def test_callback_prunes_on_the_cubic_schedule(tmp_path):
    model = fresh()
    schedule = CubicSchedule(0.0, 0.9, start_step=2, end_step=8, frequency=2)
    callback = PruningCallback(MagnitudePruning(), schedule, model)
    trainer = trainer_for(model, callback, tmp_path)
    trainer.train()
    assert [h["step"] for h in callback.history] == [2, 4, 6, 8]
    for entry in callback.history:
        assert entry["target"] == pytest.approx(schedule.sparsity_at(entry["step"]), abs=1e-6)
        assert entry["sparsity"] == pytest.approx(entry["target"], abs=1e-3)
    assert model.sparsity() == pytest.approx(0.9, abs=1e-3)
    for module in model.masked_linears().values():
        assert torch.all(module.weight[~module.weight_mask] == 0)
    written = json.loads((tmp_path / "pruning_history.json").read_text())
    assert written == callback.history


def run_movement(out, max_steps=8, save_steps=None, resume=None, seed_model=0, method=MovementPruning):
    model = fresh(seed=seed_model)
    callback = PruningCallback(method(), CubicSchedule(0.0, 0.8, 2, 8, 2), model)
    extra = dict(save_strategy="steps", save_steps=save_steps) if save_steps else {}
    trainer = trainer_for(model, callback, out, max_steps=max_steps, **extra)
    trainer.train(resume_from_checkpoint=resume)
    return model, callback


@pytest.mark.parametrize(
    "method", [MovementPruning, lambda: HybridPruning(StructuredMovementPruning(), 0.5, 0.8)], ids=["movement", "hybrid"]
)
def test_kill_and_resume_gives_the_same_masks(tmp_path, method):
    straight, _ = run_movement(tmp_path / "straight", method=method)
    # "killed" after the step-4 checkpoint: a new process would rebuild everything and resume
    run_movement(tmp_path / "run", max_steps=8, save_steps=4, method=method)
    assert (tmp_path / "run" / "checkpoint-4" / "pruning_state.safetensors").is_file()
    history = json.loads((tmp_path / "run" / "checkpoint-4" / "pruning_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    resumed, callback = run_movement(tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint-4"), seed_model=5, method=method)
    assert [h["step"] for h in callback.history] == [2, 4, 6, 8], "history continues from the checkpoint"
    for name, mask in straight.get_masks().items():
        assert torch.equal(mask, resumed.get_masks()[name]), name
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def _heads_per_layer(model, masks):
    heads = model.config.num_attention_heads
    return [int(m.reshape(heads, -1).any(dim=1).sum()) for n, m in masks.items() if n.endswith("attention.self.value")]


def test_global_structured_floor_keeps_each_layers_best_heads():
    model = fresh(num_hidden_layers=3)  # 3 layers x 4 heads
    heads = model.config.num_attention_heads
    with torch.no_grad():  # layer 0's heads score far above the others: a plain global ranking keeps only them
        for name, module in model.masked_linears().items():
            if ".layer.0." in name:
                module.weight.mul_(100)
    plain = StructuredPruning(("heads",), scope="global").masks(model, 0.75)  # 3 of 12 heads stay
    assert _heads_per_layer(model, plain) == [3, 0, 0]
    floored = StructuredPruning(("heads",), scope="global", min_heads_per_layer=1).masks(model, 0.75)
    assert _heads_per_layer(model, floored) == [1, 1, 1]
    # each layer keeps its own best head: the highest summed |W| of Q, K, V rows and output columns
    for layer in (1, 2):
        prefix = f"bert.encoder.layer.{layer}.attention."
        modules = model.masked_linears()
        score = sum(modules[prefix + f"self.{m}"].weight.abs().reshape(heads, -1).sum(1) for m in ("query", "key", "value"))
        score = score + modules[prefix + "output.dense"].weight.abs().reshape(-1, heads, 48 // heads).sum(dim=(0, 2))
        kept = floored[prefix + "self.value"].reshape(heads, -1).any(dim=1)
        assert int(score.argmax()) == int(kept.nonzero()[0, 0])
    floored2 = StructuredPruning(("heads",), scope="global", min_heads_per_layer=1).masks(model, 0.5)  # 6 heads: 3 by the floor, 3 free
    assert sum(_heads_per_layer(model, floored2)) == 6 and min(_heads_per_layer(model, floored2)) >= 1
    assert _heads_per_layer(model, floored2)[0] == 4


def test_structured_floor_errors_and_never_revives_pruned_heads():
    with pytest.raises(ValueError, match="apply to scope='global'"):
        StructuredPruning(("heads",), scope="layer", min_heads_per_layer=1)
    with pytest.raises(ValueError, match=">= 0"):
        StructuredPruning(("heads",), scope="global", min_neurons_per_layer=-1)
    model = fresh(num_hidden_layers=3)
    method = StructuredPruning(("heads", "neurons"), scope="global", min_heads_per_layer=2)
    with pytest.raises(ValueError, match=r"min_heads_per_layer=2 reserves 6 heads over 3 layers, but sparsity 0.75 keeps only 3 of 12"):
        method.check_floors(model, 0.75)
    with pytest.raises(ValueError, match="reserves 6 heads"):
        method.masks(model, 0.75)
    method.check_floors(model, 0.5)  # 6 of 12 kept: fits
    # a layer whose heads are all pruned already stays so: masks only shrink
    layer_scope = StructuredPruning(("heads",)).masks(model, 0.0)
    for name in layer_scope:
        if ".layer.2." in name:
            layer_scope[name] = torch.zeros_like(layer_scope[name])
    model.set_masks(layer_scope)
    masks = StructuredPruning(("heads",), scope="global", min_heads_per_layer=1).masks(model, 0.5)
    assert _heads_per_layer(model, masks)[2] == 0 and sum(_heads_per_layer(model, masks)) == 6


def _set_unit_magnitudes(model, layer: int, heads: list[float], neurons: list[float]):
    """Every weight of head h (its Q, K, V rows and output columns) = heads[h]; of FFN neuron j = neurons[j]."""
    prefix = f"bert.encoder.layer.{layer}."
    modules = model.masked_linears()
    head_size = model.config.hidden_size // model.config.num_attention_heads
    rows = torch.tensor(heads).repeat_interleave(head_size)
    with torch.no_grad():
        for m in ("query", "key", "value"):
            modules[prefix + f"attention.self.{m}"].weight.copy_(rows[:, None].expand_as(modules[prefix + f"attention.self.{m}"].weight))
        out = modules[prefix + "attention.output.dense"].weight
        out.copy_(rows[None, :].expand_as(out))
        modules[prefix + "intermediate.dense"].weight.copy_(torch.tensor(neurons)[:, None].expand_as(modules[prefix + "intermediate.dense"].weight))
        ffn_out = modules[prefix + "output.dense"].weight
        ffn_out.copy_(torch.tensor(neurons)[None, :].expand_as(ffn_out))


def _kept_units(model, masks, layer: int) -> tuple[list[int], list[int]]:
    prefix = f"bert.encoder.layer.{layer}."
    heads = model.config.num_attention_heads
    head_kept = masks[prefix + "attention.self.value"].reshape(heads, -1).any(dim=1)
    neuron_kept = masks[prefix + "output.dense"].any(dim=0)
    return head_kept.nonzero().flatten().tolist(), neuron_kept.nonzero().flatten().tolist()


def test_joint_allocation_ranks_heads_and_neurons_by_score_per_weight():
    # 4 heads of 12 x (3 x 48 + 48) = 2,304 weights, 64 neurons of 48 + 48 = 96; a layer has 15,360; 25% keeps 3,840
    model = fresh(num_hidden_layers=1)
    neurons = [1.0 + 0.001 * j for j in range(64)]  # neuron 63 scores highest
    _set_unit_magnitudes(model, 0, heads=[0.2, 3.0, 0.2, 0.2], neurons=neurons)
    masks = StructuredPruning(scope="layer", allocation="joint").masks(model, 0.75)
    # head 1 first (|W| 3.0 per weight): 2,304 kept, 1,536 left = the 16 best neurons
    assert _kept_units(model, masks, 0) == ([1], list(range(48, 64)))
    assert kept_fraction(masks) == 3840 / 15360
    # every head ahead of the neurons: head 0 fits, no second head does (2,304 > 1,536 left); the neurons fill the rest
    _set_unit_magnitudes(model, 0, heads=[2.0, 1.5, 1.5, 1.5], neurons=neurons)
    assert _kept_units(model, StructuredPruning(allocation="joint").masks(model, 0.75), 0) == ([0], list(range(48, 64)))
    # neurons ahead of every head: 40 neurons take the whole budget, no head is kept ...
    _set_unit_magnitudes(model, 0, heads=[0.5, 0.6, 0.5, 0.5], neurons=neurons)
    assert _kept_units(model, StructuredPruning(allocation="joint").masks(model, 0.75), 0) == ([], list(range(24, 64)))
    # ... unless a floor keeps the layer's best head
    floored = StructuredPruning(allocation="joint", min_heads_per_layer=1).masks(model, 0.75)
    assert _kept_units(model, floored, 0) == ([1], list(range(48, 64)))
    # the uniform allocation keeps 1 of 4 heads and 16 of 64 neurons whatever the scores
    uniform = StructuredPruning().masks(model, 0.75)
    assert [len(units) for units in _kept_units(model, uniform, 0)] == [1, 16]


def test_joint_allocation_global_scope_and_pruned_units_stay_pruned():
    model = fresh(num_hidden_layers=2)
    low = [0.1 + 0.001 * j for j in range(64)]
    _set_unit_magnitudes(model, 0, heads=[5.0, 0.1, 0.1, 0.1], neurons=[2.0] * 64)
    _set_unit_magnitudes(model, 1, heads=[0.1, 0.1, 0.1, 0.1], neurons=low)
    # over both layers (30,720 weights, 25% = 7,680): layer 0's head 0 and all its 64 neurons (2,304 + 6,144 = 8,448) do not all fit
    masks = StructuredPruning(scope="global", allocation="joint").masks(model, 0.75)
    assert _kept_units(model, masks, 0) == ([0], list(range(0, 56)))  # 2,304 + 56 x 96 = 7,680
    assert _kept_units(model, masks, 1) == ([], [])
    # layer scope: each layer spends its own 3,840
    layer = StructuredPruning(allocation="joint").masks(model, 0.75)
    assert _kept_units(model, layer, 1) == ([], list(range(24, 64)))
    # a unit pruned earlier is never kept again, however high it scores now
    masks = {name: torch.ones_like(m.weight_mask) for name, m in model.masked_linears().items()}
    prefix = "bert.encoder.layer.0.attention."
    for m in ("query", "key", "value"):
        masks[prefix + f"self.{m}"][:12] = False  # head 0 (head size 12)
    masks[prefix + "output.dense"][:, :12] = False
    model.set_masks(masks)
    _set_unit_magnitudes(model, 0, heads=[5.0, 0.1, 0.1, 0.1], neurons=[2.0] * 64)  # the weights score high again
    assert _kept_units(model, StructuredPruning(allocation="joint").masks(model, 0.75), 0) == ([], list(range(40)))
    # even when the budget has room for it
    assert _kept_units(model, StructuredPruning(allocation="joint").masks(model, 0.0), 0) == ([1, 2, 3], list(range(64)))


def test_joint_allocation_errors():
    with pytest.raises(ValueError, match="allocation must be one of"):
        StructuredPruning(allocation="greedy")
    with pytest.raises(ValueError, match="needs both structures"):
        StructuredPruning(("heads",), allocation="joint")
    model = fresh(num_hidden_layers=2)
    method = StructuredPruning(allocation="joint", min_heads_per_layer=2)  # 2 x 2,304 = 4,608 > 3,840 per layer at 75%
    with pytest.raises(ValueError, match="reserve 4,608 weights in a layer, but sparsity 0.75 keeps only 3,840 of 15,360"):
        method.check_floors(model, 0.75)
    with pytest.raises(ValueError, match="reserve 4,608 weights"):
        method.masks(model, 0.75)
    method.check_floors(model, 0.5)
    glob = StructuredPruning(scope="global", allocation="joint", min_heads_per_layer=2)
    with pytest.raises(ValueError, match="reserve 9,216 weights in 2 layers, but sparsity 0.75 keeps only 7,680 of 30,720"):
        glob.check_floors(model, 0.75)


def test_hybrid_removes_units_then_the_smallest_weights_inside_them():
    model = fresh()  # 4 heads, 64 neurons per layer
    method = HybridPruning(StructuredPruning(), unit_sparsity=0.5, target_sparsity=0.75)
    units = StructuredPruning().masks(model, 0.5)
    masks = method.masks(model, 0.75)
    for name, mask in masks.items():
        weight = model.masked_linears()[name].weight.abs()
        assert int(mask.sum()) == mask.numel() - round(0.75 * mask.numel()), name  # every layer at the target
        assert not (mask & ~units[name]).any(), name  # nothing outside the kept units
        assert weight[mask].min() >= weight[units[name] & ~mask].max(), name  # the largest weights of the kept units
    model.set_masks(masks)
    for name, mask in model.get_masks().items():
        if name.endswith("attention.output.dense"):
            assert int(mask.reshape(48, 4, -1).any(dim=(0, 2)).sum()) == 2  # half the heads, as the units' target says
        if name.endswith("intermediate.dense"):
            assert int(mask.any(dim=1).sum()) == 32
    # on the way (schedule at half the target) the units are at half theirs; units only shrink afterwards
    early, gradual = fresh(), HybridPruning(StructuredPruning(), unit_sparsity=0.5, target_sparsity=0.75)
    early.set_masks(gradual.masks(early, 0.375))
    heads = [int(m.reshape(48, 4, -1).any(dim=(0, 2)).sum()) for n, m in early.get_masks().items() if n.endswith("attention.output.dense")]
    assert heads == [3] * len(heads)
    units_then = dict(gradual._unit_masks)
    late = gradual.masks(early, 0.75)
    assert all(not (late[n] & ~m).any() for n, m in units_then.items())
    # the units and a learned ranking's scores travel with the method (Trainer resume)
    state = method.state_dict()
    assert method.stateful and sorted(state) == sorted(f"unit_mask/{name}" for name in masks)
    restored = HybridPruning(StructuredPruning(), 0.5, 0.75)
    restored.load_state_dict(state)
    assert all(torch.equal(restored._unit_masks[name], state[f"unit_mask/{name}"]) for name in masks)
    with pytest.raises(ValueError, match="hybrid pruning state has keys it did not write"):
        restored.load_state_dict({"scores/x": torch.zeros(1)})
    with pytest.raises(ValueError, match="0 < unit_sparsity < target_sparsity < 1, got unit_sparsity=0.9, target_sparsity=0.9"):
        HybridPruning(StructuredPruning(), 0.9, 0.9)
    with pytest.raises(TypeError, match="units must be a StructuredPruning method, got MagnitudePruning"):
        HybridPruning(MagnitudePruning(), 0.5, 0.9)


def test_hybrid_ends_at_the_target_when_later_units_leave_a_layer_short():
    class SmallUnitsFirst(StructuredPruning):
        def scores(self, model):  # keeps the units of smallest weights, as a learned ranking may
            return {name: -score for name, score in super().scores(model).items()}

    model = fresh()
    method = HybridPruning(SmallUnitsFirst(), unit_sparsity=0.4, target_sparsity=0.7)
    # on the way: 1 of 4 heads gone (round(4 x 0.371)), 40% of the attention weights pruned inside the other 3
    model.set_masks(method.masks(model, 0.65))
    before = model.get_masks()
    # the last step removes a second head (a quarter of the attention weights, half of them alive) for 5 more points
    final = method.masks(model, 0.7)
    short = 0  # layers where the weights still alive in the kept units no longer reach the target
    for name, mask in final.items():
        keep = mask.numel() - round(0.7 * mask.numel())
        assert int(mask.sum()) == keep, name
        short += int((mask & before[name]).sum()) < keep
    assert short > 0  # what the test is about: masks that only shrank would end sparser than the target here
