"""Sparse transfer: the pattern lock under every training mode, drift detection, QAT, the task runner."""

import pytest
import torch
import transformers

from conftest import build, dummy_inputs, run_two_process_worker
from test_training import RandomTokens

from hf_sparse import MaskDriftError, SparseBertForMaskedLM, SparseBertForSequenceClassification, SparsityCallback
from hf_sparse.transfer import convert_qat, mask_drift, prepare_qat, reference_masks

HEAD = "SparseBertForSequenceClassification"


def training_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=5e-3, weight_decay=0.1, max_steps=4,
        logging_steps=1, report_to=[], save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    values.update(overrides)
    return transformers.TrainingArguments(**values)


def locked_train(model, tmp_path, callbacks=(), resume=None, **overrides):
    lock = SparsityCallback()
    trainer = transformers.Trainer(
        model=model, args=training_args(tmp_path, **overrides), train_dataset=RandomTokens(32), callbacks=[lock, *callbacks]
    )
    trainer.train(resume_from_checkpoint=resume)
    return lock


def assert_pattern_kept(model, before, weights_before):
    assert mask_drift(model, before) == []
    changed = [n for n, m in model.masked_linears().items() if not torch.equal(m.weight, weights_before[n])]
    assert changed, "nothing trained"


def snapshot(model):
    return reference_masks(model), {n: m.weight.detach().clone() for n, m in model.masked_linears().items()}


@pytest.mark.parametrize(
    "mode",
    [
        dict(),  # AdamW + weight decay
        dict(gradient_accumulation_steps=2, per_device_train_batch_size=2),
        dict(bf16=True),  # autocast on CPU
        dict(torch_compile=True, torch_compile_backend="aot_eager"),
        dict(gradient_checkpointing=True),  # the masked forward runs again in the backward pass
    ],
    ids=["adamw_weight_decay", "grad_accumulation", "bf16_autocast", "torch_compile", "gradient_checkpointing"],
)
def test_pattern_lock_has_zero_drift(tmp_path, mode):
    model = build(HEAD, sparsity=0.9)
    before, weights = snapshot(model)
    lock = locked_train(model, tmp_path, **mode)
    assert lock.checks >= 2  # at the start and at the end
    assert_pattern_kept(model, before, weights)


def test_pattern_lock_survives_resume(tmp_path):
    model = build(HEAD, sparsity=0.85)
    before, _ = snapshot(model)
    locked_train(model, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    resumed = build(HEAD, sparsity=0.5, seed=7)  # other masks and weights: the resume must replace them
    assert mask_drift(resumed, before) != []
    lock = locked_train(resumed, tmp_path / "run", max_steps=6, resume=str(checkpoint))
    assert all(torch.equal(lock.reference[k], before[k]) for k in before)  # the reference is the checkpoint's pattern
    assert mask_drift(resumed, before) == []


@pytest.mark.parametrize("launcher, port", [("torchrun", 29541), ("accelerate", 29543)])
def test_pattern_lock_under_two_process_ddp(tmp_path, launcher, port):
    run_two_process_worker("ddp_transfer_worker.py", tmp_path, port=port, launcher=launcher)
    from safetensors.torch import load_file

    initial = load_file(str(tmp_path / "initial.safetensors"))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for key in initial:
        if key.endswith("weight_mask"):
            assert torch.equal(ranks[0][key], initial[key]) and torch.equal(ranks[1][key], initial[key]), key
            weight = ranks[0][key.replace("weight_mask", "weight")]
            assert torch.all(weight[~initial[key].bool()] == 0), key
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key


class BreakMask(transformers.TrainerCallback):
    """Flips one kept entry of one mask at a given step (what a buggy callback could do)."""

    def __init__(self, model, step, revive_weight=False):
        self.model, self.step, self.revive_weight = model, step, revive_weight

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            module = next(iter(self.model.masked_linears().values()))
            with torch.no_grad():
                pruned = (~module.weight_mask).nonzero()[0]
                if self.revive_weight:  # the mask stays, a pruned weight comes back
                    module.weight[tuple(pruned)] = 0.5
                else:  # the mask changes
                    module.weight_mask[tuple(pruned)] = True


@pytest.mark.parametrize("revive_weight", [False, True], ids=["mask_flipped", "pruned_weight_revived"])
def test_drift_is_detected(tmp_path, revive_weight):
    model = build(HEAD, sparsity=0.9)
    with pytest.raises(MaskDriftError, match="pruned weights are not zero" if revive_weight else "mask entries differ"):
        locked_train(model, tmp_path, callbacks=[BreakMask(model, 2, revive_weight)])


def test_drift_detected_at_the_step_with_check_every(tmp_path):
    model = build(HEAD, sparsity=0.9)
    lock = SparsityCallback(check_every=1)
    trainer = transformers.Trainer(
        model=model, args=training_args(tmp_path, max_steps=6), train_dataset=RandomTokens(32), callbacks=[lock, BreakMask(model, 3)]
    )
    with pytest.raises(MaskDriftError, match="after step 4"):  # broken after the lock's check of step 3: caught at the next
        trainer.train()


def test_reference_from_upstream_checkpoint(tmp_path):
    upstream = build("SparseBertForMaskedLM", sparsity=0.8)
    upstream.save_pretrained(tmp_path / "upstream")
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "upstream", num_labels=3)
    reference = reference_masks(tmp_path / "upstream")
    assert mask_drift(model, reference) == []
    other = build(HEAD, sparsity=0.8, seed=5)
    problems = mask_drift(other, reference)
    assert problems and all("mask entries differ" in p for p in problems)
    with pytest.raises(MaskDriftError, match="at the start of training"):
        locked = SparsityCallback(reference=tmp_path / "upstream")
        transformers.Trainer(model=other, args=training_args(tmp_path / "t"), train_dataset=RandomTokens(8), callbacks=[locked]).train()


def test_lock_refuses_a_plain_model(tmp_path):
    plain = build(HEAD, sparsity=0.5).to_dense()
    trainer = transformers.Trainer(model=plain, args=training_args(tmp_path), train_dataset=RandomTokens(8), callbacks=[SparsityCallback()])
    with pytest.raises(TypeError, match="from_dense"):
        trainer.train()


# ---- QAT -----------------------------------------------------------------------------------------------
def test_qat_keeps_zeros_and_converts_onto_the_int8_grid(tmp_path):
    model = build(HEAD, sparsity=0.8)
    before, weights = snapshot(model)
    keys = set(model.state_dict())
    prepare_qat(model)
    assert set(model.state_dict()) == keys  # no new state: checkpoints keep their format
    locked_train(model, tmp_path, max_steps=5)
    model.eval()
    inputs = dummy_inputs(HEAD)
    with torch.no_grad():
        simulated = model(**inputs).logits
    ranges = convert_qat(model)
    assert set(ranges) == set(model.masked_linears())
    assert all(r["input_min"] <= 0 <= r["input_max"] for r in ranges.values())
    assert_pattern_kept(model, before, weights)
    for name, module in model.masked_linears().items():
        scale = module.weight.abs().amax(dim=1, keepdim=True) / 127
        levels = module.weight / torch.where(scale > 0, scale, torch.ones_like(scale))
        assert torch.allclose(levels, levels.round(), atol=1e-3), name
        assert levels.abs().max() <= 127 + 1e-3
    with torch.no_grad():
        float_out = model(**inputs).logits  # int8 weights, float activations
    scale = float_out.abs().max()
    assert (simulated - float_out).abs().max() <= 0.1 * scale  # int8 activations: close, relative to the outputs
    model.save_pretrained(tmp_path / "saved")
    reloaded = SparseBertForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert mask_drift(reloaded, before) == []


def test_qat_changes_outputs_and_needs_masked_layers():
    model = build(HEAD, sparsity=0.5).eval()
    inputs = dummy_inputs(HEAD)
    with torch.no_grad():
        plain = model(**inputs).logits
        prepare_qat(model)
        quantized = model(**inputs).logits
    assert not torch.equal(plain, quantized)  # fake quantization is really on
    assert (plain - quantized).abs().max() <= 0.1 * plain.abs().max()
    with pytest.raises(ValueError, match="MaskedLinear"):
        prepare_qat(model.to_dense())
    with pytest.raises(ValueError, match="not prepared"):
        convert_qat(build(HEAD, sparsity=0.5))
