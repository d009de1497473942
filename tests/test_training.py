"""The stock transformers Trainer keeps pruned weights at zero; gradient accumulation gives the right loss."""

import pytest
import torch
import transformers
from torch.utils.data import Dataset

from conftest import build, dummy_inputs


class RandomTokens(Dataset):
    def __init__(self, n=16, seq=9, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 99, (n, seq), generator=gen)
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def train(model, tmp_path, **args):
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=5e-3, weight_decay=0.1,
        max_steps=3, logging_steps=1, report_to=[], save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    defaults.update(args)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**defaults), train_dataset=RandomTokens())
    trainer.train()
    return trainer


def test_trainer_keeps_pattern_with_weight_decay_and_accumulation(tmp_path):
    model = build("SparseBertForSequenceClassification", sparsity=0.9)
    before = {n: m.clone() for n, m in model.get_masks().items()}
    weights = {n: m.weight.detach().clone() for n, m in model.masked_linears().items()}
    train(model, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    for name, module in model.masked_linears().items():
        assert torch.equal(module.weight_mask, before[name]), name
        assert torch.all(module.weight[~before[name]] == 0), name
        assert not torch.equal(module.weight, weights[name]), f"{name} did not train"


def test_gradient_accumulation_loss_is_not_multiplied(tmp_path):
    """transformers 5 multiplies the logged loss under accumulation when forward takes **kwargs (#47688)."""
    full = build("SparseBertForSequenceClassification", sparsity=0.5)
    accum = build("SparseBertForSequenceClassification", sparsity=0.5)
    a = train(full, tmp_path / "a", max_steps=1, per_device_train_batch_size=4, optim="sgd")
    b = train(accum, tmp_path / "b", max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=2, optim="sgd")
    loss_a = a.state.log_history[0]["loss"]
    loss_b = b.state.log_history[0]["loss"]
    assert loss_b == pytest.approx(loss_a, rel=1e-4)
    for (name, p), (_, q) in zip(full.named_parameters(), accum.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_trainer_checkpoint_resume_restores_sparse_weights_exactly(tmp_path):
    straight = build("SparseBertForSequenceClassification", sparsity=0.8)
    train(straight, tmp_path / "straight", max_steps=4)

    first = build("SparseBertForSequenceClassification", sparsity=0.8)
    train(first, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    resumed = build("SparseBertForSequenceClassification", sparsity=0.1, seed=7)  # different start: must be overwritten
    trainer = transformers.Trainer(
        model=resumed,
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=5e-3, weight_decay=0.1,
            max_steps=4, report_to=[], save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
        ),
        train_dataset=RandomTokens(),
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    for name, mask in straight.get_masks().items():
        assert torch.equal(mask, resumed.get_masks()[name]), name
