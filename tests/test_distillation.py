"""Distillation and contrastive losses: zero/minimal where they should be, correct gradients; the trainer."""

import copy
import math

import pytest
import torch
import transformers

from hf_sparse.distillation import (
    DistillationConfig,
    DistillationTrainer,
    attention_loss,
    contrastive_loss,
    ensemble_logits,
    hidden_state_loss,
    kd_loss,
    same_example_positives,
    same_label_positives,
)
from hf_sparse.pruning import CubicSchedule, MagnitudePruning, PruningCallback

from conftest import build
from test_training import RandomTokens


def test_kd_loss_zero_for_identical_logits_and_matches_definition():
    logits = torch.randn(4, 7, 11)
    assert kd_loss(logits, logits.clone(), 2.0).abs() < 1e-6
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    p_t = torch.softmax(teacher / 3.0, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(student / 3.0, -1))).sum(-1).mean() * 9.0
    assert torch.allclose(kd_loss(student, teacher, 3.0), expected, atol=1e-6)


def test_kd_loss_mask_selects_positions():
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert torch.allclose(kd_loss(student, teacher, 2.0, mask), kd_loss(student[mask], teacher[mask], 2.0), atol=1e-6)


@pytest.mark.parametrize("name", ["kd", "hidden", "attention", "contrastive"])
def test_gradients_are_correct(name):
    torch.manual_seed(0)
    d = torch.float64
    if name == "kd":
        s, t = torch.randn(3, 5, dtype=d, requires_grad=True), torch.randn(3, 5, dtype=d)
        fn = lambda s: kd_loss(s, t, 2.0)  # noqa: E731
    elif name == "hidden":
        s, t = torch.randn(3, 2, 4, 6, dtype=d, requires_grad=True), torch.randn(3, 2, 4, 6, dtype=d)
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        fn = lambda s: hidden_state_loss(tuple(s), tuple(t), mask)  # noqa: E731
    elif name == "attention":
        s = torch.softmax(torch.randn(2, 2, 3, 4, 4, dtype=d), -1).requires_grad_(True)
        t = torch.softmax(torch.randn(2, 2, 3, 4, 4, dtype=d), -1)
        fn = lambda s: attention_loss(tuple(s), tuple(t))  # noqa: E731
    else:
        s, t = torch.randn(4, 6, dtype=d, requires_grad=True), torch.randn(8, 6, dtype=d)
        positives = same_example_positives(4, 2)
        fn = lambda s: contrastive_loss(s, t, positives, 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s,))


def test_hidden_and_attention_zero_when_equal():
    hidden = tuple(torch.randn(2, 5, 8) for _ in range(4))
    assert hidden_state_loss(hidden, hidden) == 0
    attn = tuple(torch.softmax(torch.randn(2, 3, 5, 5), -1) for _ in range(3))
    assert attention_loss(attn, attn).abs() < 1e-6
    with pytest.raises(ValueError, match=r"student layer 0 with teacher layer 0.*\(2, 2, 5, 5\) and \(2, 3, 5, 5\).*same number of heads"):
        attention_loss(tuple(a[:, :2] for a in attn), attn)
    # a 3-layer student against a 6-layer teacher maps to teacher layers 2, 4, 6 by default
    teacher = tuple(torch.randn(2, 5, 8) for _ in range(7))
    student = (teacher[0], teacher[2], teacher[4], teacher[6])
    assert hidden_state_loss(student, teacher) == 0


def test_contrastive_loss_definition_and_minimum():
    anchors = torch.eye(4, dtype=torch.float64)
    # candidates equal to anchors: the positive has similarity 1/T, negatives 0
    loss = contrastive_loss(anchors, anchors.clone(), same_example_positives(4, 1), temperature=0.1)
    assert loss == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 3)), rel=1e-5)
    worse = contrastive_loss(anchors, anchors.flip(0), same_example_positives(4, 1), temperature=0.1)
    assert worse > loss
    labels = torch.tensor([0, 0, 1, 1])
    positives = same_label_positives(labels, labels)
    assert positives.sum() == 8
    # with same-label positives the two same-label candidates share the mass
    sup = contrastive_loss(anchors, anchors, positives, temperature=0.1)
    expected = -math.log((math.exp(10) + 1) / (math.exp(10) + 3))
    assert sup == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="positives has shape"):
        contrastive_loss(anchors, anchors, positives[:2], 0.1)


def test_trainer_with_teacher_kd_zero_against_itself_and_all_terms_run(tmp_path):
    student = build("SparseBertForSequenceClassification", sparsity=0.0, attn_implementation="eager")
    teacher = student.to_dense()
    teacher.config._attn_implementation = "eager"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, learning_rate=1e-3, logging_steps=1,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=RandomTokens(16), teacher=teacher,
        distillation=DistillationConfig(task_weight=0.0, kd_weight=1.0),
    )
    batch = {k: torch.stack([RandomTokens(16)[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    student.train()
    assert trainer.compute_loss(student, batch).abs() < 1e-6, "KD against an identical teacher is zero"
    student.eval()
    assert torch.allclose(trainer.compute_loss(student, batch), student(**batch).loss), "evaluation: task loss only"
    full = DistillationConfig(task_weight=1.0, kd_weight=1.0, hidden_weight=1.0, attention_weight=1.0, prc_weight=0.1, snc_weight=0.1, fic_weight=0.1)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=RandomTokens(16), teacher=teacher, distillation=full,
        callbacks=[PruningCallback(MagnitudePruning(), CubicSchedule(0.0, 0.5, 1, 3, 1), student)],
    )
    trainer.train()
    pruning = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PruningCallback))
    # SnC snapshots: the model just before each later pruning step, i.e. at each earlier stage (dense ones skipped)
    expected = [h["sparsity"] for h in pruning.history[:-1] if h["sparsity"] > 0]
    assert expected, "the schedule must produce at least one sparse intermediate stage"
    assert [round(s.sparsity(), 6) for s in trainer.snapshots] == expected
    assert student.sparsity() == pytest.approx(0.5, abs=1e-3)
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all(math.isfinite(log["loss"]) for log in train_logs)
    terms = ("loss_task", "loss_kd", "loss_hidden", "loss_attention", "loss_prc", "loss_fic")
    assert all(all(key in log for key in terms) for log in train_logs), "each term's mean is logged"
    assert any("loss_snc" in log for log in train_logs[1:]), "SnC is logged once a snapshot exists"
    for log in train_logs:  # logging_steps=1: the terms add up to the step's loss
        assert sum(v for k, v in log.items() if k.startswith("loss_")) == pytest.approx(log["loss"], abs=2e-3)


def test_labelled_logits_only_matches_full_mlm():
    student = build("SparseBertForMaskedLM", sparsity=0.5)
    teacher = build("SparseBertForMaskedLM", sparsity=0.0, seed=3).to_dense().eval()
    ids = torch.randint(5, 99, (3, 9), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 0] = 7, 8, 9
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    full = student(**batch)
    flat = student(**batch, only_labelled_logits=True)
    assert torch.allclose(flat.logits, full.logits[labels != -100], atol=1e-5)
    assert torch.allclose(flat.loss, full.loss, atol=1e-5)
    args = transformers.TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    losses = []
    for only in (False, True):
        trainer = DistillationTrainer(
            model=student, args=args, teacher=teacher,
            distillation=DistillationConfig(task_weight=1.0, kd_weight=1.0, labelled_logits_only=only),
        )
        losses.append(trainer.compute_loss(student, batch))
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_ensemble_logits_give_the_teachers_mean_distribution():
    gen = torch.Generator().manual_seed(0)
    teachers = [torch.randn(4, 6, 5, generator=gen) for _ in range(3)]
    for t in (1.0, 2.0, 3.5):
        combined = ensemble_logits(teachers, t)
        mean = torch.stack([torch.softmax(x / t, -1) for x in teachers]).mean(0)
        assert torch.allclose(torch.softmax(combined / t, -1), mean, atol=1e-6)
        student = torch.randn(4, 6, 5, generator=gen)
        expected = (mean * (mean.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t**2  # KL to the mean, per row
        assert kd_loss(student, combined, t) == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(torch.softmax(ensemble_logits(teachers[:1], 2.0) / 2, -1), torch.softmax(teachers[0] / 2, -1), atol=1e-6)
    scores = [torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [0.0]])]
    assert torch.equal(ensemble_logits(scores), torch.tensor([[1.5], [1.5]])), "regression: the teachers' mean output"
    with pytest.raises(ValueError, match=r"differ in shape: \[\(2, 1\), \(2, 3\)\]"):
        ensemble_logits([torch.zeros(2, 1), torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="at least one"):
        ensemble_logits([])


@pytest.mark.parametrize("head", ["SparseBertForSequenceClassification", "SparseBertForQuestionAnswering"])
def test_trainer_distils_from_an_ensemble_of_teachers(head):
    student = build(head, sparsity=0.5)
    first = build(head, sparsity=0.0, seed=1).to_dense().eval()
    second = build(head, sparsity=0.0, seed=2).to_dense().eval()
    ids = torch.randint(5, 99, (3, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch.update({"labels": torch.tensor([0, 1, 1])} if head.endswith("Classification") else
                 {"start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])})
    args = transformers.TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    kd_only = DistillationConfig(task_weight=0.0, kd_weight=1.0, temperature=2.0)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        out, a, b = student(**inputs), first(**inputs), second(**inputs)
    names = ["logits"] if head.endswith("Classification") else ["start_logits", "end_logits"]
    expected = sum(kd_loss(getattr(out, n), ensemble_logits([getattr(a, n), getattr(b, n)], 2.0), 2.0) for n in names) / len(names)
    with torch.no_grad():  # compute_loss takes its training branch (the flag) while dropout stays off (the submodules)
        trainer = DistillationTrainer(model=student, args=args, teacher=first, ensemble=[second], distillation=kd_only)
        student.training = True
        got = trainer.compute_loss(student, batch)
        alone = DistillationTrainer(model=student, args=args, teacher=first, distillation=kd_only).compute_loss(student, batch)
        twice = DistillationTrainer(model=student, args=args, teacher=first, ensemble=[copy.deepcopy(first)], distillation=kd_only).compute_loss(student, batch)
        student.training = False
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert twice == pytest.approx(float(alone), rel=1e-5), "two copies of one teacher are that teacher"
    assert abs(float(got) - float(alone)) > 1e-4, "a second, different teacher changes the target"
    with pytest.raises(ValueError, match="needs a teacher and kd_weight > 0"):
        DistillationTrainer(model=student, args=args, teacher=first, ensemble=[second], distillation=DistillationConfig(kd_weight=0.0))


def test_kd_on_a_single_output_is_mse_not_a_vanishing_kl():
    """Regression heads (STS-B) have one logit: a softmax over it is constant, so KL would be 0 with no gradient."""
    from hf_sparse.distillation import kd_loss

    student = torch.tensor([[0.5], [2.0], [-1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0], [2.0], [0.0]])
    loss = kd_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    loss.backward()
    assert torch.allclose(student.grad, 2 * (student.detach() - teacher) / 3)


def test_mean_pooled_representation_ignores_padding_and_prc_reuses_the_teacher_pass():
    from hf_sparse.distillation import sentence_vector

    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = sentence_vector(hidden, mask, "mean")
    assert torch.equal(pooled[0], hidden[0, :2].mean(0)) and torch.equal(pooled[1], hidden[1].mean(0))
    assert torch.equal(sentence_vector(hidden, mask, "cls"), hidden[:, 0])

    student = build("SparseBertForSequenceClassification", sparsity=0.5)
    teacher = build("SparseBertForSequenceClassification", sparsity=0.0, seed=3).to_dense()
    batch = {k: torch.stack([RandomTokens(8)[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    batch["attention_mask"][0, -3:] = 0
    args = transformers.TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    student.train()
    losses = {}
    for pooling in ("cls", "mean"):
        for separate in (False, True):  # PrC / FiC against the teacher's own pass vs separate identical models
            cfg = DistillationConfig(task_weight=0.0, kd_weight=1.0, prc_weight=1.0, fic_weight=0.5, contrastive_pooling=pooling)
            copies = dict(pretrained=copy.deepcopy(teacher), finetuned=copy.deepcopy(teacher)) if separate else {}
            trainer = DistillationTrainer(model=student, args=args, teacher=teacher, distillation=cfg, **copies)
            torch.manual_seed(0)
            losses[pooling, separate] = trainer.compute_loss(student, batch)
        assert torch.allclose(losses[pooling, False], losses[pooling, True], atol=1e-6)
    assert not torch.allclose(losses["cls", False], losses["mean", False]), "the pooling must change what is contrasted"
    with pytest.raises(ValueError, match="contrastive_pooling='max'"):
        DistillationTrainer(model=student, args=args, teacher=teacher, distillation=DistillationConfig(prc_weight=1.0, contrastive_pooling="max"))
