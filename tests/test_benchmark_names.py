"""The benchmark scripts agree on run names: what transfer.py writes is what structured_deploy.py reads back."""

import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import structured_deploy  # noqa: E402
import transfer  # noqa: E402


@pytest.fixture(autouse=True)
def _bf16_cpu(monkeypatch):
    """`--precision auto` means bf16 here whatever this CPU is (the published rows); fp32 runs are tested explicitly."""
    monkeypatch.setattr("hf_sparse.transfer.precision.cpu_bf16_is_fast", lambda: True)


@pytest.mark.parametrize(
    "kd, overrides",
    [
        (True, {}),
        (False, {}),
        (True, {"epochs": 3}),
        (True, {"epochs": 2, "max_train_samples": 67349}),
        (False, {"max_train_samples": 5000}),
        (True, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1}),
        (True, {"learning_rate": 5e-5, "hidden_weight": 0.5}),
        (True, {"epochs": 4, "max_train_samples": 67349, "hidden_weight": 1, "teacher_epochs": 2}),
        (True, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "temperature": 4}),
        (True, {"hidden_weight": 1, "precision": "fp32"}),
        (True, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "teacher_epochs": 4, "precision": "fp32"}),
        (True, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "group_by_length": True, "precision": "fp32"}),
        (True, {"group_by_length": True}),
        (True, {"epochs": 1, "max_train_samples": 67349, "hidden_weight": 1, "teacher_epochs": 2, "augment": 1, "group_by_length": True,
                "precision": "fp32"}),
        (True, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "pruning_end": 0.35, "group_by_length": True,
                "precision": "fp32"}),
    ],
)
def test_structured_deploy_reads_the_names_transfer_writes(kd, overrides):
    name, command = transfer.run_name("prune-ft-structured-60", "sst2", 1, kd, False, False, overrides)
    row = name.removesuffix("_sst2_s1")
    dense_run, train_command, dense_train_command = structured_deploy.row_commands(row, "sst2", 1)
    assert train_command == command  # the hint it prints retrains exactly that model
    # the baseline is the KD teacher transfer.py uses: the same data budget when examples were overridden
    expected_dense = {k: v for k, v in overrides.items() if k in ("epochs", "max_train_samples")} if "max_train_samples" in overrides else {}
    if "teacher_epochs" in overrides:
        expected_dense["epochs"] = overrides["teacher_epochs"]
    for recipe in ("precision", "group_by_length"):  # an fp32 / grouped run is compared with the dense run trained so
        if recipe in overrides:
            expected_dense[recipe] = overrides[recipe]
    dense_name, dense_command = transfer.run_name("dense", "sst2", 1, False, False, False, expected_dense)
    assert dense_run == dense_name
    assert dense_train_command == dense_command


def test_kd_teacher_follows_the_data_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    budget = {"epochs": 2, "max_train_samples": 67349}
    with pytest.raises(SystemExit, match=r"dense-ep2-n67349_sst2_s1/model is missing: run `python benchmarks/transfer.py "
                                         r"--row dense --task sst2 --seed 1 --epochs 2 --max-train-samples 67349` first"):
        transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True, **budget)
    (tmp_path / "dense-ep2-n67349_sst2_s1" / "model").mkdir(parents=True)
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    argv = transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True, **budget)
    assert argv[argv.index("--teacher") + 1] == str(tmp_path / "dense-ep2-n67349_sst2_s1" / "model")
    assert argv[argv.index("--max_train_samples") + 1] == "67349" and argv[argv.index("--num_train_epochs") + 1] == "2"
    # an epochs-only override keeps the task-budget teacher (the rows already published rely on it)
    argv = transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True, epochs=3)
    assert argv[argv.index("--teacher") + 1] == str(tmp_path / "dense_sst2_s1" / "model")
    assert argv[argv.index("--max_train_samples") + 1] == "20000"


@pytest.mark.parametrize("row", ["dense", "upstream-90", "upstream-cap-prc-90", "prune-ft-structured-movement-90", "dense-layers-1"])
@pytest.mark.parametrize("kd, qat, bi_encoder", [(False, False, False), (True, False, False), (True, True, False), (True, False, True)])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"learning_rate": 1e-05}, {"head_learning_rate": 0.001, "epochs": 10}, {"epochs": 2.5, "max_train_samples": 67349, "hidden_weight": 1},
     {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "min_heads_per_layer": 1},
     {"epochs": 4, "max_train_samples": 67349, "hidden_weight": 1, "teacher_epochs": 2},
     {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "temperature": 4, "min_heads_per_layer": 1}, {"temperature": 0.5},
     {"precision": "fp32"}, {"epochs": 4, "max_train_samples": 67349, "hidden_weight": 1, "teacher_epochs": 2, "precision": "fp32"},
     {"group_by_length": True}, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "group_by_length": True, "precision": "fp32"},
     {"augment": 2}, {"epochs": 1, "max_train_samples": 67349, "teacher_epochs": 2, "augment": 1, "group_by_length": True, "precision": "fp32"},
     {"pruning_end": 0.35}, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "pruning_end": 0.5, "group_by_length": True},
     {"classifier_pooling": "mean"}, {"epochs": 2, "max_train_samples": 67349, "classifier_pooling": "mean", "group_by_length": True, "precision": "fp32"},
     {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "teacher_seeds": 3, "group_by_length": True},
     {"dropout": 0}, {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "dropout": 0.05, "average_from": 0.7, "group_by_length": True}],
)
def test_parse_run_name_inverts_run_name(row, kd, qat, bi_encoder, overrides):
    name, _ = transfer.run_name(row, "sst2", 1, kd, qat, bi_encoder, overrides)
    parsed = transfer.parse_run_name(name.removesuffix("_sst2_s1"))
    expected = {argument: overrides.get(argument) for argument, *_ in transfer.OVERRIDES} | {
        "precision": overrides.get("precision"), "group_by_length": overrides.get("group_by_length")}
    assert parsed == (row, kd, qat, bi_encoder, expected)


def test_fp32_runs_are_their_own_rows_with_their_own_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)  # the bf16 teacher is not taken for an fp32 run
    row = "prune-tuned-structured-movement-90"
    with pytest.raises(SystemExit, match=r"dense-fp32_sst2_s1/model is missing: run `python benchmarks/transfer.py "
                                         r"--row dense --task sst2 --seed 1 --precision fp32` first"):
        transfer._row_arguments(row, "sst2", 1, True, precision="fp32")
    (tmp_path / "dense-fp32_sst2_s1" / "model").mkdir(parents=True)
    argv = transfer._row_arguments(row, "sst2", 1, True, hidden_weight=1.0, precision="fp32")
    fp32_dense = str(tmp_path / "dense-fp32_sst2_s1" / "model")
    assert argv[argv.index("--model") + 1] == fp32_dense and argv[argv.index("--teacher") + 1] == fp32_dense
    assert argv[argv.index("--bf16") + 1] == "false"
    argv = transfer._row_arguments(row, "sst2", 1, True, precision="bf16")
    assert argv[argv.index("--teacher") + 1] == str(tmp_path / "dense_sst2_s1" / "model") and argv[argv.index("--bf16") + 1] == "true"
    # auto on a CPU without native bf16 is an fp32 run
    monkeypatch.setattr("hf_sparse.transfer.precision.cpu_bf16_is_fast", lambda: False)
    argv = transfer._row_arguments(row, "sst2", 1, True)
    assert argv[argv.index("--teacher") + 1] == fp32_dense
    name, command = transfer.run_name(row, "sst2", 1, True, False, False, {"hidden_weight": 1, "precision": "fp32"})
    assert name == f"{row}-kd-hid1-fp32_sst2_s1" and command.endswith("--kd --hidden-weight 1 --precision fp32")
    with pytest.raises(ValueError, match="'fp32' or None"):
        transfer.run_name(row, "sst2", 1, True, False, False, {"precision": "bf16"})


@pytest.mark.parametrize("weight", ["hidden_weight", "attention_weight"])
def test_distillation_weights_need_kd(tmp_path, monkeypatch, weight):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    with pytest.raises(SystemExit, match="needs --kd"):
        transfer._row_arguments("prune-ft-structured-60", "stsb", 1, False, **{weight: 1.0})
    (tmp_path / "dense_stsb_s1" / "model").mkdir(parents=True)
    argv = transfer._row_arguments("prune-ft-structured-60", "stsb", 1, True, **{weight: 1.0})
    assert argv[argv.index(f"--{weight}") + 1] == "1.0"


def test_cap_terms_reach_the_runner_and_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match="applies to prune-ft-"):
        transfer._row_arguments("dense", "sst2", 1, False, snc_weight=0.5)
    with pytest.raises(SystemExit, match="needs --kd"):
        transfer._row_arguments("prune-tuned-structured-movement-80-magnitude-90", "sst2", 1, False, fic_weight=0.5)
    argv = transfer._row_arguments("prune-tuned-structured-movement-80-magnitude-90", "sst2", 1, True, prc_weight=0.5, snc_weight=0.25, fic_weight=1.0)
    assert argv[argv.index("--prc_weight") + 1 : argv.index("--prc_weight") + 4] == ["0.5", "--pretrained", str(tmp_path / "minilm")]
    assert argv[argv.index("--snc_weight") + 1] == "0.25" and argv[argv.index("--fic_weight") + 1] == "1.0"
    name, command = transfer.run_name("prune-tuned-structured-movement-80-magnitude-90", "sst2", 1, True, False, False,
                                      {"prc_weight": 0.5, "snc_weight": 0.25, "fic_weight": 1, "group_by_length": True})
    assert name == "prune-tuned-structured-movement-80-magnitude-90-kd-prc0.5-snc0.25-fic1-gl_sst2_s1"
    assert command.endswith("--kd --prc-weight 0.5 --snc-weight 0.25 --fic-weight 1 --group-by-length")
    parsed = {key: value for key, value in transfer.parse_run_name(name.removesuffix("_sst2_s1"))[4].items() if value is not None}
    assert parsed == {"prc_weight": 0.5, "snc_weight": 0.25, "fic_weight": 1.0, "group_by_length": True}


def test_attention_weight_needs_a_cross_encoder_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense-bi_stsb_s1" / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match="needs --kd and a cross-encoder row"):
        transfer._row_arguments("prune-ft-structured-60", "stsb", 1, True, bi_encoder=True, attention_weight=1.0)
    name, command = transfer.run_name("upstream-pairs-90", "stsb", 1, True, False, False,
                                      {"hidden_weight": 1, "attention_weight": 1, "group_by_length": True, "precision": "fp32"})
    assert name == "upstream-pairs-90-kd-hid1-att1-gl-fp32_stsb_s1"
    assert command.endswith("--kd --hidden-weight 1 --attention-weight 1 --group-by-length --precision fp32")
    assert transfer.parse_run_name(name.removesuffix("_stsb_s1"))[4]["attention_weight"] == 1.0


@pytest.mark.parametrize(
    "row, method, sparsity",
    [("prune-tuned-90", "magnitude", "0.9"), ("prune-tuned-structured-80", "structured", "0.8"),
     ("prune-tuned-structured-movement-90", "structured_movement", "0.9"), ("prune-ft-structured-movement-90", "structured_movement", "0.9"),
     ("prune-tuned-structured-movement-global-90", "structured_movement", "0.9"), ("prune-ft-global-80", "magnitude", "0.8"),
     ("prune-tuned-structured-fisher-90", "structured_fisher", "0.9"), ("prune-ft-structured-fisher-global-80", "structured_fisher", "0.8"),
     ("prune-tuned-structured-movement-joint-90", "structured_movement", "0.9"),
     ("prune-ft-structured-joint-global-80", "structured", "0.8"), ("prune-tuned-movement-90", "movement", "0.9"),
     ("prune-ft-soft-movement-80", "soft_movement", "0.8")],
)
def test_prune_tuned_rows_start_from_the_dense_fine_tuned_model(tmp_path, monkeypatch, row, method, sparsity):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    budget = {"epochs": 2, "max_train_samples": 67349}
    tuned = row.startswith("prune-tuned")
    if tuned:
        with pytest.raises(SystemExit, match=r"dense-ep2-n67349_sst2_s1/model is missing: run `python benchmarks/transfer.py --row dense"):
            transfer._row_arguments(row, "sst2", 1, False, **budget)
    (tmp_path / "dense-ep2-n67349_sst2_s1" / "model").mkdir(parents=True)
    argv = transfer._row_arguments(row, "sst2", 1, False, **budget)
    start = tmp_path / ("dense-ep2-n67349_sst2_s1/model" if tuned else "minilm")
    assert argv[argv.index("--model") + 1] == str(start)
    assert argv[argv.index("--prune_method") + 1] == method and argv[argv.index("--target_sparsity") + 1] == sparsity
    assert ("--prune_scope" in argv) == ("-global-" in row)
    if "-global-" in row:
        assert argv[argv.index("--prune_scope") + 1] == "global"
    assert ("--prune_allocation" in argv) == ("-joint-" in row)
    if "-joint-" in row:
        assert argv[argv.index("--prune_allocation") + 1] == "joint"
    assert transfer._row_sparsity(row) == float(sparsity)


def test_movement_rows_reach_the_pruner_and_refuse_a_global_prefix(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    for row, method in (("prune-ft-movement-90", "movement"), ("prune-ft-soft-movement-90", "soft_movement")):
        argv = transfer._row_arguments(row, "stsb", 1, False)
        finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
            argv + ["--output_dir", str(tmp_path / "run")])
        assert finetune_args.prune_method == method and finetune_args.prune_scope == "layer"
    for row in ("prune-ft-movement-global-90", "prune-tuned-soft-movement-global-90"):
        with pytest.raises(SystemExit, match="movement ranks per layer, soft-movement over all layers; neither takes global-"):
            transfer._row_arguments(row, "stsb", 1, False)
    with pytest.raises(SystemExit, match="--min-heads-per-layer applies to"):
        transfer._row_arguments("prune-ft-soft-movement-90", "stsb", 1, False, min_heads_per_layer=1)


def test_joint_rows_need_a_structured_method_and_reach_the_pruner(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    # magnitude and movement rows rank single weights: no heads/neurons to split a budget between
    for row in ("prune-ft-joint-90", "prune-tuned-joint-global-90", "prune-ft-movement-joint-90", "prune-ft-soft-movement-joint-90"):
        with pytest.raises(SystemExit, match=f"row '{row}': joint- ranks heads and neurons together: it needs a structured method"):
            transfer._row_arguments(row, "sst2", 1, False)
    argv = transfer._row_arguments("prune-ft-structured-movement-joint-90", "sst2", 1, False, min_heads_per_layer=1)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
        argv + ["--output_dir", str(tmp_path / "run")])
    assert (finetune_args.prune_allocation, finetune_args.prune_scope, finetune_args.prune_min_heads_per_layer) == ("joint", "layer", 1)
    with pytest.raises(ValueError, match="prune_allocation='joint' needs --prune_method structured"):
        FinetuneArguments(model="m", task="sst2", prune_method="magnitude", prune_allocation="joint")
    with pytest.raises(ValueError, match="prune_allocation must be one of uniform, joint"):
        FinetuneArguments(model="m", task="sst2", prune_method="structured", prune_allocation="even")
    with pytest.raises(ValueError, match="need --prune_scope global or --prune_allocation joint"):
        FinetuneArguments(model="m", task="sst2", prune_method="structured", prune_min_heads_per_layer=1)


def test_hybrid_rows_need_a_structured_method_and_reach_the_pruner(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    row = "prune-tuned-structured-movement-80-magnitude-90"
    argv = transfer._row_arguments(row, "sst2", 1, True)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
        argv + ["--output_dir", str(tmp_path / "run")])
    assert (finetune_args.prune_method, finetune_args.target_sparsity, finetune_args.prune_unit_sparsity) == ("structured_movement", 0.9, 0.8)
    assert transfer._row_sparsity(row) == 0.9
    name, command = transfer.run_name(row, "sst2", 1, True, False, False, {})
    assert name == f"{row}-kd_sst2_s1" and transfer.parse_run_name(name.removesuffix("_sst2_s1"))[0] == row
    assert "--prune_unit_sparsity" not in transfer._row_arguments("prune-tuned-structured-movement-90", "sst2", 1, True)
    for bad, message in (("prune-ft-80-magnitude-90", "it needs a structured method"), ("prune-ft-movement-80-magnitude-90", "it needs a structured method"),
                         ("prune-ft-structured-90-magnitude-90", "the unit sparsity (90%) must be above 0 and below the row's sparsity (90%)"),
                         ("prune-ft-structured-0-magnitude-90", "the unit sparsity (0%) must be above 0")):
        with pytest.raises(SystemExit, match=re.escape(f"row '{bad}': ") + ".*" + re.escape(message)):
            transfer._row_arguments(bad, "sst2", 1, False)


def test_structured_deploy_output_names_keep_seeds_apart():
    row = "prune-tuned-structured-movement-90-kd-ep2-n67349-hid1"
    assert structured_deploy.output_names(row, "sst2", 1) == (
        f"structured_deploy_{row}_sst2.json", f"structured-{row}-sst2", f"python benchmarks/structured_deploy.py --row {row} --task sst2"
    )
    assert structured_deploy.output_names(row, "sst2", 2) == (
        f"structured_deploy_{row}_sst2_s2.json", f"structured-{row}-sst2-s2", f"python benchmarks/structured_deploy.py --row {row} --task sst2 --seed 2"
    )


def test_min_heads_per_layer_only_on_global_structured_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    argv = transfer._row_arguments("prune-tuned-structured-movement-global-90", "sst2", 1, True, min_heads_per_layer=1)
    assert argv[argv.index("--prune_min_heads_per_layer") + 1] == "1"
    name, command = transfer.run_name("prune-tuned-structured-movement-global-90", "sst2", 1, True, False, False, {"min_heads_per_layer": 1})
    assert name == "prune-tuned-structured-movement-global-90-kd-mh1_sst2_s1" and command.endswith("--kd --min-heads-per-layer 1")
    argv = transfer._row_arguments("prune-tuned-structured-movement-joint-90", "sst2", 1, True, min_heads_per_layer=1)
    assert argv[argv.index("--prune_min_heads_per_layer") + 1] == "1"
    for row in ("prune-tuned-structured-movement-90", "prune-ft-global-90", "upstream-90", "dense"):  # refused before any file is looked for
        with pytest.raises(SystemExit, match="--min-heads-per-layer applies to"):
            transfer._row_arguments(row, "sst2", 1, False, min_heads_per_layer=1)


def test_teacher_epochs_picks_the_start_and_teacher_not_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    for epochs in (2, 4):
        (tmp_path / f"dense-ep{epochs}-n67349_sst2_s1" / "model").mkdir(parents=True)
    row = "prune-tuned-structured-movement-90"
    budget = {"epochs": 4, "max_train_samples": 67349}
    argv = transfer._row_arguments(row, "sst2", 1, True, **budget, teacher_epochs=2)
    two_epochs = str(tmp_path / "dense-ep2-n67349_sst2_s1" / "model")
    assert argv[argv.index("--model") + 1] == two_epochs and argv[argv.index("--teacher") + 1] == two_epochs
    assert argv[argv.index("--num_train_epochs") + 1] == "4"  # the run's own budget is unchanged
    argv = transfer._row_arguments(row, "sst2", 1, True, **budget)  # without it: the dense row of the run's own budget
    assert argv[argv.index("--teacher") + 1] == str(tmp_path / "dense-ep4-n67349_sst2_s1" / "model")
    name, command = transfer.run_name(row, "sst2", 1, True, False, False, {**budget, "teacher_epochs": 2})
    assert name == f"{row}-kd-ep4-n67349-tep2_sst2_s1" and command.endswith("--epochs 4 --max-train-samples 67349 --teacher-epochs 2")
    assert transfer.teacher_overrides({**budget, "teacher_epochs": 2}) == {"epochs": 2, "max_train_samples": 67349}
    # refused where it would change nothing, before any file is looked for
    with pytest.raises(SystemExit, match="needs --max-train-samples"):
        transfer._row_arguments(row, "sst2", 1, True, epochs=4, teacher_epochs=2)
    with pytest.raises(SystemExit, match="needs one of them"):
        transfer._row_arguments("prune-ft-structured-movement-90", "sst2", 1, False, **budget, teacher_epochs=2)


def test_teacher_seeds_distil_from_the_dense_seeds_and_start_from_seed_1(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    row, budget = "prune-tuned-structured-movement-75-magnitude-90", {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1}
    for seed in (1, 2):
        (tmp_path / f"dense-ep2-n67349-gl_sst2_s{seed}" / "model").mkdir(parents=True)
    # a missing dense seed names the command that trains it
    with pytest.raises(SystemExit, match=r"dense-ep2-n67349-gl_sst2_s3/model is missing: run `python benchmarks/transfer.py --row dense "
                                         r"--task sst2 --seed 3 --epochs 2 --max-train-samples 67349 --group-by-length` first"):
        transfer._row_arguments(row, "sst2", 4, True, group_by_length=True, **budget, teacher_seeds=3)
    (tmp_path / "dense-ep2-n67349-gl_sst2_s3" / "model").mkdir(parents=True)
    argv = transfer._row_arguments(row, "sst2", 4, True, group_by_length=True, **budget, teacher_seeds=3)
    seed = {n: str(tmp_path / f"dense-ep2-n67349-gl_sst2_s{n}" / "model") for n in (1, 2, 3)}
    assert argv[argv.index("--model") + 1] == seed[1] and argv[argv.index("--teacher") + 1] == seed[1]
    at = argv.index("--teacher_ensemble")
    assert argv[at + 1:at + 3] == [seed[2], seed[3]] and argv[at + 3].startswith("--")
    assert argv[argv.index("--seed") + 1] == "4"
    name, command = transfer.run_name(row, "sst2", 4, True, False, False, {**budget, "teacher_seeds": 3, "group_by_length": True})
    assert name == f"{row}-kd-ep2-n67349-hid1-kdseeds3-gl_sst2_s4"
    assert command.endswith("--seed 4 --kd --epochs 2 --max-train-samples 67349 --hidden-weight 1 --teacher-seeds 3 --group-by-length")
    assert transfer.teacher_overrides({**budget, "teacher_seeds": 3}) == {"epochs": 2, "max_train_samples": 67349}  # compared with dense seed 1's budget
    for kd, seeds, bi, message in ((False, 3, False, "needs --kd"), (True, 1, False, "at least 2, got 1"), (True, 3, True, "cross-encoder row")):
        with pytest.raises(SystemExit, match=message):
            transfer._row_arguments("dense" if bi else row, "stsb", 1, kd, bi_encoder=bi, teacher_seeds=seeds)


def test_temperature_needs_kd_and_reaches_the_trainer(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--temperature sets the logits-KD temperature: it needs --kd"):
        transfer._row_arguments("prune-ft-structured-60", "sst2", 1, False, temperature=4.0)
    with pytest.raises(SystemExit, match="--temperature must be > 0, got 0"):
        transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True, temperature=0.0)
    argv = transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True, temperature=4.0)
    assert argv[argv.index("--temperature") + 1] == "4.0"
    assert "--temperature" not in transfer._row_arguments("prune-ft-structured-60", "sst2", 1, True)
    name, command = transfer.run_name("prune-ft-structured-60", "sst2", 1, True, False, False, {"hidden_weight": 1, "temperature": 4})
    assert name == "prune-ft-structured-60-kd-hid1-kdt4_sst2_s1"
    assert command.endswith("--kd --hidden-weight 1 --temperature 4")


def test_augment_needs_kd_and_reaches_the_finetune_arguments(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    row, budget = "prune-tuned-structured-movement-90", {"epochs": 1, "max_train_samples": 67349, "teacher_epochs": 2}
    dense = tmp_path / "dense-ep2-n67349_sst2_s1" / "model"  # the teacher: trained without augmentation
    dense.mkdir(parents=True)
    for kd, task, augment in ((False, "sst2", 1), (True, "squad", 1)):
        with pytest.raises(SystemExit, match="--augment adds teacher-labelled variants .* it needs --kd and a GLUE cross-encoder row"):
            transfer._row_arguments(row, task, 1, kd, **budget, augment=augment)
    with pytest.raises(SystemExit, match="--augment must be >= 1, got 0"):
        transfer._row_arguments(row, "sst2", 1, True, **budget, augment=0)
    argv = transfer._row_arguments(row, "sst2", 1, True, **budget, augment=1) + ["--output_dir", str(tmp_path)]
    assert argv[argv.index("--teacher") + 1] == str(dense) and argv[argv.index("--model") + 1] == str(dense)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    assert finetune_args.augment_copies == 1 and finetune_args.augment_probability == 0.4
    assert "--augment_copies" not in transfer._row_arguments(row, "sst2", 1, True, **budget)
    name, command = transfer.run_name(row, "sst2", 1, True, False, False, {**budget, "hidden_weight": 1, "augment": 1})
    assert name == f"{row}-kd-ep1-n67349-hid1-tep2-aug1_sst2_s1"
    assert command.endswith("--kd --epochs 1 --max-train-samples 67349 --hidden-weight 1 --teacher-epochs 2 --augment 1")
    label = transfer._override_label({**budget, "augment": 1})
    assert label.endswith("(from the 2-epoch dense model) (+1 augmented per example)")
    assert label.startswith(" (1 epoch) (67,349 examples)") and "epochs" not in transfer._override_label({"epochs": 1})


def test_pruning_end_applies_to_prune_at_finetune_rows_and_reaches_the_schedule(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    (tmp_path / "dense_sst2_s1" / "model").mkdir(parents=True)
    for row in ("dense", "upstream-90", "dense-layers-1"):  # refused before any model is looked up
        with pytest.raises(SystemExit, match="--pruning-end .* applies to prune-ft-\\* / prune-tuned-\\* rows"):
            transfer._row_arguments(row, "sst2", 1, False, pruning_end=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(SystemExit, match=f"--pruning-end is a fraction of training in \\(0, 1\\], got {bad:g}"):
            transfer._row_arguments("prune-tuned-structured-movement-90", "sst2", 1, True, pruning_end=bad)
    argv = transfer._row_arguments("prune-tuned-structured-movement-90", "sst2", 1, True, pruning_end=0.35)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
        argv + ["--output_dir", str(tmp_path / "run")])
    assert finetune_args.pruning_end == 0.35 and finetune_args.prune_method == "structured_movement"
    argv = transfer._row_arguments("prune-tuned-structured-movement-90", "sst2", 1, True)
    assert "--pruning_end" not in argv  # the default (0.7) stays the finetune default, the published rows' name unchanged
    name, command = transfer.run_name("prune-tuned-structured-movement-90", "sst2", 1, True, False, False,
                                      {"epochs": 2, "max_train_samples": 67349, "hidden_weight": 1, "pruning_end": 0.35,
                                       "group_by_length": True, "precision": "fp32"})
    assert name == "prune-tuned-structured-movement-90-kd-ep2-n67349-hid1-pe0.35-gl-fp32_sst2_s1"
    assert command.endswith("--hidden-weight 1 --pruning-end 0.35 --group-by-length --precision fp32")
    assert transfer._override_label({"pruning_end": 0.35}) == " (pruned by 0.35 of training)"


def test_pruning_start_applies_to_prune_at_finetune_rows_and_reaches_the_schedule(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    with pytest.raises(SystemExit, match="--pruning-start .* applies to prune-ft-\\* / prune-tuned-\\* rows"):
        transfer._row_arguments("upstream-90", "stsb", 1, False, pruning_start=0.2)
    for bad, end in ((0.0, None), (0.7, None), (0.4, 0.35)):
        with pytest.raises(SystemExit, match=f"--pruning-start is a fraction of training in \\(0, pruning end\\), got {bad:g}"):
            transfer._row_arguments("prune-ft-movement-90", "stsb", 1, False, pruning_start=bad, pruning_end=end)
    argv = transfer._row_arguments("prune-ft-movement-90", "stsb", 1, False, pruning_start=0.2)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
        argv + ["--output_dir", str(tmp_path / "run")])
    assert finetune_args.pruning_start == 0.2 and finetune_args.prune_method == "movement"
    argv = transfer._row_arguments("prune-ft-movement-90", "stsb", 1, False, pruning_start=0.75, pruning_end=0.9)  # a later end allows it
    assert argv[argv.index("--pruning_start") + 1] == "0.75" and argv[argv.index("--pruning_end") + 1] == "0.9"
    assert "--pruning_start" not in transfer._row_arguments("prune-ft-movement-90", "stsb", 1, False)
    name, command = transfer.run_name("prune-ft-movement-90", "stsb", 1, True, False, False,
                                      {"pruning_end": 0.8, "pruning_start": 0.2, "group_by_length": True, "precision": "fp32"})
    assert name == "prune-ft-movement-90-kd-pe0.8-ps0.2-gl-fp32_stsb_s1"
    assert command.endswith("--kd --pruning-end 0.8 --pruning-start 0.2 --group-by-length --precision fp32")
    assert transfer.parse_run_name(name.removesuffix("_stsb_s1"))[4]["pruning_start"] == 0.2
    assert transfer._override_label({"pruning_start": 0.2}) == " (pruning from 0.2 of training)"


def test_grouped_runs_batch_by_length_and_distil_from_the_dense_run_trained_so(tmp_path, monkeypatch):
    import dataclasses

    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    row, budget = "prune-tuned-structured-movement-90", {"epochs": 2, "max_train_samples": 67349}
    (tmp_path / "dense-ep2-n67349-fp32_sst2_s1" / "model").mkdir(parents=True)  # random batches: not its teacher
    with pytest.raises(SystemExit, match=r"dense-ep2-n67349-gl-fp32_sst2_s1/model is missing: run `python benchmarks/transfer.py "
                                         r"--row dense --task sst2 --seed 1 --epochs 2 --max-train-samples 67349 "
                                         r"--group-by-length --precision fp32` first"):
        transfer._row_arguments(row, "sst2", 1, True, **budget, precision="fp32", group_by_length=True)
    grouped = tmp_path / "dense-ep2-n67349-gl-fp32_sst2_s1" / "model"
    grouped.mkdir(parents=True)
    argv = transfer._row_arguments(row, "sst2", 1, True, **budget, precision="fp32", group_by_length=True) + ["--output_dir", str(tmp_path)]
    assert argv[argv.index("--model") + 1] == str(grouped) and argv[argv.index("--teacher") + 1] == str(grouped)
    _, training_args = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    if any(f.name == "group_by_length" for f in dataclasses.fields(TrainingArguments)):  # transformers 4
        assert training_args.group_by_length is True
    else:  # transformers 5
        assert training_args.train_sampling_strategy == "group_by_length"
    argv = transfer._row_arguments(row, "sst2", 1, True, **budget, precision="fp32") + ["--output_dir", str(tmp_path)]
    _, training_args = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    assert getattr(training_args, "group_by_length", False) is False and getattr(training_args, "train_sampling_strategy", "random") == "random"
    with pytest.raises(ValueError, match="True or None"):
        transfer.run_name(row, "sst2", 1, True, False, False, {"group_by_length": False})


@pytest.fixture
def table_files(tmp_path, monkeypatch):
    """transfer.py's table over results files in a temporary folder: (that folder, the README blocks it wrote)."""
    import readme_block

    written = {}
    monkeypatch.setattr(transfer, "RUNS", tmp_path / "transfer")
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    monkeypatch.setattr(transfer, "_plot", lambda runs, tasks: None)
    monkeypatch.setattr(readme_block, "update_readme_block", lambda name, block: written.setdefault(name, block))
    (tmp_path / "transfer").mkdir()
    return tmp_path / "transfer", written


def test_table_keeps_fp32_runs_apart_and_compares_them_with_the_fp32_dense_run(table_files):
    import json

    runs_dir, written = table_files
    common = {"main_metric": "accuracy", "kd": False, "qat": False, "train_seconds": 60.0, "eval_seconds": 1.0,
              "train_examples": 2490, "epochs": 3, "max_length": 128}
    runs = [("dense_mrpc_s1", "dense", "mrpc", 0.85, 1000, None), ("dense-fp32_mrpc_s1", "dense", "mrpc", 0.80, 1000, "fp32"),
            ("dense_rte_s1", "dense", "rte", 0.55, 1000, None),
            ("upstream-90_mrpc_s1", "upstream-90", "mrpc", 0.80, 100, None),
            ("upstream-90-fp32_mrpc_s2", "upstream-90", "mrpc", 0.78, 100, "fp32"),
            ("upstream-90-fp32_rte_s1", "upstream-90", "rte", 0.50, 100, "fp32")]
    for name, row, task, score, nonzeros, precision in runs:
        data = {**common, "task": task, "row": row, "score": score, "encoder_nonzeros": nonzeros, **({"precision": precision} if precision else {})}
        (runs_dir / f"{name}.json").write_text(json.dumps(data))
    text = transfer.write_table()
    assert "| dense | 1,000 | 85.0 (1 seed) | 55.0 (1 seed) | 100.0% (2) |" in text
    assert "| dense (fp32) | 1,000 | 80.0 (1 seed) | – | 100.0% (1) |" in text
    assert "| upstream-90 | 100 | 80.0 (1 seed) | – | 94.1% (1) |" in text  # the bf16 run and the bf16 dense run only
    # mrpc against the fp32 dense run (78 / 80), rte against the bf16 one where no fp32 dense run exists (50 / 55)
    assert f"| upstream-90 (fp32) | 100 | 78.0 (1 seed) | 50.0 (1 seed) | {100 * (0.78 / 0.80 + 0.50 / 0.55) / 2:.1f}% (2) |" in text
    assert written["transfer-table"].startswith(text)
    # the summary keeps the plain dense row only: there is no upstream-90 + KD run, and the fp32 rows are other rows
    assert written["transfer-summary"].splitlines()[2:] == ["| dense | 1,000 | 85.0 (1 seed) | 55.0 (1 seed) | 100.0% (2) |"]


def test_table_summary_holds_the_dense_and_90_kd_rows_as_the_table_does(table_files):
    import json

    runs_dir, written = table_files
    common = {"main_metric": "accuracy", "qat": False, "train_seconds": 60.0, "eval_seconds": 1.0, "task": "rte",
              "train_examples": 2490, "epochs": 3, "max_length": 128}
    runs = [("dense_rte_s1", "dense", False, 0.56), ("dense_rte_s2", "dense", False, 0.54),
            ("upstream-90-kd_rte_s1", "upstream-90", True, 0.53), ("upstream-90_rte_s1", "upstream-90", False, 0.52),
            ("upstream-80-kd_rte_s1", "upstream-80", True, 0.54)]
    for name, row, kd, score in runs:
        data = {**common, "row": row, "kd": kd, "score": score, "encoder_nonzeros": 100}
        (runs_dir / f"{name}.json").write_text(json.dumps(data))
    text = transfer.write_table()
    summary = written["transfer-summary"].splitlines()
    assert summary[:2] == text.splitlines()[2:4]  # the table's header and separator
    assert summary[2:] == ["| dense | 100 | 55.0 ± 1.4 (2 seeds) | 100.0% (1) |", "| upstream-90 + KD | 100 | 53.0 (1 seed) | 96.4% (1) |"]
    assert all(line in text.splitlines() for line in summary)


def test_table_compares_a_grouped_run_with_the_grouped_dense_run(table_files):
    import json

    runs_dir, _ = table_files
    common = {"main_metric": "accuracy", "kd": False, "qat": False, "train_seconds": 60.0, "eval_seconds": 1.0,
              "train_examples": 2490, "epochs": 3, "max_length": 128, "precision": "fp32"}
    runs = [("dense-fp32_mrpc_s1", "dense", "mrpc", 0.80, None), ("dense-gl-fp32_mrpc_s1", "dense", "mrpc", 0.84, True),
            ("dense-fp32_rte_s1", "dense", "rte", 0.55, None),
            ("upstream-90-gl-fp32_mrpc_s1", "upstream-90", "mrpc", 0.79, True), ("upstream-90-gl-fp32_rte_s1", "upstream-90", "rte", 0.50, True)]
    for name, row, task, score, grouped in runs:
        data = {**common, "task": task, "row": row, "score": score, "encoder_nonzeros": 100, "group_by_length": grouped}
        (runs_dir / f"{name}.json").write_text(json.dumps(data))
    text = transfer.write_table()
    assert "| dense (grouped by length) (fp32) | 100 | 84.0 (1 seed) | – | 100.0% (1) |" in text
    # mrpc against the grouped dense run (79 / 84), rte against the random-batch one where no grouped dense run exists
    assert f"| upstream-90 (grouped by length) (fp32) | 100 | 79.0 (1 seed) | 50.0 (1 seed) | {100 * (0.79 / 0.84 + 0.50 / 0.55) / 2:.1f}% (2) |" in text


def test_representation_keeps_rows_of_checkpoints_missing_here_and_says_so():
    import representation

    previous = {"sentences": 256, "stsb_pairs": 1500, "results": {"dense": {"x": 1}, "upstream-90": {"x": 2}}}
    current = {"sentences": 256, "stsb_pairs": 1500, "results": {"dense": {"x": 3}, "upstream-hidden-kd-90": {"x": 4}}}
    merged = representation.merge_earlier(previous, current)
    assert merged["results"] == {"dense": {"x": 3}, "upstream-hidden-kd-90": {"x": 4}, "upstream-90": {"x": 2}}
    assert merged["kept_from_earlier_runs"] == ["upstream-90"]
    other = representation.merge_earlier({**previous, "sentences": 64}, current)  # another setup: nothing kept
    assert other["results"] == current["results"] and other["kept_from_earlier_runs"] == []


def test_unknown_overrides_are_refused():
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        transfer._row_arguments("dense", "sst2", 1, False, epoch=2)


def test_classifier_pooling_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    monkeypatch.setattr(transfer, "ROOT", tmp_path)
    (tmp_path / "out" / "prune_ofa_90" / "model").mkdir(parents=True)
    (tmp_path / "dense-gl-fp32_stsb_s1" / "model").mkdir(parents=True)
    name, command = transfer.run_name("upstream-90", "stsb", 1, True, False, False,
                                      {"classifier_pooling": "mean", "group_by_length": True, "precision": "fp32"})
    assert name == "upstream-90-kd-poolmean-gl-fp32_stsb_s1"
    assert command.endswith("--kd --classifier-pooling mean --group-by-length --precision fp32")
    assert transfer._override_label({"classifier_pooling": "mean"}) == " (mean-pooled head)"
    argv = transfer._row_arguments("upstream-90", "stsb", 1, True, precision="fp32", group_by_length=True, classifier_pooling="mean")
    assert argv[argv.index("--classifier_pooling") + 1] == "mean"
    assert argv[argv.index("--teacher") + 1] == str(tmp_path / "dense-gl-fp32_stsb_s1" / "model")  # the teacher keeps [CLS]
    assert "--classifier_pooling" not in transfer._row_arguments("upstream-90", "stsb", 1, True, precision="fp32", group_by_length=True)
    with pytest.raises(SystemExit, match="applies to the cross-encoder head on GLUE tasks"):
        transfer._row_arguments("upstream-90", "squad", 1, False, classifier_pooling="mean")
    with pytest.raises(SystemExit, match="--classifier-pooling is mean"):
        transfer._row_arguments("upstream-90", "stsb", 1, False, classifier_pooling="cls")


def test_masked_rows_put_the_upstream_masks_on_dense_weights(tmp_path, monkeypatch, tiny_tokenizer):
    import torch
    from conftest import build
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

    from hf_sparse import SparseBertForSequenceClassification, SparseBertModel
    from hf_sparse.transfer import mask_drift, reference_masks

    root = tmp_path / "root"
    (root / "recipes").mkdir(parents=True)
    monkeypatch.setattr(transfer, "ROOT", root)
    monkeypatch.setattr(transfer, "MODELS", root / "out" / "transfer")
    upstream = root / "out" / "prune_ofa_90" / "model"
    build("SparseBertForMaskedLM", 0.8, seed=1).save_pretrained(upstream)
    pretrained = tmp_path / "minilm"
    build("SparseBertModel", 0.0, seed=2).to_dense().save_pretrained(pretrained)
    tiny_tokenizer.save_pretrained(pretrained)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: pretrained)
    tuned = root / "out" / "transfer" / "dense-gl-fp32_stsb_s1" / "model"
    build("SparseBertForSequenceClassification", 0.0, seed=3, num_labels=1).to_dense().save_pretrained(tuned)
    tiny_tokenizer.save_pretrained(tuned)

    def start_of(row):
        argv = transfer._row_arguments(row, "stsb", 1, True, precision="fp32", group_by_length=True)
        assert argv[argv.index("--teacher") + 1] == str(tuned)
        return Path(argv[argv.index("--model") + 1])

    def check_weights(sparse_encoder, dense_encoder):
        for name, module in sparse_encoder.named_modules():
            if hasattr(module, "weight_mask"):
                keep = module.weight_mask.bool()
                dense_weight = dense_encoder.get_submodule(name).weight
                assert torch.equal(module.weight[keep], dense_weight[keep]) and not module.weight[~keep].any()

    start = start_of("masked-tuned-90")
    assert start == root / "out" / "transfer" / "starts" / "masked-tuned-90_from-dense-gl-fp32_stsb_s1"
    model = SparseBertForSequenceClassification.from_pretrained(start)
    assert mask_drift(model, reference_masks(upstream)) == []
    dense = AutoModelForSequenceClassification.from_pretrained(tuned)
    check_weights(model.bert.encoder, dense.bert.encoder)
    assert torch.equal(model.classifier.weight, dense.classifier.weight)  # the fine-tuned head is kept
    assert AutoTokenizer.from_pretrained(start).get_vocab() == tiny_tokenizer.get_vocab()  # the dense model's tokenizer

    (start / "stale").write_text("from an earlier upstream checkpoint")
    assert start_of("masked-tuned-90") == start and not (start / "stale").exists()  # rebuilt for every run

    start = start_of("masked-pretrained-90")
    assert start.name == "masked-pretrained-90_from-minilm"
    base = SparseBertModel.from_pretrained(start)
    assert mask_drift(base, reference_masks(upstream)) == []
    check_weights(base.encoder, BertModel.from_pretrained(pretrained).encoder)
    assert not list((root / "out" / "transfer" / "starts").glob("*.partial"))
    assert transfer._row_sparsity("masked-tuned-90") == transfer._row_sparsity("masked-pretrained-pairs-90") == 0.9

    with pytest.raises(SystemExit, match="prune_ofa_97/model is missing"):
        start_of("masked-tuned-97")
    with pytest.raises(SystemExit, match="unknown row 'masked-tuned-pairs-90'"):
        start_of("masked-tuned-pairs-90")  # no recipe of that name in this root
    (root / "out" / "transfer" / "dense-bi_stsb_s1" / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match="masked-\\* rows are cross-encoder rows"):
        transfer._row_arguments("masked-tuned-90", "stsb", 1, True, bi_encoder=True)


def test_readme_blocks_are_found_in_either_readme_and_links_follow_the_file(tmp_path, monkeypatch):
    import readme_block

    root, bench = tmp_path / "README.md", tmp_path / "benchmarks" / "README.md"
    bench.parent.mkdir()
    root.write_text("intro\n<!-- a -->\nold\n<!-- /a -->\nend\n")
    bench.write_text("<!-- b -->\nold\n<!-- /b -->\n")
    monkeypatch.setattr(readme_block, "README", root)
    monkeypatch.setattr(readme_block, "BENCHMARKS_README", bench)
    plot = "![plot](benchmarks/results/x.png)"
    assert readme_block.update_readme_block("a", plot)
    assert readme_block.update_readme_block("b", plot)
    assert root.read_text() == f"intro\n<!-- a -->\n{plot}\n<!-- /a -->\nend\n"
    assert bench.read_text() == "<!-- b -->\n![plot](results/x.png)\n<!-- /b -->\n"
    assert not readme_block.update_readme_block("c", plot)  # no markers: nothing written
    assert root.read_text().count("<!--") == 2 and bench.read_text().count("<!--") == 2


def test_every_fixed_readme_block_is_in_exactly_one_readme():
    import readme_block

    texts = readme_block.README.read_text() + readme_block.BENCHMARKS_README.read_text()
    for name in ("format-table", "upstream-table", "batch-order", "transfer-table", "transfer-summary", "stsb-heads-table", "latency-table"):
        assert texts.count(f"<!-- {name} -->") == 1 and texts.count(f"<!-- /{name} -->") == 1, name


def test_plot_draws_one_panel_per_training_regime_with_seed_means_and_spreads(tmp_path, monkeypatch):
    runs = {
        ("dense", "mrpc"): [{"score": 0.86}, {"score": 0.88}],
        ("upstream-90 + KD", "mrpc"): [{"score": 0.80}],
        ("dense (grouped by length) (fp32)", "mrpc"): [{"score": 0.84}],
        ("upstream-80 + KD (grouped by length) (fp32)", "mrpc"): [{"score": 0.79}, {"score": 0.81}, {"score": 0.80}],
        ("prune-ft-90 + KD (grouped by length) (fp32)", "mrpc"): [{"score": 0.10}],  # not an upstream row: not drawn
    }
    points = transfer._plot_points(runs, "mrpc", r"upstream-\d+ \+ KD \(grouped by length\) \(fp32\)", "dense (grouped by length) (fp32)")
    assert [(x, round(y, 6), round(s, 6)) for x, y, s in points] == [(0.0, 84.0, 0.0), (80.0, 80.0, 1.0)]
    points = transfer._plot_points(runs, "mrpc", r"upstream-\d+ \+ KD", "dense")
    assert [(x, round(y, 6)) for x, y, _ in points] == [(0.0, 87.0), (90.0, 80.0)] and round(points[0][2], 6) == round(2 ** 0.5, 6)
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    transfer._plot(runs, ["mrpc"])
    assert (tmp_path / "transfer.png").stat().st_size > 0
    import matplotlib.image

    both = matplotlib.image.imread(tmp_path / "transfer.png")
    assert both.shape[1] > 2.5 * both.shape[0]  # two panels side by side: both regimes ran
    transfer._plot({key: value for key, value in runs.items() if "fp32" not in key[0]}, ["mrpc"])
    one = matplotlib.image.imread(tmp_path / "transfer.png")
    assert one.shape[0] == both.shape[0] and one.shape[1] < 0.6 * both.shape[1]
    transfer._plot({("dense (grouped by length) (fp32)", "mrpc"): [{"score": 0.84}]}, ["mrpc"])  # dense alone: its panel
    assert matplotlib.image.imread(tmp_path / "transfer.png").shape == one.shape
    transfer._plot({("prune-ft-90 + KD", "mrpc"): [{"score": 0.10}]}, ["mrpc"])  # no panel's rows: still a plot
    assert matplotlib.image.imread(tmp_path / "transfer.png").shape == one.shape


@pytest.mark.parametrize("script", ["transfer", "upstream"])
def test_committed_tables_are_what_the_committed_results_give(tmp_path, monkeypatch, script):
    """Regenerating the tables from the committed results files changes neither `results/<script>.md` nor either
    README: a run whose results file was put back (or a table edited by hand) cannot leave a table behind that
    disagrees with the files it claims to summarise."""
    import readme_block
    import upstream

    module = {"transfer": transfer, "upstream": upstream}[script]
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for file in module.RESULTS.glob("*.json"):  # upstream_*.json, representation.json (the STS-B heads table)
        shutil.copy(file, results)
    readmes = {readme_block.README: tmp_path / "README.md", readme_block.BENCHMARKS_README: tmp_path / "benchmarks" / "README.md"}
    for committed, copy in readmes.items():
        shutil.copy(committed, copy)
    monkeypatch.setattr(module, "RESULTS", results)
    monkeypatch.setattr(readme_block, "README", readmes[readme_block.README])
    monkeypatch.setattr(readme_block, "BENCHMARKS_README", readmes[readme_block.BENCHMARKS_README])
    monkeypatch.setattr(transfer, "_plot", lambda runs, tasks: None)

    module.write_table()

    assert (results / f"{script}.md").read_text() == (module.ROOT / "benchmarks" / "results" / f"{script}.md").read_text()
    for committed, copy in readmes.items():
        assert copy.read_text() == committed.read_text(), f"{committed.relative_to(module.ROOT)}: rerun `python benchmarks/{script}.py --table`"


def test_paired_dev_block_is_what_its_committed_results_give():
    import json

    import paired_dev
    import readme_block

    path = paired_dev.RESULTS / "paired_dev_sst2.json"
    rows = json.loads(path.read_text())["rows"]
    text = readme_block.BENCHMARKS_README.read_text()
    block = text.split("<!-- paired-dev-sst2 -->\n", 1)[1].split("\n<!-- /paired-dev-sst2 -->", 1)[0]
    assert block == paired_dev.table(rows)
    for row in rows:  # every row records the command that rebuilds it, with the seeds it pooled
        seeds = "--seeds " + " ".join(str(s["seed"]) for s in row["per_seed"])
        dense_seeds = row.get("dense_seeds")
        assert row["command"].endswith(seeds + (" --dense-seeds " + " ".join(map(str, dense_seeds)) if dense_seeds else ""))
        assert row["pooled"]["low"] <= row["pooled"]["delta"] <= row["pooled"]["high"]
        if dense_seeds:  # the dense score is the mean of the dense seeds'
            assert len(dense_seeds) == len(row["dense_seed_scores"]) > 1
            assert row["dense_score"] == pytest.approx(sum(row["dense_seed_scores"]) / len(dense_seeds))


def test_paired_dev_names_the_training_command_of_a_missing_seed(tmp_path, monkeypatch):
    import paired_dev

    monkeypatch.setattr(paired_dev, "MODELS", tmp_path)
    row = "prune-tuned-structured-movement-80-magnitude-90-kd-ep2-n67349-hid1-gl"
    monkeypatch.setattr(sys, "argv", ["paired_dev.py", "--task", "sst2", "--row", row, "--seeds", "1", "2"])
    with pytest.raises(SystemExit, match=re.escape(
        f"{tmp_path}/{row}_sst2_s1/model is missing: run `python benchmarks/transfer.py --row "
        "prune-tuned-structured-movement-80-magnitude-90 --task sst2 --seed 1 --kd --epochs 2 --max-train-samples 67349 "
        "--hidden-weight 1 --group-by-length` first")):
        paired_dev.main()
    for seed in (1, 2):  # the trained seeds are there; a dense seed beyond the teacher is not
        (tmp_path / f"{row}_sst2_s{seed}" / "model").mkdir(parents=True)
    (tmp_path / "dense-ep2-n67349-gl_sst2_s1" / "model").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["paired_dev.py", "--task", "sst2", "--row", row, "--seeds", "1", "2", "--dense-seeds", "1", "2"])
    with pytest.raises(SystemExit, match=re.escape(
        f"{tmp_path}/dense-ep2-n67349-gl_sst2_s2/model is missing: run `python benchmarks/transfer.py --row dense --task sst2 "
        "--seed 2 --epochs 2 --max-train-samples 67349 --group-by-length` first")):
        paired_dev.main()
    for repeated in (["--seeds", "1", "1"], ["--seeds", "1", "--dense-seeds", "2", "2"]):
        monkeypatch.setattr(sys, "argv", ["paired_dev.py", "--task", "sst2", "--row", row, *repeated])
        with pytest.raises(SystemExit):  # argparse: a repeated seed
            paired_dev.main()


def test_dropout_and_weight_averaging_rows(tmp_path, monkeypatch):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments

    monkeypatch.setattr(transfer, "MODELS", tmp_path)
    (tmp_path / "dense-gl_sst2_s1" / "model").mkdir(parents=True)
    name, command = transfer.run_name("prune-tuned-structured-movement-75-magnitude-90", "sst2", 2, True, False, False,
                                      {"dropout": 0.0, "average_from": 0.7, "group_by_length": True})
    assert name == "prune-tuned-structured-movement-75-magnitude-90-kd-do0-avg0.7-gl_sst2_s2"
    assert command.endswith("--kd --dropout 0 --average-from 0.7 --group-by-length")
    assert transfer._override_label({"dropout": 0.0, "average_from": 0.7}) == " (dropout 0) (weights averaged from 0.7 of training)"
    argv = transfer._row_arguments("prune-tuned-structured-movement-75-magnitude-90", "sst2", 2, True, group_by_length=True,
                                   dropout=0.0, average_from=0.7)
    finetune_args, _ = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(
        argv + ["--output_dir", str(tmp_path / "run")])
    assert finetune_args.dropout == 0.0 and finetune_args.average_from == 0.7 and finetune_args.prune_unit_sparsity == 0.75
    assert "--dropout" not in transfer._row_arguments("prune-tuned-structured-movement-75-magnitude-90", "sst2", 2, True, group_by_length=True)
