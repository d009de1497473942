"""GLUE tasks from the local TSV files (../shared/data/glue), loaded with `datasets`."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from datasets import ClassLabel, DatasetDict, Value, load_dataset


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task lives and how to read it."""

    name: str
    folder: str
    text_columns: tuple[str, ...]  # one sentence or a pair, in the file's column names
    label_column: str
    num_labels: int  # 1 = regression
    label_names: Optional[tuple[str, ...]] = None  # string labels in the file, in label-id order
    column_names: Optional[tuple[str, ...]] = None  # for files without a header row
    max_length: int = 128  # enough for ≥99% of the task's examples with a BERT tokenizer
    main_metric: str = "accuracy"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("sst2", "SST-2", ("sentence",), "label", 2, max_length=64),
    "cola": GlueTask(
        "cola", "CoLA", ("sentence",), "label", 2, column_names=("source", "label", "orig_label", "sentence"),
        max_length=64, main_metric="matthews_correlation",
    ),
    "mrpc": GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", 2, max_length=128, main_metric="f1"),
    "rte": GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", 2, label_names=("entailment", "not_entailment"), max_length=128),
    "stsb": GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", 1, max_length=128, main_metric="combined"),
}


def get_glue_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def load_glue(name: str, data_dir: Union[str, os.PathLike]) -> DatasetDict:
    """Train and validation splits of a GLUE task as a `DatasetDict`.

    Columns: the task's text columns renamed to `text_a` (and `text_b` for pairs) and `label`
    (int class ids, or float scores for STS-B). The TSVs are read with quoting off (sentences contain
    unbalanced quotes) and without NA parsing (a sentence "null" stays a string).

    Raises:
        FileNotFoundError: the task's train.tsv / dev.tsv is missing under `data_dir`.
        ValueError: a label is not one the task defines.
    """
    task = get_glue_task(name)
    folder = Path(data_dir) / "glue" / task.folder
    files = {"train": folder / "train.tsv", "validation": folder / "dev.tsv"}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GLUE {task.name} file not found (expected the layout of ../shared/data/glue)")
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, encoding="utf-8-sig")
    if task.column_names:
        options.update(header=None, names=list(task.column_names))
    raw = load_dataset("csv", data_files={k: str(v) for k, v in files.items()}, **options)
    renames = {column: new for column, new in zip(task.text_columns, ("text_a", "text_b"))}
    renames[task.label_column] = "label"
    raw = raw.rename_columns(renames)
    keep = set(renames.values())
    raw = raw.remove_columns([c for c in raw["train"].column_names if c not in keep])

    def convert(example):
        label = example["label"]
        for column in ("text_a", "text_b"):
            if column in example:
                example[column] = str(example[column])
        if task.is_regression:
            example["label"] = float(label)
        elif task.label_names:
            if label not in task.label_names:
                raise ValueError(f"{folder}: label {label!r} is not one of {task.label_names}")
            example["label"] = task.label_names.index(label)
        else:
            example["label"] = int(label)
            if not 0 <= example["label"] < task.num_labels:
                raise ValueError(f"{folder}: label {label!r} outside 0..{task.num_labels - 1}")
        return example

    dataset = raw.map(convert, desc=f"reading GLUE {task.name}")
    label_feature = Value("float32") if task.is_regression else ClassLabel(
        num_classes=task.num_labels, names=list(task.label_names or [str(i) for i in range(task.num_labels)])
    )
    return dataset.cast_column("label", label_feature)
