"""Sparse transfer of MiniLM-L6 on GLUE and SQuAD, one (row, task, seed) per command.

    python benchmarks/transfer.py --row dense --task mrpc --seed 1          # the dense baseline (and KD teacher)
    python benchmarks/transfer.py --row upstream-90 --task mrpc --seed 1 --kd
    python benchmarks/transfer.py --table                                   # rebuild table + plot from results

Rows: `dense` (MiniLM-L6 as released), `upstream-<s>` (out/prune_ofa_<s>/model from
benchmarks/upstream.py, pattern locked), `upstream-<recipe>-<s>` (the same from another upstream
recipe, e.g. `upstream-sparsebert-90` = out/sparsebert_90/model), `prune-ft-<s>` (magnitude pruning to s% during
fine-tuning, from dense: the downstream-pruning baseline), `prune-ft-movement-<s>` / `prune-ft-soft-movement-<s>`
(the same, weights ranked by accumulated movement `-W * dL/dW`, Sanh et al. 2020: per layer / over all layers), `prune-ft-structured-<s>` (s% of
attention heads and FFN neurons removed during fine-tuning, ranked by L1 norm: compactable),
`prune-ft-structured-movement-<s>` (the same, ranked by accumulated movement), `prune-ft-structured-fisher-<s>` (the same, ranked by
the Fisher information of a gate on each unit's output), `prune-tuned-*` (the same
methods, started from the dense row's fine-tuned model instead of the pre-trained one: prune a fine-tuned model),
`prune-*-global-<s>` (magnitude or a structured method ranked over all layers at once, so layers end with uneven widths),
`prune-*-structured[-movement|-fisher]-joint[-global]-<s>` (heads and neurons ranked together by score per weight under
one budget of s% of their weights, instead of s% of the heads and s% of the neurons),
`prune-*-structured[-movement|-fisher]-<u>-magnitude-<s>` (hybrid: u% of the heads and neurons removed, then the
smallest-magnitude weights inside the units kept until every layer is s% sparse; compacts to the widths of u%),
`dense-layers-<n>` (the first n dense layers: an equal-non-zero baseline), `masked-pretrained-[<recipe>-]<s>` /
`masked-tuned-[<recipe>-]<s>` (the masks of the `upstream-[<recipe>-]<s>` checkpoint on the pre-trained MiniLM's weights /
on the dense row's fine-tuned weights, head kept; pattern locked: the upstream pattern without the upstream weights). `--kd` distils from the dense row's fine-tuned model (same head) of the
same task and seed 1 (run that first); `--qat` adds 8-bit quantization-aware training; `--bi-encoder` (stsb)
fine-tunes a sentence-transformers bi-encoder instead of a cross-encoder (each sentence encoded alone, cosine of the
mean-pooled vectors). Every row of a task uses the same budget (TASK_BUDGETS:
epochs, examples, max length, learning rate), bf16 autocast on CPUs with native bf16 and fp32 on others
(`--precision`), dynamic padding; `--learning-rate` overrides the
task's rate, `--head-learning-rate` sets the task head's own rate (pooler and classifier), `--epochs` and
`--max-train-samples` override the task's epochs and training examples (a longer-budget row; with `--kd` a row given
`--max-train-samples` distils from the dense row trained with the same `--epochs` / `--max-train-samples`, which is also
the model a `prune-tuned-*` row starts from); `--pruning-end F` (prune-ft-* / prune-tuned-* rows) ends pruning at that
fraction of training instead of 0.7; `--pruning-start F` starts it at that fraction instead of the first steps; `--hidden-weight` (with `--kd`) also distils the teacher's hidden states;
`--attention-weight` (with `--kd`, cross-encoder rows) also distils its attention distributions (KL, layer by layer; eager
attention); `--temperature` (with `--kd`) sets the logits-KD temperature (default 2); `--group-by-length` batches examples of
similar length together (less padding, faster steps; its own row, `-gl`, distilled from and
starting from the dense run trained so); `--min-heads-per-layer` (global or joint structured
rows) keeps that many heads in every layer; `--augment N` (with `--kd`, GLUE) adds up to N teacher-labelled variants of each
training example, words replaced by embedding neighbours (TinyBERT-style; hf_sparse/tasks/augment.py); `--teacher-epochs` (with `--max-train-samples`) starts from / distils
from the dense row trained that many epochs instead of the run's own; `--teacher-seeds N` (with `--kd`, cross-encoder rows) distils
from the mean of the distributions of the dense row's seeds 1..N (an ensemble teacher; hidden states and the start of a
`prune-tuned-*` row still come from seed 1); `--classifier-pooling mean` (GLUE cross-encoder rows)
gives the head the mean of the last hidden states instead of [CLS]; `--dropout P` sets the student's dropout (0.1 in
the checkpoint); `--average-from F` evaluates and keeps the uniform average of the weights over the steps from that fraction
of training on (prune-* rows: at or after the pruning end); the row's label says so. Each run writes
benchmarks/results/transfer/<row>[-kd][-qat][-bi][-lr<lr>][-hlr<lr>][-ep<n>][-n<examples>][-hid<w>][-att<w>][-kdt<t>][-mh<n>][-tep<n>][-kdseeds<n>][-aug<n>][-pe<f>][-ps<f>][-poolmean][-do<p>][-avg<f>][-gl][-fp32]_<task>_s<seed>.json
(`-fp32`: trained in fp32, its own row, distilled from and starting from the fp32 dense run); models go to out/transfer/ (not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "transfer"
MODELS = ROOT / "out" / "transfer"

# same budget for every row of a task; chosen so a row takes minutes on 2 CPU cores
TASK_BUDGETS = {
    "mrpc": dict(epochs=3, max_train_samples=None, learning_rate=1e-4),
    "rte": dict(epochs=3, max_train_samples=None, learning_rate=1e-4),
    "stsb": dict(epochs=3, max_train_samples=None, learning_rate=1e-4),
    "cola": dict(epochs=3, max_train_samples=None, learning_rate=1e-4),
    "sst2": dict(epochs=1, max_train_samples=20000, learning_rate=1e-4),
    "squad": dict(epochs=1, max_train_samples=4000, learning_rate=1e-4, max_length=256),
}
TASK_ORDER = ["sst2", "mrpc", "stsb", "rte", "cola", "squad"]
BI_ENCODER_LABEL = " (bi-encoder)"
# a row's optional overrides of the task budget, in file-name / command / label order:
# (argument, results key, file-name tag, command flag, label)
OVERRIDES = (
    ("learning_rate", "learning_rate_override", "-lr{:g}", "--learning-rate {:g}", " (lr {:g})"),
    ("head_learning_rate", "head_learning_rate_override", "-hlr{:g}", "--head-learning-rate {:g}", " (head lr {:g})"),
    ("epochs", "epochs_override", "-ep{:g}", "--epochs {:g}", " ({:g} epochs)"),
    ("max_train_samples", "max_train_samples_override", "-n{:d}", "--max-train-samples {:d}", " ({:,} examples)"),
    ("hidden_weight", "hidden_weight_override", "-hid{:g}", "--hidden-weight {:g}", " (hidden-state KD {:g})"),
    ("attention_weight", "attention_weight_override", "-att{:g}", "--attention-weight {:g}", " (attention KD {:g})"),
    ("prc_weight", "prc_weight_override", "-prc{:g}", "--prc-weight {:g}", " (CAP PrC {:g})"),
    ("snc_weight", "snc_weight_override", "-snc{:g}", "--snc-weight {:g}", " (CAP SnC {:g})"),
    ("fic_weight", "fic_weight_override", "-fic{:g}", "--fic-weight {:g}", " (CAP FiC {:g})"),
    ("temperature", "temperature_override", "-kdt{:g}", "--temperature {:g}", " (KD temperature {:g})"),
    ("min_heads_per_layer", "min_heads_per_layer_override", "-mh{:d}", "--min-heads-per-layer {:d}", " (>= {:d} heads per layer)"),
    ("teacher_epochs", "teacher_epochs_override", "-tep{:g}", "--teacher-epochs {:g}", " (from the {:g}-epoch dense model)"),
    ("teacher_seeds", "teacher_seeds_override", "-kdseeds{:d}", "--teacher-seeds {:d}", " (KD from dense seeds 1-{:d})"),
    ("augment", "augment_override", "-aug{:d}", "--augment {:d}", " (+{:d} augmented per example)"),
    ("pruning_end", "pruning_end_override", "-pe{:g}", "--pruning-end {:g}", " (pruned by {:g} of training)"),
    ("pruning_start", "pruning_start_override", "-ps{:g}", "--pruning-start {:g}", " (pruning from {:g} of training)"),
    ("classifier_pooling", "classifier_pooling_override", "-pool{}", "--classifier-pooling {}", " ({}-pooled head)"),
    ("dropout", "dropout_override", "-do{:g}", "--dropout {:g}", " (dropout {:g})"),
    ("average_from", "average_from_override", "-avg{:g}", "--average-from {:g}", " (weights averaged from {:g} of training)"),
)
# what a tag's value looks like in a file name, and its type, by the tag's format: "{:g}" float, "{:d}" int, "{}" word
_VALUE = {"g": (r"\d+(?:\.\d+)?(?:e[+-]\d+)?", float), "d": (r"\d+", int), "{": (r"[a-z]+", str)}


# What a run changes from its task's budget and recipe (None: unchanged), one field per OVERRIDES entry ("{:d}" tags
# take an int, "{:g}" a float, "{}" a word); each set field gets the tag, flag and label of its entry.
Overrides = dataclasses.make_dataclass(
    "Overrides", [(argument, _VALUE[tag[-2]][1] | None, None) for argument, _, tag, _, _ in OVERRIDES], frozen=True
)


# a run trained in fp32 (a CPU without native bf16) is its own row, distilled from and compared with the fp32 dense
# run: the published rows trained under bf16 autocast. In `overrides` it is "precision": "fp32" (None: bf16).
FP32_TAG, FP32_FLAG, FP32_LABEL = "-fp32", " --precision fp32", " (fp32)"
# a run whose batches group examples of similar length (fewer padding tokens, faster steps) sees the data
# in another order: its own row, distilled from and compared with the dense run trained the same way.
# In `overrides` it is "group_by_length": True (None: random batches).
GROUPED_TAG, GROUPED_FLAG, GROUPED_LABEL = "-gl", " --group-by-length", " (grouped by length)"


# prune-at-fine-tune rows: prune-<ft|tuned>-[<method>-][joint-][global-][<u>-magnitude-]<s>; no method: magnitude;
# <u>-magnitude- (structured methods): hybrid, u% of the heads and neurons removed, then single weights inside the rest to s%
PRUNE_ROW = re.compile(
    r"prune-(?P<start>ft|tuned)-(?:(?P<method>soft-movement|movement|structured-movement|structured-fisher|structured)-)?"
    r"(?P<joint>joint-)?(?P<scope>global-)?(?:(?P<units>\d+)-magnitude-)?(?P<sparsity>\d+)"
)
PRUNE_ROW_HELP = (
    "prune-ft|tuned-[movement-|soft-movement-|structured[-movement|-fisher]-[joint-]][global-][<u>-magnitude-]<s> "
    "(global-: magnitude or structured; <u>-magnitude-: a structured method removes u of every 100 units, then magnitude takes each layer to s)"
)


def _prune_row(row: str) -> re.Match | None:
    """The parts of a prune-at-fine-tune row; None for other rows; exits on a combination `finetune` refuses."""
    if not (match := PRUNE_ROW.fullmatch(row)):
        return None
    method = match["method"] or "magnitude"
    if match["joint"] and not method.startswith("structured"):
        raise SystemExit(f"row {row!r}: joint- ranks heads and neurons together: it needs a structured method")
    if match["scope"] and method.endswith("movement") and not method.startswith("structured"):
        raise SystemExit(f"row {row!r}: movement ranks per layer, soft-movement over all layers; neither takes global-")
    if match["units"] and not method.startswith("structured"):
        raise SystemExit(f"row {row!r}: <u>-magnitude- removes u% of the heads and neurons first: it needs a structured method")
    if match["units"] and not 0 < int(match["units"]) < int(match["sparsity"]):
        raise SystemExit(f"row {row!r}: the unit sparsity ({match['units']}%) must be above 0 and below the row's sparsity ({match['sparsity']}%)")
    return match


def upstream_row(recipe: str) -> str:
    """The row name of an upstream recipe's checkpoint: prune_ofa_90 -> upstream-90, sparsebert_90 -> upstream-sparsebert-90,
    prune_ofa_pairs_90 -> upstream-pairs-90."""
    return "upstream-" + recipe.removeprefix("prune_ofa_").replace("_", "-")


def _row_arguments(
    row: str, task: str, seed: int, kd: bool, qat: bool = False, bi_encoder: bool = False, precision: str = "auto",
    group_by_length: bool = False, **overrides,
) -> list[str]:
    """The `finetune` arguments of a run; `overrides` are the `Overrides` fields it sets (unknown names: TypeError)."""
    from hf_sparse.upstream import minilm_folder

    o = Overrides(**overrides)

    def dense_model(seed: int = 1) -> Path:  # the dense run of this run's budget, precision and batch order
        return _dense_model(task, bi_encoder, o.epochs, o.max_train_samples, o.teacher_epochs, precision, group_by_length, seed)

    if o.teacher_epochs is not None:
        if o.max_train_samples is None:
            raise SystemExit("--teacher-epochs names the dense row trained with --epochs E --max-train-samples N: it needs --max-train-samples")
        if not (kd or row.startswith("prune-tuned-")):
            raise SystemExit("--teacher-epochs picks the dense model a run distils from (--kd) or starts from (prune-tuned-* rows): it needs one of them")
    if o.teacher_seeds is not None:
        if not kd or bi_encoder:
            raise SystemExit("--teacher-seeds N distils from the mean of the dense row's seeds 1..N: it needs --kd and a cross-encoder row")
        if o.teacher_seeds < 2:
            raise SystemExit(f"--teacher-seeds is the number of dense seeds to distil from, at least 2, got {o.teacher_seeds}")
    if o.augment is not None:
        if not kd or task == "squad" or bi_encoder:
            raise SystemExit("--augment adds teacher-labelled variants of the training examples: it needs --kd and a GLUE cross-encoder row")
        if o.augment < 1:
            raise SystemExit(f"--augment must be >= 1, got {o.augment}")
    prune = _prune_row(row)
    if o.pruning_end is not None:
        if prune is None:
            raise SystemExit("--pruning-end sets when pruning during fine-tuning reaches its target: it applies to prune-ft-* / prune-tuned-* rows")
        if not 0 < o.pruning_end <= 1:
            raise SystemExit(f"--pruning-end is a fraction of training in (0, 1], got {o.pruning_end:g}")
    if o.pruning_start is not None:
        if prune is None:
            raise SystemExit("--pruning-start sets when pruning during fine-tuning begins: it applies to prune-ft-* / prune-tuned-* rows")
        from hf_sparse.transfer.finetune import FinetuneArguments

        end = FinetuneArguments.__dataclass_fields__["pruning_end"].default if o.pruning_end is None else o.pruning_end
        if not 0 < o.pruning_start < end:
            raise SystemExit(f"--pruning-start is a fraction of training in (0, pruning end), got {o.pruning_start:g}")
    if o.snc_weight is not None and prune is None:
        raise SystemExit("--snc-weight contrasts with snapshots taken at the pruning steps: it applies to prune-ft-* / prune-tuned-* rows")
    if (o.prc_weight is not None or o.snc_weight is not None) and bi_encoder:
        raise SystemExit("--prc-weight / --snc-weight apply to cross-encoder rows")
    if o.min_heads_per_layer is not None and not (
        prune and (prune["method"] or "").startswith("structured") and (prune["joint"] or prune["scope"])
    ):
        raise SystemExit("--min-heads-per-layer applies to prune-*-structured[-movement|-fisher]-{global,joint,joint-global}-<s> rows")
    if o.classifier_pooling is not None:
        if o.classifier_pooling != "mean":
            raise SystemExit(f"--classifier-pooling is mean (cls is the default, with no tag), got {o.classifier_pooling!r}")
        if task == "squad" or bi_encoder:
            raise SystemExit("--classifier-pooling applies to the cross-encoder head on GLUE tasks")
    args: list[str] = []
    if row == "dense":
        args += ["--model", str(minilm_folder())]
    elif (upstream := _upstream_model(row)) is not None:
        args += ["--model", str(upstream)]
    elif (match := re.fullmatch(r"masked-(pretrained|tuned)-(.+)", row)) and (upstream := _upstream_model(f"upstream-{match[2]}")) is not None:
        if bi_encoder:
            raise SystemExit("masked-* rows are cross-encoder rows (their tuned weights come from the cross-encoder dense row)")
        if match[1] == "pretrained":
            dense, tuned, start = minilm_folder(), False, MODELS / "starts" / f"{row}_from-minilm"
        else:
            dense = dense_model()
            tuned, start = True, MODELS / "starts" / f"{row}_from-{dense.parent.name}"
        args += ["--model", str(masked_start(upstream, dense, tuned, task, start))]
    elif prune:
        start = minilm_folder() if prune["start"] == "ft" else dense_model()
        method = prune["method"].replace("-", "_") if prune["method"] else "magnitude"
        args += ["--model", str(start), "--prune_method", method, "--target_sparsity", str(int(prune["sparsity"]) / 100)]
        if prune["units"]:
            args += ["--prune_unit_sparsity", str(int(prune["units"]) / 100)]
        if prune["joint"]:
            args += ["--prune_allocation", "joint"]
        if prune["scope"]:
            args += ["--prune_scope", "global"]
        if o.min_heads_per_layer is not None:
            args += ["--prune_min_heads_per_layer", str(o.min_heads_per_layer)]
        if o.pruning_end is not None:
            args += ["--pruning_end", str(o.pruning_end)]
        if o.pruning_start is not None:
            args += ["--pruning_start", str(o.pruning_start)]
    elif match := re.fullmatch(r"dense-layers-(\d+)", row):
        args += ["--model", str(minilm_folder()), "--num_layers", match[1]]
    else:
        raise SystemExit(f"unknown row {row!r}: dense, upstream-<s>, upstream-<recipe>-<s>, masked-pretrained|tuned-[<recipe>-]<s>, {PRUNE_ROW_HELP}, dense-layers-<n>")
    if kd:
        args += ["--teacher", str(dense_model())]
        if o.teacher_seeds is not None:
            args += ["--teacher_ensemble"] + [str(dense_model(seed)) for seed in range(2, o.teacher_seeds + 1)]
    if qat:
        args += ["--qat", "true"]
    if bi_encoder:
        args += ["--head", "bi-encoder"]
    if o.head_learning_rate is not None:
        args += ["--head_learning_rate", str(o.head_learning_rate)]
    if o.classifier_pooling is not None:
        args += ["--classifier_pooling", o.classifier_pooling]
    if o.hidden_weight is not None:
        if not kd:
            raise SystemExit("--hidden-weight distils the dense row's hidden states: it needs --kd")
        args += ["--hidden_weight", str(o.hidden_weight)]
    if o.attention_weight is not None:
        if not kd or bi_encoder:
            raise SystemExit("--attention-weight distils the dense row's attention distributions: it needs --kd and a cross-encoder row")
        args += ["--attention_weight", str(o.attention_weight)]
    if o.prc_weight is not None:  # CAP's PrC: the pre-trained MiniLM every row starts from
        args += ["--prc_weight", str(o.prc_weight), "--pretrained", str(minilm_folder())]
    if o.snc_weight is not None:
        args += ["--snc_weight", str(o.snc_weight)]
    if o.fic_weight is not None:
        if not kd or bi_encoder:
            raise SystemExit("--fic-weight contrasts with the dense row's fine-tuned model: it needs --kd and a cross-encoder row")
        args += ["--fic_weight", str(o.fic_weight)]
    if o.temperature is not None:
        if not kd:
            raise SystemExit("--temperature sets the logits-KD temperature: it needs --kd")
        if o.temperature <= 0:
            raise SystemExit(f"--temperature must be > 0, got {o.temperature:g}")
        args += ["--temperature", str(o.temperature)]
    if o.augment is not None:
        args += ["--augment_copies", str(o.augment)]
    if o.dropout is not None:  # finetune checks the ranges, and that averaging starts after pruning
        args += ["--dropout", str(o.dropout)]
    if o.average_from is not None:
        args += ["--average_from", str(o.average_from)]
    budget = TASK_BUDGETS[task]
    lr = budget["learning_rate"] if o.learning_rate is None else o.learning_rate
    args += ["--task", task, "--num_train_epochs", str(budget["epochs"] if o.epochs is None else o.epochs), "--learning_rate", str(lr)]
    samples = budget.get("max_train_samples") if o.max_train_samples is None else o.max_train_samples
    if samples:
        args += ["--max_train_samples", str(samples)]
    if budget.get("max_length"):
        args += ["--max_length", str(budget["max_length"])]
    return args + [
        "--seed", str(seed), "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
        *_warmup(0.1), "--weight_decay", "0.01", "--bf16", "true" if _bf16(precision) else "false", "--use_cpu", "true",
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none", "--logging_steps", "50",
        "--dataloader_num_workers", "0", *(_group_by_length() if group_by_length else []),
    ]


def _upstream_model(row: str) -> Path | None:
    """The checkpoint of an upstream row (`upstream-<s>`, `upstream-<recipe>-<s>`), None for other rows; exits naming
    the command that makes it if it is missing."""
    if match := re.fullmatch(r"upstream-(\d+)", row):
        model, command = ROOT / "out" / f"prune_ofa_{match[1]}" / "model", f"python benchmarks/upstream.py --sparsity {match[1]}"
    elif row in (recipes := {upstream_row(p.stem): p.stem for p in (ROOT / "recipes").glob("*.yaml")}):
        model, command = ROOT / "out" / recipes[row] / "model", f"python benchmarks/upstream.py --recipe {recipes[row]}"
    else:
        return None
    if not model.is_dir():
        raise SystemExit(f"{model} is missing: run `{command}` first")
    return model


def masked_start(upstream: Path, dense: Path, tuned: bool, task: str, out: Path) -> Path:
    """Writes to `out` a sparse_bert checkpoint with the masks of the `upstream` checkpoint on the weights of the dense
    checkpoint `dense` (zeroed where a mask is 0), and `dense`'s tokenizer: the pre-trained MiniLM (`tuned` False: the base
    model, the task head starts new) or the dense row's fine-tuned model (`tuned` True: its task head kept). Separates the upstream pattern from the
    upstream weights. Rebuilt for every run (seconds), so a regenerated upstream or dense checkpoint is never paired with
    an older start; written to a temporary folder that then replaces `out`, so `out` is complete or absent, never partial."""
    from transformers import AutoConfig, AutoTokenizer

    from hf_sparse import SparseBertForQuestionAnswering, SparseBertForSequenceClassification, SparseBertModel
    from hf_sparse.transfer import reference_masks

    upstream_config = AutoConfig.from_pretrained(upstream)
    dense_config = AutoConfig.from_pretrained(dense)
    if dense_config.model_type != "bert":
        raise SystemExit(f"{dense}: model_type {dense_config.model_type!r}; masked rows put the masks on a plain BERT checkpoint")
    cls = (SparseBertForQuestionAnswering if task == "squad" else SparseBertForSequenceClassification) if tuned else SparseBertModel
    prefix = "" if cls is SparseBertModel else "bert."
    masks = {prefix + name: mask for name, mask in reference_masks(upstream).items()}
    model = cls.from_dense(
        str(dense), masks=masks, sparsity_pattern=upstream_config.sparsity_pattern, target_sparsity=upstream_config.target_sparsity,
        prunable_modules=upstream_config.prunable_modules,
    )
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(dense).save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _dense_model(
    task: str, bi_encoder: bool, epochs: float | None, max_train_samples: int | None, teacher_epochs: float | None = None,
    precision: str = "auto", group_by_length: bool = False, seed: int = 1,
) -> Path:
    """The fine-tuned dense model a run distils from (and a `prune-tuned-*` row starts from): the one trained in the
    run's precision and batch order (seed 1 unless `seed`: the other teachers of `--teacher-seeds`); exits naming its
    command if missing."""
    overrides = {"epochs": epochs, "max_train_samples": max_train_samples, "teacher_epochs": teacher_epochs,
                 "precision": _precision_override(precision), "group_by_length": group_by_length or None}
    name, command = run_name("dense", task, seed, False, False, bi_encoder, teacher_overrides(overrides))
    model = MODELS / name / "model"
    if not model.is_dir():
        raise SystemExit(f"{model} is missing: run `{command}` first")
    return model


def teacher_overrides(overrides: dict) -> dict:
    """The overrides of the dense row a run distils from and is compared with: the run's precision and batch order,
    and its epochs (or its teacher epochs) and examples when it overrides the examples, else none (the task budget,
    which the published epochs-only rows used)."""
    recipe = {key: overrides[key] for key in ("precision", "group_by_length") if overrides.get(key)}
    if overrides.get("max_train_samples") is None:
        return recipe
    epochs = overrides.get("epochs") if overrides.get("teacher_epochs") is None else overrides["teacher_epochs"]
    return {"epochs": epochs, "max_train_samples": overrides["max_train_samples"], **recipe}


def _override_tags(values: dict) -> tuple[str, str]:
    """The file-name tags and command flags of the overrides set in `values` (argument -> value), in OVERRIDES order."""
    set_overrides = [(spec, values[spec[0]]) for spec in OVERRIDES if values.get(spec[0]) is not None]
    tags = "".join(tag.format(value) for (_, _, tag, _, _), value in set_overrides)
    flags = "".join(" " + flag.format(value) for (_, _, _, flag, _), value in set_overrides)
    return tags, flags


def _override_label(values: dict) -> str:
    label = "".join(text.format(values[argument]) for argument, _, _, _, text in OVERRIDES if values.get(argument) is not None)
    label = label.replace(" (1 epochs)", " (1 epoch)")
    return label + (GROUPED_LABEL if values.get("group_by_length") else "") + (FP32_LABEL if values.get("precision") == "fp32" else "")


def _precision_override(precision: str) -> str | None:
    """"fp32" when `precision` (auto, bf16 or fp32) trains in fp32 on this CPU, else None (bf16: no tag)."""
    return None if _bf16(precision) else "fp32"


def _bf16(precision: str) -> bool:
    """bf16 autocast for `precision` bf16, fp32 for fp32; auto: bf16 where the CPU computes it natively (the
    published rows ran there), fp32 elsewhere (emulated bf16 trains ~20x slower). Each results file records it."""
    from hf_sparse.transfer.precision import cpu_bf16_is_fast

    if precision not in ("auto", "bf16", "fp32"):
        raise SystemExit(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and cpu_bf16_is_fast())


def group_by_length_arguments() -> dict:
    """TrainingArguments fields for batches of similar-length examples (`hf_sparse.transfer.finetune`'s)."""
    from hf_sparse.transfer.finetune import group_by_length_arguments as arguments

    return arguments()


def _group_by_length() -> list[str]:
    """`group_by_length_arguments()` as command-line flags."""
    flags = []
    for name, value in group_by_length_arguments().items():
        flags += [f"--{name}", "true" if value is True else value]
    return flags


def _warmup(fraction: float) -> list[str]:
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}  # transformers 5 takes a fraction in warmup_steps
    return ["--warmup_ratio", str(fraction)] if "warmup_ratio" in names else ["--warmup_steps", str(fraction)]


def run(
    row: str, task: str, seed: int, kd: bool, qat: bool = False, bi_encoder: bool = False, precision: str = "auto",
    group_by_length: bool = False, **overrides,
) -> dict:
    """Trains and scores one (row, task, seed) and writes its results file; `overrides` are `Overrides` fields."""
    from transformers import HfArgumentParser, TrainingArguments

    from hf_sparse.transfer.finetune import FinetuneArguments, run_finetune

    argv = _row_arguments(row, task, seed, kd, qat, bi_encoder, precision, group_by_length, **overrides)
    overrides = {**dataclasses.asdict(Overrides(**overrides)), "precision": _precision_override(precision),
                 "group_by_length": group_by_length or None}
    name, command = run_name(row, task, seed, kd, qat, bi_encoder, overrides)
    argv += ["--output_dir", str(MODELS / name)]
    finetune_args, training_args = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    results = run_finetune(finetune_args, training_args)
    results.update(
        row=row, kd=kd, qat=qat, **{key: overrides[argument] for argument, key, _, _, _ in OVERRIDES},
        group_by_length=group_by_length, command=command,
    )
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def run_name(row: str, task: str, seed: int, kd: bool, qat: bool, bi_encoder: bool, overrides: dict) -> tuple[str, str]:
    """The results / model name of a run and the command that makes it; `overrides` maps OVERRIDES arguments to values
    (and "precision" to "fp32" for an fp32 run, "group_by_length" to True for a run batched by length)."""
    tags, flags = _override_tags(overrides)
    if overrides.get("precision") not in (None, "fp32"):
        raise ValueError(f"overrides['precision'] is 'fp32' or None (bf16), got {overrides['precision']!r}")
    if overrides.get("group_by_length") not in (None, True):
        raise ValueError(f"overrides['group_by_length'] is True or None, got {overrides['group_by_length']!r}")
    if overrides.get("group_by_length"):
        tags, flags = tags + GROUPED_TAG, flags + GROUPED_FLAG
    if overrides.get("precision") == "fp32":
        tags, flags = tags + FP32_TAG, flags + FP32_FLAG
    name = f"{row}{'-kd' if kd else ''}{'-qat' if qat else ''}{'-bi' if bi_encoder else ''}{tags}_{task}_s{seed}"
    command = (f"python benchmarks/transfer.py --row {row} --task {task} --seed {seed}" + (" --kd" if kd else "")
               + (" --qat" if qat else "") + (" --bi-encoder" if bi_encoder else "") + flags)
    return name, command


def parse_run_name(name: str) -> tuple[str, bool, bool, bool, dict]:
    """The inverse of `run_name` for the part before `_<task>_s<seed>`: (row, kd, qat, bi_encoder, overrides)."""
    tags = "".join(
        f"(?:{re.escape(tag.split('{')[0])}(?P<{argument}>{_VALUE[tag[-2]][0]}))?" for argument, _, tag, _, _ in OVERRIDES
    )
    match = re.fullmatch(
        f"(?P<row>.+?)(?P<kd>-kd)?(?P<qat>-qat)?(?P<bi>-bi)?{tags}(?P<grouped>{re.escape(GROUPED_TAG)})?(?P<fp32>{re.escape(FP32_TAG)})?", name
    )
    overrides = {"precision": "fp32" if match["fp32"] else None, "group_by_length": True if match["grouped"] else None}
    for argument, _, tag, _, _ in OVERRIDES:
        value = match[argument]
        overrides[argument] = None if value is None else _VALUE[tag[-2]][1](value)
    return match["row"], bool(match["kd"]), bool(match["qat"]), bool(match["bi"]), overrides


def _percent(score: float, task: str) -> float:
    return score if task == "squad" else 100 * score  # SQuAD EM/F1 are percentages already


def _row_sparsity(row: str) -> float:
    if match := PRUNE_ROW.fullmatch(row):
        return int(match["sparsity"]) / 100
    match = re.fullmatch(r"(?:upstream|masked-(?:pretrained|tuned))(?:-[a-z][a-z0-9-]*)?-(\d+)", row)
    return int(match[1]) / 100 if match else 0.0


def _precision(run: dict) -> str:
    return run.get("precision", "bf16")  # results files from before `precision` was recorded ran in bf16


SUMMARY_ROWS = ("dense", "upstream-90 + KD")  # the project README's summary: the target, row for row


def write_table() -> str:
    runs: dict[tuple[str, str], list[dict]] = {}
    baseline: dict[str, list[str]] = {}  # label -> its dense rows, preferred first
    for file in sorted(RUNS.glob("*.json")):
        data = json.loads(file.read_text())
        label = data["row"] + (" + KD" if data["kd"] else "") + (" + QAT" if data.get("qat") else "")
        head = BI_ENCODER_LABEL if data.get("head", "cross-encoder") == "bi-encoder" else ""
        overrides = {argument: data.get(key) for argument, key, _, _, _ in OVERRIDES}
        overrides["precision"] = "fp32" if _precision(data) == "fp32" else None
        overrides["group_by_length"] = data.get("group_by_length") or None
        label += head + _override_label(overrides)
        runs.setdefault((label, data["task"]), []).append(data)
        # its teacher's budget, then the task budget; each in its own batch order and precision first, then with random
        # batches, then in bf16
        budgets = [teacher_overrides(overrides), teacher_overrides({**overrides, "max_train_samples": None})]
        candidates = [b for budget in budgets
                      for b in (budget, {**budget, "group_by_length": None}, {**budget, "group_by_length": None, "precision": None})]
        baseline[label] = list(dict.fromkeys("dense" + head + _override_label(b) for b in candidates))
    labels = sorted({label for label, _ in runs}, key=lambda l: (_row_sparsity(l.split(" ")[0]), l))
    tasks = [t for t in TASK_ORDER if any(task == t for _, task in runs)]
    # each row is compared with the dense row of the same head and of its KD teacher's budget, or else of the task budget
    dense_score = {key: statistics.mean(r["score"] for r in rs) for key, rs in runs.items() if key[0].startswith("dense")}

    def cell(entries: list[dict], task: str) -> str:
        scale = [_percent(e["score"], task) for e in entries]
        if len(scale) == 1:
            return f"{scale[0]:.1f} (1 seed)"
        return f"{statistics.mean(scale):.1f} ± {statistics.stdev(scale):.1f} ({len(scale)} seeds)"

    header = "| row | encoder non-zeros | " + " | ".join(f"{t} ({runs_metric(runs, t)})" for t in tasks) + " | mean vs dense (tasks run) |"
    lines = [header, "|---|---:|" + "---:|" * len(tasks) + "---:|"]
    summary = lines[:]  # the rows of SUMMARY_ROWS that ran, for the project README
    for label in labels:
        cells, ratios, nonzeros = [], [], None
        for t in tasks:
            entries = runs.get((label, t))
            if not entries:
                cells.append("–")
                continue
            nonzeros = entries[0]["encoder_nonzeros"]
            scores = [e["score"] for e in entries]
            cells.append(cell(entries, t))
            reference = next((dense_score[(d, t)] for d in baseline[label] if (d, t) in dense_score), None)
            if reference:
                ratios.append(statistics.mean(scores) / reference)
        ratio = f"{100 * statistics.mean(ratios):.1f}% ({len(ratios)})" if ratios else "–"
        lines.append(f"| {label} | {nonzeros:,} | " + " | ".join(cells) + f" | {ratio} |")
        if label in SUMMARY_ROWS:
            summary.append(lines[-1])
    budget_lines = []
    for t in tasks:
        budget = [r for (_, task), rs in runs.items() if task == t for r in rs if r.get("epochs_override") is None and r.get("max_train_samples_override") is None]  # the task's own budget
        budget = [r for r in budget if _precision(r) == "bf16" and not r.get("group_by_length")] or budget
        example = budget[0]
        seconds = [r["train_seconds"] + r["eval_seconds"] for r in budget]
        budget_lines.append(
            f"| {t} | {example['train_examples']:,} | {example['epochs']:g} | {example['max_length']} | {TASK_BUDGETS[t]['learning_rate']:g} | "
            f"{min(seconds) / 60:.1f}–{max(seconds) / 60:.1f} min{'' if _precision(example) == 'bf16' else ' (fp32, no native bf16)'} |"
        )
    text = "\n".join(
        [
            "Scores ×100 on the full dev sets (main metric in the header). MiniLM-L6, same budget for every row of a task. "
            "Rows are cross-encoders (`BertForSequenceClassification`-style head on the joined pair) unless marked "
            f"`{BI_ENCODER_LABEL.strip()}` (each sentence encoded alone, cosine of the mean-pooled vectors, sentence-transformers); "
            "the last column compares each row with the dense row of the same head (for a row with more training examples, "
            "the dense row trained on the same examples and epochs, where it ran; otherwise the task budget's; an `(fp32)` "
            "row with the `dense (fp32)` row of that budget where it ran, a `(grouped by length)` row with the dense row "
            "trained so). Runs trained under bf16 autocast on a CPU with native bf16 (an AVX-512 AMD EPYC; the runs whose "
            "results file records its `cpu`, and seed 3 of `prune-tuned-structured-movement-90 + KD (2 epochs) (67,349 examples) "
            "(hidden-state KD 1)`: an Intel Xeon with AMX) "
            "unless the row says `(fp32)`: trained in fp32 on a CPU without native bf16, distilled from the fp32 dense row. "
            "Batches are drawn at random unless the row says `(grouped by length)`: the Trainer's `group_by_length` "
            "(similar lengths batched together, less padding), distilled from the dense row trained the same way:",
            "",
            *lines,
            "",
            "| task | train examples | epochs | max length | lr | wall time per run (2 cores, bf16 autocast) |",
            "|---|---:|---:|---:|---:|---|",
            *budget_lines,
        ]
    )
    (RESULTS / "transfer.md").write_text(text + "\n")
    _plot(runs, tasks)
    from readme_block import update_readme_block

    update_readme_block("transfer-table", text + "\n\n![score vs sparsity](benchmarks/results/transfer.png)")
    if len(summary) > 2:
        update_readme_block("transfer-summary", "\n".join(summary))
    heads = stsb_heads_table(runs)
    if heads:
        update_readme_block("stsb-heads-table", heads)
    return text


def stsb_heads_table(runs) -> str | None:
    """STS-B Spearman ×100 of each checkpoint with no training (benchmarks/representation.py), as a
    cross-encoder + KD, and as a bi-encoder without and with KD; None before any bi-encoder run."""
    representation = RESULTS / "representation.json"
    zero_shot = json.loads(representation.read_text())["results"] if representation.is_file() else {}
    rows = sorted({label.split(" ")[0] for (label, task) in runs if task == "stsb" and BI_ENCODER_LABEL in label},
                  key=lambda r: (_row_sparsity(r), r))
    if not rows:
        return None

    def spearman(label: str) -> str:
        entries = runs.get((label, "stsb"), [])
        values = [100 * e["metrics"]["spearmanr"] for e in entries]
        if not values:
            return "–"
        return f"{values[0]:.1f}" if len(values) == 1 else f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)})"

    def cross(row: str) -> str:  # + KD where it ran (the dense row is the teacher: never KD)
        with_kd = spearman(row + " + KD")
        return with_kd if with_kd != "–" else (spearman(row) + (" (no KD)" if row != "dense" and (row, "stsb") in runs else ""))

    lines = ["| checkpoint | no training (zero-shot cosine) | cross-encoder + KD | bi-encoder | bi-encoder + KD |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        shot = zero_shot.get(row, {}).get("stsb_zero_shot_spearman")
        lines.append(
            f"| {row} | {'–' if shot is None else f'{shot:.1f}'} | {cross(row)} | "
            f"{spearman(row + BI_ENCODER_LABEL)} | {spearman(row + ' + KD' + BI_ENCODER_LABEL)} |"
        )
    return (
        "STS-B dev Spearman ×100 (mean ± std (seeds) where more than one seed ran; the dense row's cross-encoder "
        "column is without KD: it is the teacher):\n\n" + "\n".join(lines)
    )


def runs_metric(runs, task) -> str:
    return next(r["main_metric"] for (label, t), rs in runs.items() if t == task for r in rs[:1])


# the plot's panels: (title, suffix of the row labels, x-axis note); a panel is drawn when its dense or sparse rows ran
# (the first one when none did, so that `--table` always writes a plot)
PLOT_PANELS = (
    ("bf16 autocast, random batches (CPUs with native bf16)", "", "dense, then Prune-OFA upstream-sparse + KD; dashed: bi-encoder, no KD"),
    ("fp32, batches grouped by length (AVX2 CPU)", " (grouped by length) (fp32)", "dense, then Prune-OFA upstream-sparse + KD"),
)


def _plot_points(runs, task: str, sparse_label: str, dense_label: str) -> list[tuple[float, float, float]]:
    """(sparsity %, mean score, std over seeds or 0) of the dense row and the upstream rows matching `sparse_label`."""
    points = []
    for (label, t), rs in runs.items():
        if t == task and (re.fullmatch(sparse_label, label) or label == dense_label):
            scores = [_percent(r["score"], task) for r in rs]
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            points.append((_row_sparsity(label.split(" ")[0]) * 100, statistics.mean(scores), spread))
    return sorted(points)


def _plot(runs, tasks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        panel for panel in PLOT_PANELS
        if any(re.fullmatch(rf"(upstream-\d+ \+ KD|dense){re.escape(panel[1])}", label) for label, _ in runs)
    ] or list(PLOT_PANELS[:1])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), sharey=True, squeeze=False)
    colors = {t: f"C{i}" for i, t in enumerate(tasks)}
    for ax, (title, suffix, note) in zip(axes[0], panels):
        series = [(t, t, rf"upstream-\d+ \+ KD{re.escape(suffix)}", "dense" + suffix, "-") for t in tasks]
        if not suffix:
            series += [(t, f"{t} bi-encoder", rf"upstream-\d+{re.escape(BI_ENCODER_LABEL)}", "dense" + BI_ENCODER_LABEL, "--")
                       for t in tasks]
        for t, name, sparse_label, dense_label, style in series:
            points = _plot_points(runs, t, sparse_label, dense_label)
            if len(points) > 1 or (points and style == "-"):
                x, y, spread = zip(*points)
                ax.errorbar(x, y, yerr=spread, fmt=style, marker="o", capsize=3, color=colors[t], label=name)
        ax.set_xlabel(f"encoder sparsity (%)  [{note}]")
        ax.set_title(f"MiniLM-L6 sparse transfer: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel("dev score (main metric ×100); bars: ± std over seeds")
    fig.tight_layout()
    fig.savefig(RESULTS / "transfer.png", dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", help="dense | upstream-<s> | upstream-<recipe>-<s> | masked-pretrained|tuned-[<recipe>-]<s> | " + PRUNE_ROW_HELP + " | dense-layers-<n>")
    parser.add_argument("--task", choices=list(TASK_BUDGETS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kd", action="store_true", help="distil from the dense row's fine-tuned model (seed 1)")
    parser.add_argument("--qat", action="store_true", help="8-bit quantization-aware training (scores are INT8-simulated)")
    parser.add_argument(
        "--bi-encoder", action="store_true", help="bi-encoder head (stsb): sentences encoded alone, cosine score (sentence-transformers)"
    )
    parser.add_argument("--learning-rate", type=float, help="override the task's learning rate (the row's label shows it)")
    parser.add_argument("--head-learning-rate", type=float, help="the task head's own learning rate (the row's label shows it)")
    parser.add_argument("--epochs", type=float, help="override the task's epochs: a longer-budget row (the row's label shows it)")
    parser.add_argument(
        "--max-train-samples", type=int,
        help="override the task's training examples (a longer-budget row; with --kd it distils from the dense row of the same budget)",
    )
    parser.add_argument(
        "--hidden-weight", type=float, help="with --kd, also distil the dense row's hidden states, layer by layer, with this weight (MSE)",
    )
    parser.add_argument(
        "--attention-weight", type=float,
        help="with --kd, also distil the dense row's attention distributions, layer by layer, with this weight (KL; TinyBERT's task-specific distillation)",
    )
    parser.add_argument(
        "--prc-weight", type=float,
        help="add CAP's PrC term with this weight: the student's [CLS] vector of each example pulled toward the pre-trained "
             "MiniLM's vector of the same example, away from the batch's other examples",
    )
    parser.add_argument(
        "--snc-weight", type=float,
        help="prune-ft-* / prune-tuned-* rows: add CAP's SnC term with this weight, contrasting with frozen snapshots of the "
             "student taken before each of its last 3 pruning steps",
    )
    parser.add_argument(
        "--fic-weight", type=float,
        help="with --kd (classification tasks): add CAP's FiC term with this weight, a supervised contrastive loss pulling the "
             "student's [CLS] vector toward the dense row's vectors of same-label examples in the batch",
    )
    parser.add_argument(
        "--temperature", type=float, help="with --kd, the logits-KD temperature instead of the default 2 (the row's label shows it)",
    )
    parser.add_argument(
        "--min-heads-per-layer", type=int,
        help="prune-*-structured[-movement|-fisher]-{global,joint,joint-global}-<s> rows: every layer keeps at least this many attention heads",
    )
    parser.add_argument(
        "--teacher-epochs", type=float,
        help="with --max-train-samples: start from / distil from the dense row trained this many epochs instead of --epochs",
    )
    parser.add_argument(
        "--teacher-seeds", type=int,
        help="with --kd: distil from the mean of the distributions of the dense row's seeds 1..N (train those seeds first); "
             "hidden states (--hidden-weight) and a prune-tuned-* row's start still come from seed 1; the row's label shows it",
    )
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="auto",
        help="training precision: bf16 autocast, fp32, or auto (bf16 where the CPU has native bf16, as for the published rows; "
             "fp32 elsewhere); an fp32 run is its own row (-fp32 in its name), distilled from the fp32 dense run",
    )
    parser.add_argument(
        "--group-by-length", action="store_true",
        help="batch examples of similar length together (the Trainer's group_by_length: less padding, faster); its own row "
             "(-gl in its name), distilled from the dense run trained the same way (cross-encoder rows)",
    )
    parser.add_argument(
        "--augment", type=int,
        help="with --kd (GLUE): add up to N variants of each training example, words replaced by their nearest neighbours in "
             "the model's input embeddings, labelled by the teacher (TinyBERT-style); the row's label shows it",
    )
    parser.add_argument(
        "--pruning-end", type=float,
        help="prune-ft-* / prune-tuned-* rows: the fraction of training by which pruning reaches its target (default 0.7); "
             "the rest fine-tunes the final pattern; the row's label shows it",
    )
    parser.add_argument(
        "--pruning-start", type=float,
        help="prune-ft-* / prune-tuned-* rows: the fraction of training before pruning begins, in (0, pruning end) "
             "(without it pruning starts at the first step); movement rows gather their scores meanwhile; the row's label shows it",
    )
    parser.add_argument(
        "--classifier-pooling", choices=["mean"],
        help="GLUE cross-encoder rows: the head reads the mean of the last hidden states instead of [CLS] (MiniLM-L6 was "
             "trained with mean pooling); the row's label shows it",
    )
    parser.add_argument(
        "--dropout", type=float, help="the student's hidden and attention dropout instead of the checkpoint's 0.1; the row's label shows it",
    )
    parser.add_argument(
        "--average-from", type=float,
        help="evaluate and keep the uniform average of the weights over the steps from this fraction of training on "
             "(prune-* rows: at or after the pruning end); the row's label shows it",
    )
    parser.add_argument("--table", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args()
    if args.row:
        if not args.task:
            parser.error("--row needs --task")
        if args.bi_encoder and args.qat:
            parser.error("--bi-encoder runs without --qat (not supported by the bi-encoder head yet)")
        if args.bi_encoder and args.group_by_length:
            parser.error("--bi-encoder runs without --group-by-length (sentence-transformers batches its own way)")
        overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(Overrides)}
        results = run(args.row, args.task, args.seed, args.kd, args.qat, args.bi_encoder, args.precision, args.group_by_length, **overrides)
        print(json.dumps({k: results[k] for k in ("row", "task", "seed", "score", "main_metric", "train_seconds")}))
    elif not args.table:
        parser.error("pass --row/--task or --table")
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
