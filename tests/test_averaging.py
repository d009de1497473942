"""WeightAveragingCallback: the model ends as the uniform average of its weights over the last steps."""

from types import SimpleNamespace

import pytest
import torch
import transformers

from conftest import build
from test_training import RandomTokens
from test_transfer import training_args

from hf_sparse import SparsityCallback, WeightAveragingCallback
from hf_sparse.transfer import mask_drift, reference_masks
from hf_sparse.transfer.averaging import AVERAGE_FILE

HEAD = "SparseBertForSequenceClassification"


class Recorder(transformers.TrainerCallback):
    """The trainable parameters after every optimizer step."""

    def __init__(self):
        self.steps = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(model, out, callbacks, resume=None, **overrides):
    trainer = transformers.Trainer(
        model=model, args=training_args(out, **overrides), train_dataset=RandomTokens(32), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_the_model_ends_as_the_average_of_the_steps_after_start(tmp_path):
    model = build(HEAD, sparsity=0.0)
    recorder = Recorder()
    averaging = WeightAveragingCallback(start=0.5)
    train(model, tmp_path, [averaging, recorder], max_steps=8)
    assert averaging.start_step == 4 and averaging.steps_averaged == 4
    final = dict(model.named_parameters())
    for name, last in recorder.steps[8].items():
        expected = torch.stack([recorder.steps[step][name] for step in (5, 6, 7, 8)]).mean(0)
        torch.testing.assert_close(final[name].detach(), expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(final["classifier.weight"].detach(), recorder.steps[8]["classifier.weight"])  # not the last step


def test_the_locked_pattern_survives_averaging(tmp_path):
    model = build(HEAD, sparsity=0.85)
    before = reference_masks(model)
    weights = {n: m.weight.detach().clone() for n, m in model.masked_linears().items()}
    averaging = WeightAveragingCallback(start=0.25)
    train(model, tmp_path, [SparsityCallback(), averaging], max_steps=8)
    assert averaging.steps_averaged == 6
    assert mask_drift(model, before) == []
    assert any(not torch.equal(m.weight, weights[n]) for n, m in model.masked_linears().items())


def test_a_resumed_run_ends_with_the_same_average(tmp_path):
    whole = build(HEAD, sparsity=0.5)
    train(whole, tmp_path / "whole", [WeightAveragingCallback(start=0.25)], max_steps=8)
    first = build(HEAD, sparsity=0.5)
    train(first, tmp_path / "run", [WeightAveragingCallback(start=0.25)], max_steps=8, save_strategy="steps", save_steps=4)
    assert (tmp_path / "run" / "checkpoint-4" / AVERAGE_FILE).is_file()
    resumed = build(HEAD, sparsity=0.5, seed=3)  # other weights: the resume must replace them, the average too
    averaging = WeightAveragingCallback(start=0.25)
    train(resumed, tmp_path / "run", [averaging], resume=str(tmp_path / "run" / "checkpoint-4"), max_steps=8)
    assert averaging.steps_averaged == 6
    expected = dict(whole.named_parameters())
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name].detach(), rtol=1e-5, atol=1e-6)


def test_resuming_without_the_saved_average_fails(tmp_path):
    model = build(HEAD, sparsity=0.5)
    train(model, tmp_path, [WeightAveragingCallback(start=0.25)], max_steps=8, save_strategy="steps", save_steps=4)
    (tmp_path / "checkpoint-4" / AVERAGE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"checkpoint-4/weight_average.safetensors: resuming at step 4, after weight averaging began \(step 2\)"):
        train(build(HEAD, sparsity=0.5), tmp_path, [WeightAveragingCallback(start=0.25)],
              resume=str(tmp_path / "checkpoint-4"), max_steps=8)


def test_averaging_errors():
    with pytest.raises(ValueError, match=r"start is a fraction of training in \[0, 1\), got 1"):
        WeightAveragingCallback(start=1)
    averaging = WeightAveragingCallback(start=0.5)
    with pytest.raises(ValueError, match="cannot be combined with load_best_model_at_end=True"):
        averaging.on_train_begin(SimpleNamespace(load_best_model_at_end=True), SimpleNamespace(max_steps=4, global_step=0), None)
