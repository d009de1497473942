"""The upstream recipe: YAML parsing, and a short real run on MiniLM-L6 + WikiText-2 / SQuAD passages."""

import json
from pathlib import Path

import pytest
import torch

from hf_sparse import SparseBertForMaskedLM
from hf_sparse.analysis import pattern_violations
from hf_sparse.cli import main as cli_main
from hf_sparse.upstream import UpstreamRecipe, read_corpus

from conftest import DATA_DIR


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


@pytest.mark.real
def test_short_upstream_run_on_minilm(tmp_path, capsys):
    code = cli_main([
        "prune", "--recipe", "recipes/prune_ofa_90.yaml", "--output-dir", str(tmp_path / "run"),
        "--set", "max_steps=6", "--set", "head_warmup_steps=2", "--set", "eval_blocks=16",
        "--set", "pruning_frequency=2", "--set", "logging_steps=2", "--set", "save_steps=100",
        "--set", "per_device_train_batch_size=4", "--set", "method=block", "--set", "block=[1, 4]",
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
