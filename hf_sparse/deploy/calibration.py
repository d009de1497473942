"""Calibration text for static INT8 quantization, drawn from the real data in ../shared/data."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence, Union

CALIBRATION_SOURCES = ("wikitext", "squad", "sst2", "cola", "mrpc", "rte", "stsb")


def calibration_texts(
    source: Union[str, Sequence[Union[str, tuple[str, str]]]],
    num_samples: int,
    data_dir: Union[str, Path, None] = None,
    seed: int = 0,
) -> list[tuple[str, Optional[str]]]:
    """`num_samples` (text, optional pair text) examples from a task's training data.

    Args:
        source: "wikitext" (WikiText-2 validation lines), "squad" (question, context), a GLUE task,
            or your own texts (a list of strings or of (text, pair) tuples), used as given.
        num_samples: how many examples to draw (at random, reproducibly).
        data_dir: the data folder (default: ../shared/data).

    Raises:
        ValueError: unknown source. FileNotFoundError: its data file is missing.
    """
    from ..upstream import DEFAULT_DATA_DIR

    if not isinstance(source, str):
        texts = [(t, None) if isinstance(t, str) else (str(t[0]), str(t[1])) for t in source]
        if not texts:
            raise ValueError("calibration texts are empty")
        return texts[:num_samples]
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    key = source.lower().replace("-", "")
    if key == "wikitext":
        path = data_dir / "wikitext-2" / "valid.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: WikiText-2 file not found")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        pool = [(line, None) for line in lines if len(line.split()) >= 8 and not line.startswith("=")]
    elif key == "squad":
        from ..tasks.squad import load_squad

        data = load_squad(data_dir / "squad_v1.1" / "train-subset.json")
        pool = list(zip(data["question"], data["context"]))
    elif key in CALIBRATION_SOURCES:
        from ..tasks.glue import load_glue

        train = load_glue(key, data_dir)["train"]
        pool = list(zip(train["text_a"], train["text_b"] if "text_b" in train.column_names else [None] * len(train)))
    else:
        raise ValueError(f"unknown calibration source {source!r}; choose one of {', '.join(CALIBRATION_SOURCES)}")
    rng = random.Random(seed)
    return rng.sample(pool, min(num_samples, len(pool)))


def calibration_dataset(
    tokenizer,
    source: Union[str, Sequence[Union[str, tuple[str, str]]]],
    num_samples: int = 128,
    max_length: int = 128,
    num_choices: Optional[int] = None,
    data_dir: Union[str, Path, None] = None,
):
    """A `datasets.Dataset` of tokenized calibration inputs (`input_ids`, `attention_mask`, `token_type_ids`).

    Rows are unpadded (batch size 1 calibration); with `num_choices` each row repeats the example
    that many times, padded to a common length, for multiple-choice models.
    """
    import datasets

    pairs = calibration_texts(source, num_samples, data_dir)
    rows = []
    for text, pair in pairs:
        if num_choices:
            encoded = tokenizer([text] * num_choices, [pair or text] * num_choices, truncation=True, max_length=max_length, padding=True)
        else:
            encoded = tokenizer(text, pair, truncation=True, max_length=max_length)
        rows.append({k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return datasets.Dataset.from_list(rows)
