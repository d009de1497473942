"""SQuAD v1.1 extractive QA: loading the official JSON, feature preparation and answer decoding.

Typical use with a fast tokenizer:

    examples = load_squad("dev-v1.1.json")
    features = examples.map(prepare_eval_features, batched=True, remove_columns=examples.column_names,
                            fn_kwargs={"tokenizer": tokenizer})
    ...  # run the model on features (without example_id / offset_mapping) to get start/end logits
    answers = postprocess_predictions(examples, features, start_logits, end_logits)
    squad_metrics(answers, dict(zip(examples["id"], examples["answers"])))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
import numpy as np

__all__ = [
    "SQUAD_FEATURES",
    "load_squad",
    "prepare_train_features",
    "prepare_eval_features",
    "postprocess_predictions",
]

# Same columns and types as the Hugging Face `squad` dataset.
SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)


# ----------------------------------------------------------------------------- loading


def load_squad(path: str | Path) -> datasets.Dataset:
    """Reads a SQuAD v1.1 JSON file into a flat Dataset (one row per question).

    Columns: id, title, context, question, answers = {"text": [...], "answer_start": [...]}.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err

    rows: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    where = "top level"
    try:
        if not isinstance(raw, dict) or not isinstance(raw["data"], list):
            raise TypeError("expected an object with a 'data' list")
        for a, article in enumerate(raw["data"]):
            title = article.get("title", "")
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                context = paragraph["context"]
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    answers = qa["answers"]
                    rows["id"].append(str(qa["id"]))
                    rows["title"].append(title)
                    rows["context"].append(context)
                    rows["question"].append(qa["question"])
                    rows["answers"].append(
                        {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [int(answer["answer_start"]) for answer in answers],
                        }
                    )
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        problem = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(
            f"{path}: not in the SQuAD v1.1 layout at {where} ({problem}); expected "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
            '"answers": [{"text", "answer_start"}]}]}]}]}'
        ) from err
    return datasets.Dataset.from_dict(rows, features=SQUAD_FEATURES)


# ----------------------------------------------------------------------------- preprocessing


def _tokenize(examples: Mapping[str, Sequence], tokenizer, max_length: int, stride: int):
    """Tokenizes (question, context) pairs into overlapping windows over the context.

    Returns the encoding and the sequence id of the context (1, or 0 if the tokenizer
    pads on the left, in which case the context goes first so that it is the part truncated).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD preprocessing needs a fast tokenizer (offset mappings)")
    if not 0 <= stride < max_length:
        raise ValueError(f"stride must be in [0, max_length), got stride={stride}, max_length={max_length}")
    # some questions start with lots of whitespace, which would waste room in the window
    questions = [q.lstrip() for q in examples["question"]]
    contexts = list(examples["context"])
    pad_on_right = tokenizer.padding_side == "right"
    encoding = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    return encoding, (1 if pad_on_right else 0)


def prepare_train_features(
    examples: Mapping[str, Sequence], tokenizer, max_length: int = 256, stride: int = 64
) -> dict[str, list]:
    """Training features for `Dataset.map(batched=True)`: one row per context window.

    Adds `start_positions` / `end_positions`, the token indices of the first answer, or the
    CLS index (0) when the answer is not entirely inside the window. Not padded.
    """
    encoding, context_id = _tokenize(examples, tokenizer, max_length, stride)
    sample_map = encoding.pop("overflow_to_sample_mapping")
    offset_map = encoding.pop("offset_mapping")
    cls_id = tokenizer.cls_token_id
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(offset_map):
        input_ids = encoding["input_ids"][i]
        cls_index = input_ids.index(cls_id) if cls_id is not None and cls_id in input_ids else 0
        answers = examples["answers"][sample_map[i]]
        if len(answers["answer_start"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])

        # token range of the context inside this window
        sequence_ids = encoding.sequence_ids(i)
        context_tokens = [k for k, s in enumerate(sequence_ids) if s == context_id]
        first, last = context_tokens[0], context_tokens[-1]
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            starts.append(cls_index)  # answer (partly) outside the window
            ends.append(cls_index)
            continue
        # last token starting at or before the answer start, first token ending at or after its end
        start = first
        while start + 1 <= last and offsets[start + 1][0] <= start_char:
            start += 1
        end = last
        while end - 1 >= first and offsets[end - 1][1] >= end_char:
            end -= 1
        starts.append(start)
        ends.append(end)
    encoding["start_positions"] = starts
    encoding["end_positions"] = ends
    return dict(encoding)


def prepare_eval_features(
    examples: Mapping[str, Sequence], tokenizer, max_length: int = 256, stride: int = 64
) -> dict[str, list]:
    """Evaluation features for `Dataset.map(batched=True)`: one row per context window.

    Adds `example_id` (the id of the source example) and keeps `offset_mapping` with None
    for tokens that are not part of the context. Not padded.
    """
    encoding, context_id = _tokenize(examples, tokenizer, max_length, stride)
    sample_map = encoding.pop("overflow_to_sample_mapping")
    example_ids: list[str] = []
    offset_map = []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        example_ids.append(examples["id"][sample_map[i]])
        sequence_ids = encoding.sequence_ids(i)
        offset_map.append([tuple(o) if sequence_ids[k] == context_id else None for k, o in enumerate(offsets)])
    encoding["offset_mapping"] = offset_map
    encoding["example_id"] = example_ids
    return dict(encoding)


# ----------------------------------------------------------------------------- postprocessing


def _column(data: Any, name: str) -> list:
    """A column of a Dataset or of a dict of lists, as a Python list."""
    try:
        return list(data[name])
    except (KeyError, TypeError) as err:
        raise ValueError(f"missing column {name!r}") from err


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: Sequence | np.ndarray,
    end_logits: Sequence | np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Turns start/end logits into one answer text per example id.

    For every feature of an example, takes the `n_best` highest start and end logits among the
    context tokens and scores each span start <= end, length <= `max_answer_length` tokens as
    start logit + end logit; the best span over all features wins. Empty string if none is valid.

    Args:
        examples: Dataset / dict of lists with "id" and "context".
        features: the output of `prepare_eval_features` ("example_id", "offset_mapping").
        start_logits, end_logits: one row per feature (a 2-D array, possibly padded beyond a
            feature's length, e.g. with -100, or a list of 1-D arrays).
    """
    if n_best < 1:
        raise ValueError(f"n_best must be >= 1, got {n_best}")
    example_ids = _column(examples, "id")
    contexts = _column(examples, "context")
    feature_example_ids = _column(features, "example_id")
    offset_maps = _column(features, "offset_mapping")
    if not (len(start_logits) == len(end_logits) == len(offset_maps)):
        raise ValueError(
            f"need one row of logits per feature: {len(offset_maps)} features, "
            f"{len(start_logits)} start rows, {len(end_logits)} end rows"
        )

    features_of: dict[str, list[int]] = {}
    for i, example_id in enumerate(feature_example_ids):
        features_of.setdefault(example_id, []).append(i)

    answers: dict[str, str] = {}
    for example_id, context in zip(example_ids, contexts):
        best_score = -np.inf
        best_text = ""
        for i in features_of.get(example_id, []):
            offsets = offset_maps[i]
            # only context tokens can be part of an answer (padding beyond len(offsets) is ignored)
            candidates = np.array([k for k, o in enumerate(offsets) if o is not None], dtype=np.int64)
            if len(candidates) == 0:
                continue
            start_row = np.asarray(start_logits[i], dtype=np.float64)[candidates]
            end_row = np.asarray(end_logits[i], dtype=np.float64)[candidates]
            top_start = np.argsort(-start_row, kind="stable")[:n_best]
            top_end = np.argsort(-end_row, kind="stable")[:n_best]
            start_tok = candidates[top_start][:, None]
            end_tok = candidates[top_end][None, :]
            scores = start_row[top_start][:, None] + end_row[top_end][None, :]
            valid = (end_tok >= start_tok) & (end_tok - start_tok + 1 <= max_answer_length)
            if not valid.any():
                continue
            scores = np.where(valid, scores, -np.inf)
            s, e = np.unravel_index(np.argmax(scores), scores.shape)
            if scores[s, e] > best_score:
                best_score = scores[s, e]
                char_start = offsets[int(start_tok[s, 0])][0]
                char_end = offsets[int(end_tok[0, e])][1]
                best_text = context[char_start:char_end]
        answers[example_id] = best_text
    return answers
