"""How sure a score difference is: paired bootstrap intervals for a model against a baseline on one dev set.

A GLUE dev set is small (SST-2: 872 sentences, so one sentence is 0.11 points), and a training seed moves a
score by about as much as a pruning recipe does. `paired_bootstrap` resamples the dev examples, the same ones for
both models, and, when given several seeds of the model, the seeds too, so that the interval covers both the
dev-set sample and the training seed. Plain numpy; the metrics are those of `hf_sparse.tasks.metrics`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .metrics import GLUE_TASKS, glue_metrics

__all__ = ["paired_bootstrap"]

ArrayLike = Union[np.ndarray, Sequence]
# the metric each task is ranked by (as `hf_sparse.tasks.glue.GLUE_TASKS[...].main_metric`, which needs `datasets`)
MAIN_METRICS = {"sst2": "accuracy", "rte": "accuracy", "mrpc": "f1", "cola": "matthews_correlation", "stsb": "combined"}


def _score(task: str, metric: str, predictions: np.ndarray, references: np.ndarray) -> float:
    return glue_metrics(task, predictions, references)[metric]


def paired_bootstrap(
    task: str,
    predictions: ArrayLike,
    baseline_predictions: ArrayLike,
    references: ArrayLike,
    metric: Optional[str] = None,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """The difference of a GLUE metric between a model and a baseline, with a percentile bootstrap interval.

    Args:
        task: a GLUE task name (sst2, rte, mrpc, cola, stsb).
        predictions: the model's predictions on the dev set, shape `(examples,)`, or `(seeds, examples)` for
            several training seeds of the same recipe: the difference is then the mean over seeds, and each
            resample draws seeds (with replacement) as well as examples.
        baseline_predictions: the baseline's predictions on the same examples, shape `(examples,)`, or
            `(seeds, examples)` for several seeds of the baseline's recipe: its score is then the mean over its
            seeds, which are resampled independently of the model's (the examples are the same for both).
        references: the dev labels (class ids, or scores for stsb), shape `(examples,)`.
        metric: one of the task's metrics (`hf_sparse.tasks.metrics.GLUE_TASKS`); default: the one the task is
            ranked by (`MAIN_METRICS`: accuracy, F1 for MRPC, Matthews corr. for CoLA, the Pearson/Spearman mean for
            STS-B).
        samples: bootstrap resamples.
        confidence: the interval's coverage, e.g. 0.95.
        seed: the resampling RNG seed (the result is deterministic for a given seed).

    Returns:
        `{"metric", "delta", "low", "high", "confidence", "samples", "examples", "seeds", "baseline_seeds",
        "per_seed_delta", "undefined_samples"}`: `delta` is the model's metric minus the baseline's on the whole dev
        set (each the mean over its seeds), `low`/`high` the interval's ends, all in the metric's own units (accuracy
        0.01 = 1 point). `per_seed_delta` holds each model seed's metric minus the baseline's (mean) metric.
        `undefined_samples` counts resamples where a metric was undefined (e.g. a constant prediction under
        Pearson), left out of the interval.

    Raises:
        ValueError: an unknown task or metric, shapes that do not match, or `samples`/`confidence` out of range.
    """
    name = task.lower().replace("-", "")
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(GLUE_TASKS)}")
    metric = metric or MAIN_METRICS[name]
    if metric not in GLUE_TASKS[name]:
        raise ValueError(f"{task} reports {', '.join(GLUE_TASKS[name])}, not {metric!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    model = np.asarray(predictions)
    model = model[None, :] if model.ndim == 1 else model
    baseline = np.asarray(baseline_predictions)
    baseline = baseline[None, :] if baseline.ndim == 1 else baseline
    refs = np.asarray(references)
    if model.ndim != 2 or baseline.ndim != 2 or refs.ndim != 1:
        raise ValueError(
            f"expected predictions and baseline of shape (examples,) or (seeds, examples) and 1-D references, got "
            f"{np.asarray(predictions).shape}, {np.asarray(baseline_predictions).shape} and {refs.shape}"
        )
    if not (model.shape[1] == baseline.shape[1] == len(refs)) or len(refs) == 0 or len(model) == 0 or len(baseline) == 0:
        raise ValueError(
            f"predictions, baseline and references must cover the same non-empty dev set with at least one seed each: "
            f"{model.shape}, {baseline.shape} and {len(refs)} examples"
        )

    def mean_score(rows: np.ndarray, seeds: np.ndarray, idx: np.ndarray) -> float:
        return float(np.mean([_score(name, metric, rows[s, idx], refs[idx]) for s in seeds]))

    def draw(count: int) -> np.ndarray:
        return rng.integers(0, count, count) if count > 1 else np.zeros(1, dtype=int)

    everything = np.arange(len(refs))
    base_score = mean_score(baseline, np.arange(len(baseline)), everything)
    per_seed = [_score(name, metric, p, refs) - base_score for p in model]
    rng = np.random.default_rng(seed)
    num_seeds, num_examples = model.shape
    deltas = []
    for _ in range(samples):
        rows = draw(num_seeds)
        idx = rng.integers(0, num_examples, num_examples)
        base_rows = draw(len(baseline))  # drawn after the examples: one baseline seed keeps the earlier resamples
        deltas.append(mean_score(model, rows, idx) - mean_score(baseline, base_rows, idx))
    deltas = np.asarray(deltas)
    defined = deltas[~np.isnan(deltas)]
    if len(defined) == 0:
        raise ValueError(f"{metric} is undefined on every resample of these predictions (constant predictions?)")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return {
        "metric": metric,
        "delta": float(np.mean(per_seed)),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "samples": samples,
        "examples": num_examples,
        "seeds": num_seeds,
        "baseline_seeds": len(baseline),
        "per_seed_delta": [float(d) for d in per_seed],
        "undefined_samples": int(len(deltas) - len(defined)),
    }

