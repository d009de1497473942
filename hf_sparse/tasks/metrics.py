"""GLUE and SQuAD v1.1 metrics in plain numpy (no `evaluate`, no network).

The definitions follow the references used to report GLUE / SQuAD numbers:
scikit-learn (`accuracy_score`, binary `f1_score`, `matthews_corrcoef`), scipy
(`pearsonr`, `spearmanr` with average ranks for ties) and the official SQuAD v1.1
`evaluate-v1.1.py` (answer normalization, exact match, token F1, percentages).
All functions return plain Python floats.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "GLUE_TASKS",
    "accuracy",
    "f1_binary",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
    "glue_metrics",
]

# Metric names per GLUE task, as the GLUE leaderboard / HF `evaluate` "glue" metric report them.
GLUE_TASKS: dict[str, tuple[str, ...]] = {
    "sst2": ("accuracy",),
    "rte": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr", "combined"),
}


# ----------------------------------------------------------------------------- input checks


def _as_1d(values, name: str) -> np.ndarray:
    """Converts a list / array to a 1-D numpy array; an (n, 1) column is flattened."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:  # e.g. regression logits of shape (n, 1)
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D sequence of labels/scores, got shape {array.shape} "
            "(take the argmax of classification logits first)"
        )
    return array


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    """Validated (predictions, references) arrays: 1-D, same length, non-empty."""
    preds = _as_1d(predictions, "predictions")
    refs = _as_1d(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"predictions and references differ in length: {len(preds)} != {len(refs)}")
    if len(preds) == 0:
        raise ValueError("predictions and references are empty")
    return preds, refs


# ----------------------------------------------------------------------------- classification


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to their reference (sklearn `accuracy_score`)."""
    preds, refs = _pair(predictions, references)
    return float(np.mean(preds == refs))


def f1_binary(predictions, references, positive=1) -> float:
    """Binary F1 of the `positive` class (sklearn `f1_score(average="binary", zero_division=0)`).

    F1 = 2 TP / (2 TP + FP + FN); 0.0 when there are neither predicted nor true positives.
    """
    preds, refs = _pair(predictions, references)
    labels = np.union1d(preds, refs)
    if len(labels) > 2:
        raise ValueError(f"f1_binary needs at most two distinct labels, got {labels.tolist()}")
    if len(labels) == 2 and positive not in labels.tolist():
        raise ValueError(f"positive={positive!r} is not one of the labels {labels.tolist()}")
    pred_pos = preds == positive
    true_pos = refs == positive
    tp = int(np.sum(pred_pos & true_pos))
    fp = int(np.sum(pred_pos & ~true_pos))
    fn = int(np.sum(~pred_pos & true_pos))
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else float(2 * tp / denominator)


def matthews_corrcoef(predictions, references) -> float:
    """Matthews correlation coefficient, binary or multiclass (sklearn `matthews_corrcoef`).

    Uses the multiclass (R_K) form on the confusion matrix; 0.0 when the denominator is 0.
    """
    preds, refs = _pair(predictions, references)
    labels, encoded = np.unique(np.concatenate([refs, preds]), return_inverse=True)
    k = len(labels)
    true_idx, pred_idx = encoded[: len(refs)], encoded[len(refs) :]
    confusion = np.zeros((k, k), dtype=np.float64)  # rows: true class, columns: predicted class
    np.add.at(confusion, (true_idx, pred_idx), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    n_correct = np.trace(confusion)
    n = confusion.sum()
    cov_tp = n_correct * n - np.dot(t_sum, p_sum)
    cov_pp = n * n - np.dot(p_sum, p_sum)
    cov_tt = n * n - np.dot(t_sum, t_sum)
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


# ----------------------------------------------------------------------------- regression


def _float_pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    preds, refs = _pair(predictions, references)
    if len(preds) < 2:
        raise ValueError("a correlation needs at least 2 values")
    return preds.astype(np.float64), refs.astype(np.float64)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two float arrays; nan (as scipy) if one is constant or holds a nan."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    xm = x - x.mean()
    ym = y - y.mean()
    norm_x = np.linalg.norm(xm)
    norm_y = np.linalg.norm(ym)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    # normalizing before the dot product keeps it accurate for large values
    r = np.dot(xm / norm_x, ym / norm_y)
    return float(np.clip(r, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of their ranks (scipy `rankdata(method="average")`)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    new_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group_of_sorted = np.cumsum(new_group) - 1
    bounds = np.concatenate([np.flatnonzero(new_group), [len(values)]])  # group g: [bounds[g], bounds[g+1])
    group_rank = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = group_rank[group_of_sorted]
    return ranks


def pearson(predictions, references) -> float:
    """Pearson correlation coefficient (scipy `pearsonr(...)[0]`); nan if an input is constant."""
    preds, refs = _float_pair(predictions, references)
    return _correlation(preds, refs)


def spearman(predictions, references) -> float:
    """Spearman rank correlation with average ranks for ties (scipy `spearmanr(...)[0]`)."""
    preds, refs = _float_pair(predictions, references)
    if not (np.all(np.isfinite(preds)) and np.all(np.isfinite(refs))):
        return float("nan")
    return _correlation(_average_ranks(preds), _average_ranks(refs))


# ----------------------------------------------------------------------------- GLUE


def glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """The metrics GLUE reports for `task` (sst2, rte, mrpc, cola, stsb).

    Classification tasks take label ids, stsb takes similarity scores.
    """
    name = task.lower().replace("-", "")
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(GLUE_TASKS)}")
    if name in ("sst2", "rte"):
        return {"accuracy": accuracy(predictions, references)}
    if name == "mrpc":
        return {"accuracy": accuracy(predictions, references), "f1": f1_binary(predictions, references)}
    if name == "cola":
        return {"matthews_correlation": matthews_corrcoef(predictions, references)}
    r = pearson(predictions, references)
    rho = spearman(predictions, references)
    return {"pearson": r, "spearmanr": rho, "combined": (r + rho) / 2}


# ----------------------------------------------------------------------------- SQuAD v1.1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD answer normalization: lowercase, drop punctuation, drop articles, squeeze whitespace."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _ground_truth_list(ground_truths: str | Iterable[str] | Mapping[str, Sequence]) -> list[str]:
    """Accepts a string, a list of strings, or an HF `answers` dict ({"text": [...], ...})."""
    if isinstance(ground_truths, str):
        answers = [ground_truths]
    elif isinstance(ground_truths, Mapping):
        if "text" not in ground_truths:
            raise ValueError(f"an answers dict needs a 'text' key, got keys {sorted(ground_truths)}")
        answers = list(ground_truths["text"])
    else:
        answers = list(ground_truths)
    if not answers:
        raise ValueError("at least one ground-truth answer is needed")
    return answers


def _token_f1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(true_tokens)).values())
    if num_same == 0:  # also covers empty prediction / empty ground truth (v1.1 semantics)
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, ground_truths) -> float:
    """1.0 if the normalized prediction equals any normalized ground truth, else 0.0."""
    target = normalize_answer(prediction)
    return float(max(target == normalize_answer(gt) for gt in _ground_truth_list(ground_truths)))


def squad_f1(prediction: str, ground_truths) -> float:
    """Best bag-of-tokens F1 between the prediction and any ground truth (0.0 to 1.0)."""
    return float(max(_token_f1(prediction, gt) for gt in _ground_truth_list(ground_truths)))


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, object]) -> dict[str, float]:
    """Official SQuAD v1.1 scores in percent: {"exact_match": 100 * mean EM, "f1": 100 * mean F1}.

    Args:
        predictions: question id -> predicted answer text (extra ids are ignored).
        references: question id -> list of gold answer texts (or an HF `answers` dict).
    """
    if not references:
        raise ValueError("references are empty")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ValueError(f"no prediction for reference id(s): {shown}")
    exact = total_f1 = 0.0
    for qid, ground_truths in references.items():
        exact += squad_exact_match(predictions[qid], ground_truths)
        total_f1 += squad_f1(predictions[qid], ground_truths)
    n = len(references)
    return {"exact_match": float(100.0 * exact / n), "f1": float(100.0 * total_f1 / n)}
