"""Paired bootstrap intervals of score differences (hf_sparse.tasks.significance)."""

import math

import numpy as np
import pytest

from hf_sparse.tasks.glue import GLUE_TASKS as GLUE_TASK_FILES
from hf_sparse.tasks.significance import MAIN_METRICS, paired_bootstrap


def _sst2_like(rng, examples=872, baseline_accuracy=0.89, flips=60, model_gains=25):
    """Labels, a baseline with the given accuracy, and a model that differs from it on `flips` examples, `model_gains`
    of them to the model's favour (the rest against it)."""
    labels = rng.integers(0, 2, examples)
    baseline = labels.copy()
    wrong = rng.choice(examples, int(round((1 - baseline_accuracy) * examples)), replace=False)
    baseline[wrong] = 1 - baseline[wrong]
    model = baseline.copy()
    right = np.flatnonzero(baseline != labels)
    correct = np.flatnonzero(baseline == labels)
    changed = np.concatenate([rng.choice(right, model_gains, replace=False), rng.choice(correct, flips - model_gains, replace=False)])
    model[changed] = 1 - model[changed]
    return labels, baseline, model


def test_main_metrics_are_the_ones_the_task_runners_rank_by():
    assert MAIN_METRICS == {name: task.main_metric for name, task in GLUE_TASK_FILES.items()}


def test_identical_predictions_give_a_zero_width_interval():
    rng = np.random.default_rng(0)
    labels, baseline, _ = _sst2_like(rng)
    result = paired_bootstrap("sst2", baseline, baseline, labels, samples=200)
    assert result["delta"] == result["low"] == result["high"] == 0.0
    assert result["per_seed_delta"] == [0.0] and result["seeds"] == 1 and result["examples"] == 872


def test_accuracy_interval_matches_the_normal_approximation_of_the_paired_difference():
    rng = np.random.default_rng(1)
    labels, baseline, model = _sst2_like(rng)
    result = paired_bootstrap("sst2", model, baseline, labels, samples=4000, seed=3)
    diff = (model == labels).astype(float) - (baseline == labels).astype(float)
    assert result["delta"] == pytest.approx(diff.mean())  # 25 gained, 35 lost of 872: -10/872
    assert result["delta"] == pytest.approx(-10 / 872)
    half = 1.96 * math.sqrt(diff.var() / len(diff))  # about 1.7 points for 60 disagreements in 872
    assert result["low"] == pytest.approx(diff.mean() - half, abs=0.002)
    assert result["high"] == pytest.approx(diff.mean() + half, abs=0.002)
    assert result["low"] < 0 < result["high"]


def test_the_interval_is_deterministic_for_a_seed_and_narrows_with_agreement():
    rng = np.random.default_rng(2)
    labels, baseline, model = _sst2_like(rng)
    first = paired_bootstrap("sst2", model, baseline, labels, samples=500, seed=7)
    assert first == paired_bootstrap("sst2", model, baseline, labels, samples=500, seed=7)
    labels, baseline, close = _sst2_like(np.random.default_rng(2), flips=10, model_gains=4)
    narrow = paired_bootstrap("sst2", close, baseline, labels, samples=500, seed=7)
    assert narrow["high"] - narrow["low"] < (first["high"] - first["low"]) / 2


def test_several_seeds_average_the_delta_and_widen_the_interval():
    rng = np.random.default_rng(4)
    labels, baseline, _ = _sst2_like(rng)
    seeds = []
    for gains in (10, 25, 40):  # seeds 30 points of disagreement apart: -4.6, -1.1, +2.3 points
        _, _, model = _sst2_like(np.random.default_rng(4), model_gains=gains)
        seeds.append(model)
    seeds = np.stack(seeds)
    pooled = paired_bootstrap("sst2", seeds, baseline, labels, samples=2000, seed=0)
    per_seed = [paired_bootstrap("sst2", s, baseline, labels, samples=2000, seed=0) for s in seeds]
    assert pooled["seeds"] == 3
    assert pooled["per_seed_delta"] == pytest.approx([r["delta"] for r in per_seed])
    assert pooled["delta"] == pytest.approx(np.mean(pooled["per_seed_delta"]))
    # the seed-to-seed spread counts: wider than one seed's interval, although the mean of three is averaged
    assert pooled["high"] - pooled["low"] > per_seed[1]["high"] - per_seed[1]["low"]
    # the same seed three times: no seed spread, about the one-seed interval
    same = paired_bootstrap("sst2", np.stack([seeds[1]] * 3), baseline, labels, samples=2000, seed=0)
    assert same["high"] - same["low"] == pytest.approx(per_seed[1]["high"] - per_seed[1]["low"], rel=0.15)


@pytest.mark.parametrize("task, metric", [("cola", "matthews_correlation"), ("mrpc", "f1"), ("mrpc", "accuracy"), ("rte", "accuracy")])
def test_classification_tasks_use_their_metric(task, metric):
    from hf_sparse.tasks.metrics import glue_metrics

    rng = np.random.default_rng(5)
    labels, baseline, model = _sst2_like(rng, examples=400, flips=40, model_gains=30)
    result = paired_bootstrap(task, model, baseline, labels, metric=metric if metric != MAIN_METRICS[task] else None, samples=300)
    expected = glue_metrics(task, model, labels)[metric] - glue_metrics(task, baseline, labels)[metric]
    assert result["metric"] == metric
    assert result["delta"] == pytest.approx(expected)
    assert result["low"] <= result["delta"] <= result["high"]



def test_baseline_seeds_average_the_baseline_and_are_resampled():
    rng = np.random.default_rng(8)
    labels, baseline, model = _sst2_like(rng)
    single = paired_bootstrap("sst2", model, baseline, labels, samples=1000, seed=0)
    # one baseline seed as a (1, examples) array: the same numbers as the 1-D form
    assert paired_bootstrap("sst2", model, baseline[None], labels, samples=1000, seed=0) == single
    assert single["baseline_seeds"] == 1
    # three baseline seeds 6.9 points apart (60 examples fewer, as many, 60 more right): the mean is the middle one's
    spread = []
    for gains in (0, 30, 60):
        _, _, other = _sst2_like(np.random.default_rng(8), flips=60, model_gains=gains)
        spread.append(other)
    middle = spread[1]
    pooled = paired_bootstrap("sst2", model, np.stack(spread), labels, samples=2000, seed=0)
    against_middle = paired_bootstrap("sst2", model, middle, labels, samples=2000, seed=0)
    accuracy = lambda p: float(np.mean(p == labels))
    assert pooled["baseline_seeds"] == 3
    assert pooled["delta"] == pytest.approx(accuracy(model) - np.mean([accuracy(b) for b in spread]))
    assert pooled["delta"] == pytest.approx(against_middle["delta"])
    assert pooled["per_seed_delta"] == [pytest.approx(pooled["delta"])]
    # the baseline's seed spread widens the interval
    assert pooled["high"] - pooled["low"] > 1.3 * (against_middle["high"] - against_middle["low"])
    # model seeds and baseline seeds together: the difference of the two means
    both = paired_bootstrap("sst2", np.stack([model, baseline]), np.stack(spread), labels, samples=500, seed=0)
    assert both["delta"] == pytest.approx((accuracy(model) + accuracy(baseline)) / 2 - np.mean([accuracy(b) for b in spread]))
    assert both["seeds"] == 2 and both["baseline_seeds"] == 3

def test_stsb_scores_and_undefined_resamples():
    rng = np.random.default_rng(6)
    labels = rng.uniform(0, 5, 300)
    baseline = labels + rng.normal(0, 1.0, 300)
    model = labels + rng.normal(0, 1.5, 300)
    result = paired_bootstrap("stsb", model, baseline, labels, samples=300)
    assert result["metric"] == "combined" and result["delta"] < 0 and result["low"] < result["high"]
    with pytest.raises(ValueError, match="undefined on every resample"):
        paired_bootstrap("stsb", np.ones(300), baseline, labels, samples=20)


def test_bad_input_is_named():
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="unknown GLUE task 'qnli'"):
        paired_bootstrap("qnli", labels, labels, labels)
    with pytest.raises(ValueError, match="sst2 reports accuracy, not 'f1'"):
        paired_bootstrap("sst2", labels, labels, labels, metric="f1")
    with pytest.raises(ValueError, match=r"same non-empty dev set with at least one seed each: \(1, 3\), \(1, 4\) and 4"):
        paired_bootstrap("sst2", labels[:3], labels, labels)
    with pytest.raises(ValueError, match=r"\(1, 4\), \(0, 4\) and 4 examples"):
        paired_bootstrap("sst2", labels, labels[None][:0], labels)
    with pytest.raises(ValueError, match=r"\(examples,\) or \(seeds, examples\)"):
        paired_bootstrap("sst2", labels, labels[None, None], labels)
    with pytest.raises(ValueError, match=r"\(examples,\) or \(seeds, examples\)"):
        paired_bootstrap("sst2", labels, labels, labels[None])
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_bootstrap("sst2", labels, labels, labels, confidence=95)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        paired_bootstrap("sst2", labels, labels, labels, samples=0)
