"""The upstream recipe: YAML parsing, and a short real run on MiniLM-L6 + WikiText-2 / SQuAD passages."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hf_sparse import SparseBertForMaskedLM
from hf_sparse.analysis import pattern_violations
from hf_sparse.cli import main as cli_main
from hf_sparse.upstream import BlockDataset, UpstreamRecipe, minilm_folder, pair_blocks, read_corpus, read_recipe_settings, render_recipe

from conftest import DATA_DIR, make_pair_blocks


def test_recipe_yaml_round_trip_and_errors(tmp_path):
    recipe = UpstreamRecipe.from_yaml("recipes/prune_ofa_90.yaml")
    assert recipe.final_sparsity == 0.9 and recipe.method == "magnitude"
    schedule = recipe.schedule()
    assert schedule.start_step == 150 and schedule.end_step == 1050 and schedule.frequency == 50
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert UpstreamRecipe.from_yaml(tmp_path / "r.yaml") == recipe
    (tmp_path / "bad.yaml").write_text("final_sparsity: 0.9\nlearning_rat: 1e-4\n")
    with pytest.raises(ValueError, match=r"unknown recipe settings \['learning_rat'\]"):
        UpstreamRecipe.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "pool.yaml").write_text("prc_weight: 1.0\ncontrastive_pooling: max\n")
    with pytest.raises(ValueError, match=r"pool.yaml: contrastive_pooling='max'; expected one of \('cls', 'mean'\)"):
        UpstreamRecipe.from_yaml(tmp_path / "pool.yaml")
    with pytest.raises(ValueError, match="unknown pruning method 'random'"):
        UpstreamRecipe(method="random").pruning_method()
    with pytest.raises(ValueError, match="apply to the structured methods, not 'magnitude'"):
        UpstreamRecipe(min_heads_per_layer=1).pruning_method()
    floored = UpstreamRecipe(method="structured_movement", scope="global", min_heads_per_layer=1).pruning_method()
    assert floored.floors == {"heads": 1, "neurons": 0} and floored.scope == "global"
    with pytest.raises(ValueError, match="allocation='joint' applies to the structured methods, not 'magnitude'"):
        UpstreamRecipe(allocation="joint").pruning_method()
    joint = UpstreamRecipe(method="structured_fisher", allocation="joint", min_heads_per_layer=1).pruning_method()
    assert (joint.allocation, joint.scope, joint.floors["heads"]) == ("joint", "layer", 1)
    hybrid = UpstreamRecipe(method="structured_movement", unit_sparsity=0.8).pruning_method()
    assert type(hybrid).__name__ == "HybridPruning" and type(hybrid.units).__name__ == "StructuredMovementPruning"
    assert (hybrid.unit_sparsity, hybrid.target_sparsity, hybrid.stateful) == (0.8, 0.9, True)
    with pytest.raises(ValueError, match="unit_sparsity=0.5 splits a structured method's target .*not 'magnitude'"):
        UpstreamRecipe(unit_sparsity=0.5).pruning_method()
    for unit in (0.0, 0.9, 0.95):
        with pytest.raises(ValueError, match=rf"needs 0 < unit_sparsity < target_sparsity < 1, got unit_sparsity={unit:g}, target_sparsity=0.9"):
            UpstreamRecipe(method="structured", unit_sparsity=unit).pruning_method()
    (tmp_path / "fraction.yaml").write_text("segment_pairs: true\nrandom_segment_fraction: 1.5\n")
    with pytest.raises(ValueError, match=r"fraction.yaml: random_segment_fraction=1.5; expected a fraction in \[0, 1\]"):
        UpstreamRecipe.from_yaml(tmp_path / "fraction.yaml")
    with pytest.raises(ValueError, match="nsp_weight=-1; expected >= 0"):
        UpstreamRecipe(nsp_weight=-1)
    for pairs, fraction in ((False, 0.5), (True, 0.0), (True, 1.0)):
        with pytest.raises(ValueError, match=rf"nsp_weight=1.0 needs segment_pairs: true .*segment_pairs={pairs}, random_segment_fraction={fraction}"):
            UpstreamRecipe(nsp_weight=1.0, segment_pairs=pairs, random_segment_fraction=fraction)
    assert UpstreamRecipe(nsp_weight=1.0, segment_pairs=True).nsp_weight == 1.0


def test_a_bad_pruning_setting_stops_the_run_before_it_writes_anything(tmp_path):
    from hf_sparse.upstream import run_upstream

    for recipe, message in [
        (UpstreamRecipe(unit_sparsity=0.5), "unit_sparsity=0.5 splits a structured method's target"),
        (UpstreamRecipe(method="structured", unit_sparsity=0.95), "needs 0 < unit_sparsity < target_sparsity < 1"),
        (UpstreamRecipe(min_heads_per_layer=1), "apply to the structured methods, not 'magnitude'"),
        (UpstreamRecipe(data_dir=str(tmp_path / "no-data"), method="random"), "unknown pruning method 'random'"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_upstream(recipe, tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_a_recipe_builds_on_its_base(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nfinal_sparsity: 0.9\nmax_steps: 100\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nname: b\nseed: 7\n")
    (tmp_path / "c.yaml").write_text("# c\nbase: sub/b.yaml\nname: c\nfinal_sparsity: 0.5\n")
    settings = read_recipe_settings(tmp_path / "c.yaml")
    assert settings == {"name": "c", "final_sparsity": 0.5, "max_steps": 100, "seed": 7}
    assert list(settings) == ["name", "final_sparsity", "max_steps", "seed"]  # the base's order, new settings last
    recipe = UpstreamRecipe.from_yaml(tmp_path / "c.yaml", seed=3)
    assert (recipe.name, recipe.final_sparsity, recipe.max_steps, recipe.seed) == ("c", 0.5, 100, 3)
    assert render_recipe(tmp_path / "c.yaml") == "# c\nname: c\nfinal_sparsity: 0.5\nmax_steps: 100\nseed: 7\n"

    files = {"loop1": "base: loop2.yaml\n", "loop2": "base: loop1.yaml\n", "self": "base: self.yaml\n",
             "missing": "base: nowhere.yaml\n", "number": "base: 90\n", "list_base": "- 1\n", "on_list": "base: list_base.yaml\n",
             "typo": "base: a.yaml\nfinal_sparsty: 0.8\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    for name, error, message in [
        ("loop1", ValueError, r"loop1.yaml: the chain of recipe bases comes back to .*loop2.yaml -> .*loop1.yaml"),
        ("self", ValueError, "self.yaml: the chain of recipe bases comes back to"),
        ("missing", FileNotFoundError, r"missing.yaml: its base recipe .*nowhere.yaml does not exist"),
        ("number", ValueError, r"number.yaml: `base` names a recipe file relative to this one, got 90"),
        ("on_list", ValueError, "list_base.yaml: a recipe is a mapping of settings, got list"),
        ("typo", ValueError, r"typo.yaml: unknown recipe settings \['final_sparsty'\]"),
    ]:
        with pytest.raises(error, match=message):
            UpstreamRecipe.from_yaml(tmp_path / f"{name}.yaml")


def test_the_shipped_variants_differ_from_their_base_only_where_they_say():
    base = dataclasses.asdict(UpstreamRecipe.from_yaml("recipes/prune_ofa_90.yaml"))
    expected_changes = {f"prune_ofa_{s}": {"final_sparsity": s / 100} for s in (50, 60, 70, 80, 95, 97)}
    expected_changes |= {"prune_ofa_long_90": {"max_steps": 3000}, "prune_ofa_structured_90": {"method": "structured_movement"}}
    expected_changes["prune_ofa_hybrid_90"] = {"method": "structured_movement", "unit_sparsity": 0.8}
    for name, expected in expected_changes.items():
        variant = dataclasses.asdict(UpstreamRecipe.from_yaml(f"recipes/{name}.yaml"))
        changed = {key: value for key, value in variant.items() if base[key] != value}
        assert changed == {"name": name, **expected}


SHIPPED_RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_the_shipped_recipes_are_found():
    assert {"prune_ofa_90", "sparsebert_90", "cap_prc_90", "hidden_kd_90"} <= set(SHIPPED_RECIPES)


@pytest.mark.parametrize("name", SHIPPED_RECIPES)
def test_every_shipped_recipe_parses(name):
    recipe = UpstreamRecipe.from_yaml(f"recipes/{name}.yaml")
    assert recipe.name == name
    recipe.pruning_method(), recipe.schedule()


def test_corpus_reader_skips_headings_and_dedups_passages():
    texts = read_corpus([DATA_DIR / "wikitext-2" / "valid.txt", DATA_DIR / "squad_v1.1" / "train-subset.json"])
    assert not any(t.startswith("=") for t in texts)
    assert not any("<unk>" in t for t in texts)
    squad = read_corpus([DATA_DIR / "squad_v1.1" / "train-subset.json"])
    assert len(squad) == len(set(squad)) == 2429  # 2,430 paragraphs, one of them twice


class _NumberTokenizer:
    """Each text is space-separated token ids; ids 0 and 1 are [CLS] and [SEP]."""

    cls_token_id, sep_token_id = 0, 1

    def __call__(self, texts, add_special_tokens):
        assert not add_special_tokens
        return {"input_ids": [[int(t) for t in text.split()] for text in texts]}


def _numbered_texts(tokens: int) -> list[str]:
    ids = list(range(2, tokens + 2))  # every token distinct: where it came from can be read off
    return [" ".join(map(str, ids[i : i + 37])) for i in range(0, tokens, 37)]


def _segments(row: torch.Tensor, types: torch.Tensor):
    """Checks the [CLS] A [SEP] B [SEP] frame and its token types; returns A and B."""
    (seps,) = torch.nonzero(row == 1, as_tuple=True)
    assert row[0] == 0 and row[-1] == 1 and len(seps) == 2 and not (row[1:] == 0).any()
    middle = int(seps[0])
    assert torch.equal(types, (torch.arange(len(row)) > middle).long())
    return row[1:middle], row[middle + 1 : -1]


def test_pair_blocks_follow_the_text_cut_in_the_middle_half():
    length, body = 20, 17
    blocks = pair_blocks(_NumberTokenizer(), _numbered_texts(100 * body + 5), length, random_fraction=0.0, seed=3)
    assert blocks["input_ids"].shape == blocks["token_type_ids"].shape == (100, length)
    cuts = []
    for i, (row, types) in enumerate(zip(blocks["input_ids"], blocks["token_type_ids"])):
        first, second = _segments(row, types)
        span = torch.arange(2 + i * body, 2 + (i + 1) * body)  # the i-th stretch of the text, in order
        assert torch.equal(torch.cat([first, second]), span)
        cuts.append(len(first))
    assert min(cuts) >= body // 4 and max(cuts) <= body - body // 4 and len(set(cuts)) > 3


def test_pair_blocks_take_unrelated_second_segments_at_the_asked_rate():
    length, body = 16, 13
    texts = _numbered_texts(400 * body)
    blocks = pair_blocks(_NumberTokenizer(), texts, length, random_fraction=0.5, seed=0)
    unrelated = 0
    for i, (row, types) in enumerate(zip(blocks["input_ids"], blocks["token_type_ids"])):
        first, second = _segments(row, types)
        assert torch.equal(first, torch.arange(2 + i * body, 2 + i * body + len(first)))
        source = (int(second[0]) - 2) // body  # the stretch B was taken from, and at the same offset as A's end
        assert torch.equal(second, torch.arange(2 + source * body + len(first), 2 + (source + 1) * body))
        unrelated += source != i
        assert int(blocks["next_sentence_label"][i]) == int(source != i)  # BERT's labels: 1 = unrelated
    assert 160 <= unrelated <= 240  # 400 draws at 0.5
    everything = pair_blocks(_NumberTokenizer(), texts, length, random_fraction=1.0, seed=0)
    assert all((int(row[row.tolist().index(1) + 1]) - 2) // body != i for i, row in enumerate(everything["input_ids"]))
    again = pair_blocks(_NumberTokenizer(), texts, length, random_fraction=0.5, seed=0)
    other_seed = pair_blocks(_NumberTokenizer(), texts, length, random_fraction=0.5, seed=1)
    assert torch.equal(again["input_ids"], blocks["input_ids"]) and not torch.equal(other_seed["input_ids"], blocks["input_ids"])


def test_pair_blocks_and_block_dataset_errors():
    with pytest.raises(ValueError, match="pair blocks need length >= 7"):
        pair_blocks(_NumberTokenizer(), _numbered_texts(100), 6)
    with pytest.raises(ValueError, match="pair blocks of length 20 need at least 34 tokens of text, got 30"):
        pair_blocks(_NumberTokenizer(), _numbered_texts(30), 20)
    with pytest.raises(ValueError, match=r"token_type_ids \(2, 5\) do not match the blocks \(2, 6\)"):
        BlockDataset(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"next_sentence_label \(3,\): expected one label per block, \(2,\)"):
        BlockDataset(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_next_sentence_labels_reach_the_loss(tiny_tokenizer, tmp_path):
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from conftest import build
    from hf_sparse.distillation import DistillationConfig
    from hf_sparse.upstream import NextSentenceHead, UpstreamTrainer

    pairs, dataset = make_pair_blocks(tiny_tokenizer)
    collator = DataCollatorForLanguageModeling(tiny_tokenizer, mlm_probability=0.15)
    batch = collator([dataset[i] for i in range(8)])
    assert torch.equal(batch["next_sentence_label"], pairs["next_sentence_label"][:8])  # the collator keeps them
    assert torch.equal(batch["token_type_ids"], pairs["token_type_ids"][:8])

    student = build("SparseBertForMaskedLM", 0.5, vocab_size=tiny_tokenizer.vocab_size).train()
    student.next_sentence_head = NextSentenceHead(student.config.hidden_size, student.config.initializer_range)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False, per_device_train_batch_size=8)
    trainer = UpstreamTrainer(model=student, args=args, train_dataset=dataset, data_collator=collator, nsp_weight=0.5,
                              distillation=DistillationConfig(task_weight=1.0, kd_weight=0.0))
    torch.manual_seed(0)
    loss = trainer.compute_loss(student, batch)
    assert "next_sentence_label" in batch  # the caller's batch is left as it was
    hidden = student.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]).last_hidden_state
    mlm = student(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], labels=batch["labels"]).loss
    nsp = torch.nn.functional.cross_entropy(student.next_sentence_head(hidden[:, 0]), batch["next_sentence_label"])
    torch.testing.assert_close(loss, mlm + 0.5 * nsp)  # dropout is 0 in the tiny config: the passes agree
    loss.backward()
    assert student.next_sentence_head.classifier.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert set(trainer._term_counts) == {"task", "nsp"}
    # without labels in the batch (or with nsp_weight 0) it is the distillation trainer's loss
    plain = {k: v for k, v in batch.items() if k != "next_sentence_label"}
    torch.testing.assert_close(trainer.compute_loss(student, plain), mlm)


def _train_with_next_sentence_loss(tokenizer, out_dir, **modes):
    """4 steps of the upstream trainer with the next-sentence loss on a tiny student: the trainer, the log entries with
    `loss_nsp` and the head's initial classifier weight."""
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from conftest import build
    from hf_sparse.distillation import DistillationConfig
    from hf_sparse.upstream import NextSentenceHead, UpstreamTrainer

    _, dataset = make_pair_blocks(tokenizer)
    torch.manual_seed(0)
    student = build("SparseBertForMaskedLM", 0.5, vocab_size=tokenizer.vocab_size)
    student.next_sentence_head = NextSentenceHead(student.config.hidden_size, student.config.initializer_range)
    initial_head = student.next_sentence_head.classifier.weight.detach().clone()
    args = TrainingArguments(
        str(out_dir), use_cpu=True, report_to=[], remove_unused_columns=False, per_device_train_batch_size=4,
        learning_rate=5e-3, max_steps=4, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, **modes,
    )
    trainer = UpstreamTrainer(
        model=student, args=args, train_dataset=dataset, nsp_weight=1.0,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        distillation=DistillationConfig(task_weight=1.0, kd_weight=0.0),
    )
    trainer.train()
    return trainer, [e for e in trainer.state.log_history if "loss_nsp" in e], initial_head


@pytest.mark.parametrize(
    "mode",
    [dict(torch_compile=True, torch_compile_backend="aot_eager"), dict(gradient_checkpointing=True)],
    ids=["torch_compile", "gradient_checkpointing"],
)
def test_next_sentence_loss_trains_the_same_under_compile_and_checkpointing(tiny_tokenizer, tmp_path, mode):
    """The head runs from forward hooks on the student: they must fire, and give the same training, in these modes."""
    plain_trainer, plain_log, initial_head = _train_with_next_sentence_loss(tiny_tokenizer, tmp_path / "plain")
    trainer, log, _ = _train_with_next_sentence_loss(tiny_tokenizer, tmp_path / "mode", **mode)
    plain, student = plain_trainer.model, trainer.model
    if mode.get("torch_compile"):
        assert type(trainer.model_wrapped).__name__ == "OptimizedModule"  # the student ran compiled
    else:
        assert student.is_gradient_checkpointing
    assert len(log) == len(plain_log) == 4
    for entry, expected in zip(log, plain_log):
        assert entry["loss_nsp"] == pytest.approx(expected["loss_nsp"], rel=1e-4)
    assert not torch.allclose(student.next_sentence_head.classifier.weight, initial_head)  # the head trained
    for (name, value), (_, expected) in zip(student.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.real
@pytest.mark.parametrize("segment_pairs, nsp", [(False, False), (True, False), (True, True)], ids=["one-segment", "pairs", "pairs-nsp"])
def test_short_upstream_run_on_minilm(tmp_path, capsys, segment_pairs, nsp):
    code = cli_main([
        "prune", "--recipe", "recipes/prune_ofa_90.yaml", "--output-dir", str(tmp_path / "run"),
        "--set", "max_steps=6", "--set", "head_warmup_steps=2", "--set", "eval_blocks=16",
        "--set", "pruning_frequency=2", "--set", "logging_steps=2", "--set", "save_steps=100",
        "--set", "per_device_train_batch_size=4", "--set", "method=block", "--set", "block=[1, 4]",
        "--set", f"segment_pairs={str(segment_pairs).lower()}", "--set", f"nsp_weight={1.0 if nsp else 0.0}",
    ])
    assert code == 0, capsys.readouterr().err
    model_dir = tmp_path / "run" / "model"
    model = SparseBertForMaskedLM.from_pretrained(model_dir)
    assert model.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert model.config.sparsity_pattern == "block:1x4"
    assert pattern_violations("block:1x4", model.get_masks(), model.config.num_attention_heads) == []
    recipe = UpstreamRecipe.from_yaml(model_dir / "recipe.yaml")
    assert recipe.max_steps == 6 and recipe.method == "block"
    metrics = json.loads((model_dir / "upstream_metrics.json").read_text())
    assert metrics["new_head_weights"], "MiniLM ships without an MLM head: the recipe must say so"
    # start int(0.1 * 6) = 0, end int(0.7 * 6) = 4, every 2 steps
    assert [h["step"] for h in metrics["pruning_history"]] == [0, 2, 4]
    assert metrics["pruning_history"][-1]["target"] == 0.9
    for name in ("teacher", "student"):
        assert 0 < metrics[name]["mlm_loss"] < 20 and 0 <= metrics[name]["mlm_accuracy"] <= 1
    with torch.no_grad():
        for module in model.masked_linears().values():
            assert torch.all(module.weight[~module.weight_mask] == 0)
    # the second segment's embedding trains only when the blocks are pairs; else only weight decay moves it, by at
    # most lr * decay * steps = 6e-6 of its size (an Adam step moves an entry by up to lr = 1e-4)
    from safetensors.torch import load_file

    (dense_file,) = minilm_folder().glob("*.safetensors")
    dense_types = next(v for k, v in load_file(dense_file).items() if k.endswith("token_type_embeddings.weight"))
    moved = (model.bert.embeddings.token_type_embeddings.weight.detach() - dense_types).abs().amax(dim=1)
    limit = 6e-6 * dense_types.abs().amax(dim=1)
    assert moved[0] > 1e-5
    assert (moved[1] > 1e-5) if segment_pairs else (moved[1] <= limit[1] * 1.01)
    # next-sentence prediction: its loss is logged, it is scored on held-out pairs, and its head is not saved
    logged = [entry for entry in metrics["loss_log"] if "loss_nsp" in entry]
    assert (len(logged) == 3 and all(0 < entry["loss_nsp"] < 5 for entry in logged)) if nsp else not logged
    if nsp:
        assert metrics["student_nsp"]["blocks"] == 16 and 0 <= metrics["student_nsp"]["nsp_accuracy"] <= 1
    else:
        assert "student_nsp" not in metrics
    (saved_file,) = model_dir.glob("*.safetensors")
    assert not [k for k in load_file(saved_file) if "next_sentence" in k]


@pytest.mark.real
def test_short_hybrid_upstream_run_on_minilm_compacts_to_the_unit_widths(tmp_path, capsys):
    from hf_sparse.deploy.compact import compact

    code = cli_main([
        "prune", "--recipe", "recipes/prune_ofa_hybrid_90.yaml", "--output-dir", str(tmp_path / "run"),
        "--set", "max_steps=6", "--set", "head_warmup_steps=2", "--set", "eval_blocks=16",
        "--set", "pruning_frequency=2", "--set", "logging_steps=2", "--set", "save_steps=100",
        "--set", "per_device_train_batch_size=4",
    ])
    assert code == 0, capsys.readouterr().err
    model_dir = tmp_path / "run" / "model"
    model = SparseBertForMaskedLM.from_pretrained(model_dir)
    masks = {name: m.weight_mask for name, m in model.masked_linears().items()}
    assert all(int(m.sum()) == m.numel() - round(0.9 * m.numel()) for m in masks.values())  # 90% of every layer
    assert pattern_violations("structured:heads+neurons", masks, model.config.num_attention_heads) != []  # holes inside units
    report = compact(model_dir, tmp_path / "compact")
    # MiniLM-L6: 12 heads and 1,536 neurons per layer; 80% of them go: 2 heads (12 - round(9.6)) and 307 neurons
    assert (report.heads_after, report.neurons_after) == (6 * 2, 6 * 307) and report.max_abs_diff <= 1e-4
    assert UpstreamRecipe.from_yaml(model_dir / "recipe.yaml").unit_sparsity == 0.8


@pytest.mark.parametrize("launcher, port", [("torchrun", 29541), ("accelerate", 29543)])
def test_next_sentence_head_trains_in_sync_under_two_process_ddp(tmp_path, launcher, port):
    """The head runs outside the DDP-wrapped forward; its gradients must still be averaged over the ranks."""
    from safetensors.torch import load_file

    from conftest import run_two_process_worker

    run_two_process_worker("ddp_nsp_worker.py", tmp_path, port=port, launcher=launcher)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    initial = load_file(str(tmp_path / "initial.safetensors"))
    assert rank0.keys() == rank1.keys() and set(initial) < set(rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["head.classifier.weight"], initial["head.classifier.weight"])  # the head did train
    logged = json.loads((tmp_path / "log_history.json").read_text())
    assert sum("loss_nsp" in entry for entry in logged) == 4, logged
