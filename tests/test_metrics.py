"""GLUE / SQuAD metrics against hand-computed cases and against scikit-learn / scipy."""

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from hf_sparse.tasks.metrics import (
    accuracy,
    f1_binary,
    glue_metrics,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    spearman,
    squad_exact_match,
    squad_f1,
    squad_metrics,
)

# preds vs refs: TP at 0 and 4, FP at 1, TN at 2, FN at 3
PREDS = [1, 1, 0, 0, 1]
REFS = [1, 0, 0, 1, 1]


# ----------------------------------------------------------------------------- hand-computed


def test_accuracy_by_hand():
    # matches at positions 0 and 2 -> 2 / 4
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(np.array(["a", "b"]), ["a", "b"]) == 1.0


def test_f1_binary_by_hand():
    # TP=2, FP=1, FN=1 -> 2*2 / (2*2 + 1 + 1) = 2/3 (P = R = 2/3)
    assert f1_binary(PREDS, REFS) == pytest.approx(2 / 3)
    # positive=0: TP=1 (pos 2), FP=1 (pos 3), FN=1 (pos 1) -> 2 / (2 + 1 + 1) = 0.5
    assert f1_binary(PREDS, REFS, positive=0) == pytest.approx(0.5)
    # no predicted and no true positives -> 0.0 (sklearn zero_division=0)
    assert f1_binary([0, 0, 0], [0, 0, 0]) == 0.0
    # positives exist but none predicted: TP=0 -> 0.0
    assert f1_binary([0, 0], [1, 0]) == 0.0


def test_matthews_by_hand():
    # TP=2, TN=1, FP=1, FN=1 -> (2*1 - 1*1) / sqrt((2+1)(2+1)(1+1)(1+1)) = 1/6
    assert matthews_corrcoef(PREDS, REFS) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    # constant predictions: the denominator is 0 -> 0.0
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0
    assert matthews_corrcoef([1, 1], [1, 1]) == 0.0


def test_matthews_multiclass_by_hand():
    # refs [0,1,2,0], preds [0,2,2,0]: true counts t=[2,1,1], predicted counts p=[2,0,2], correct=3, n=4
    # cov(t,p) = 3*4 - (2*2 + 1*0 + 1*2) = 6; cov(p,p) = 16 - (4+0+4) = 8; cov(t,t) = 16 - (4+1+1) = 10
    # MCC = 6 / sqrt(8 * 10)
    assert matthews_corrcoef([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / math.sqrt(80))


def test_pearson_by_hand():
    # x - mean = [-1, 0, 1]; y = [1, 2, 4], y - 7/3 = [-4/3, -1/3, 5/3]
    # sum of products = 4/3 + 5/3 = 3; |x| = sqrt(2); |y| = sqrt(42)/3 -> r = 9 / sqrt(84)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert pearson([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0)


def test_spearman_by_hand_with_ties():
    # ranks of [1, 2, 2, 3] = [1, 2.5, 2.5, 4]; ranks of [10, 20, 30, 40] = [1, 2, 3, 4]
    # centered: [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]; dot = 4.5
    # norms sqrt(4.5) and sqrt(5) -> rho = 4.5 / sqrt(22.5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(math.sqrt(0.9))
    # monotone but non-linear -> 1
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)


def test_correlation_of_constant_input_is_nan():
    # scipy returns nan (with a warning) when an input is constant
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


# ----------------------------------------------------------------------------- against sklearn / scipy


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    refs = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, refs, 1 - refs)  # correlated with refs
    assert accuracy(preds, refs) == pytest.approx(sklearn.metrics.accuracy_score(refs, preds))
    for positive in (0, 1):
        expected = sklearn.metrics.f1_score(refs, preds, pos_label=positive, zero_division=0)
        assert f1_binary(preds, refs, positive=positive) == pytest.approx(expected)
    assert matthews_corrcoef(preds, refs) == pytest.approx(sklearn.metrics.matthews_corrcoef(refs, preds))
    # lists work as well as arrays
    assert matthews_corrcoef(preds.tolist(), refs.tolist()) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(refs, preds)
    )


@pytest.mark.parametrize("num_classes", [3, 5])
def test_multiclass_matthews_and_accuracy_match_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    refs = rng.integers(0, num_classes, 200)
    preds = np.where(rng.random(200) < 0.5, refs, rng.integers(0, num_classes, 200))
    assert matthews_corrcoef(preds, refs) == pytest.approx(sklearn.metrics.matthews_corrcoef(refs, preds))
    assert accuracy(preds, refs) == pytest.approx(sklearn.metrics.accuracy_score(refs, preds))
    # string labels, and a class that only appears in the predictions
    labels = np.array(["neg", "neu", "pos", "odd", "rare"])[: num_classes]
    s_refs, s_preds = labels[refs], labels[preds]
    s_preds[0] = "only-predicted"
    assert matthews_corrcoef(s_preds, s_refs) == pytest.approx(sklearn.metrics.matthews_corrcoef(s_refs, s_preds))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 400))
    refs = rng.uniform(0, 5, n)
    preds = refs + rng.normal(0, 1.5, n)
    assert pearson(preds, refs) == pytest.approx(scipy.stats.pearsonr(preds, refs)[0], abs=1e-12)
    assert spearman(preds, refs) == pytest.approx(scipy.stats.spearmanr(preds, refs)[0], abs=1e-12)
    # heavy ties: STS-B style scores rounded to 0.5 steps, and integer predictions
    tied_refs = np.round(refs * 2) / 2
    tied_preds = np.round(preds)
    assert spearman(tied_preds, tied_refs) == pytest.approx(
        scipy.stats.spearmanr(tied_preds, tied_refs)[0], abs=1e-12
    )
    assert pearson(tied_preds, tied_refs) == pytest.approx(scipy.stats.pearsonr(tied_preds, tied_refs)[0], abs=1e-12)
    # (n, 1) regression outputs are accepted
    assert pearson(preds[:, None], refs) == pytest.approx(pearson(preds, refs))


# ----------------------------------------------------------------------------- GLUE


def test_glue_metrics_per_task():
    assert glue_metrics("sst2", PREDS, REFS) == {"accuracy": pytest.approx(0.6)}  # 3 of 5 correct
    assert set(glue_metrics("rte", PREDS, REFS)) == {"accuracy"}
    mrpc = glue_metrics("mrpc", PREDS, REFS)
    assert mrpc == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert glue_metrics("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(1 / 6)}
    stsb = glue_metrics("stsb", [1, 2, 3], [1, 2, 4])
    assert stsb["pearson"] == pytest.approx(9 / math.sqrt(84))
    assert stsb["spearmanr"] == pytest.approx(1.0)
    assert stsb["combined"] == pytest.approx((9 / math.sqrt(84) + 1.0) / 2)
    assert glue_metrics("SST-2", PREDS, REFS) == glue_metrics("sst2", PREDS, REFS)
    for result in (mrpc, stsb, glue_metrics("cola", np.array(PREDS), np.array(REFS))):
        assert all(type(value) is float for value in result.values())


def test_plain_float_outputs():
    values = [
        accuracy(np.array(PREDS), np.array(REFS)),
        f1_binary(np.array(PREDS), np.array(REFS)),
        matthews_corrcoef(np.array(PREDS), np.array(REFS)),
        pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])),
        spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])),
        squad_f1("a", ["a"]),
        squad_exact_match("a", ["a"]),
    ]
    assert all(type(value) is float for value in values)


def test_glue_errors():
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli'.*sst2.*stsb"):
        glue_metrics("mnli", PREDS, REFS)
    with pytest.raises(ValueError, match="differ in length: 2 != 3"):
        glue_metrics("sst2", [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="1-D.*argmax"):
        accuracy(np.zeros((3, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="at least 2"):
        pearson([1.0], [2.0])
    with pytest.raises(ValueError, match="at most two distinct labels"):
        f1_binary([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="positive=1"):
        f1_binary([0, 2], [2, 0])


# ----------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Denver Broncos!", "denver broncos"),  # case, article, punctuation
        ("  a  cat,\tan   apple \n", "cat apple"),  # articles and whitespace
        ("theory of another thesis", "theory of another thesis"),  # articles only as whole words
        ("Hello-World", "helloworld"),  # punctuation is removed, not replaced by a space
        ("U.S.A. (1998)", "usa 1998"),
        ("The", ""),
        ("naïve café", "naïve café"),  # non-ASCII letters are kept
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_squad_exact_match():
    assert squad_exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert squad_exact_match("Broncos", ["Denver Broncos"]) == 0.0
    assert squad_exact_match("Broncos", ["Denver Broncos", "Broncos."]) == 1.0  # max over ground truths
    assert squad_exact_match("Denver Broncos", {"text": ["denver broncos"], "answer_start": [3]}) == 1.0


def test_squad_f1():
    # pred "denver broncos team" (3 tokens) vs gold "denver broncos football team" (4 tokens):
    # common 3 -> P = 3/3, R = 3/4 -> F1 = 2 * 1 * 0.75 / 1.75 = 6/7
    assert squad_f1("Denver Broncos team", ["the Denver Broncos football team"]) == pytest.approx(6 / 7)
    # pred "in year 1998" (3) vs "1998 season" (2): common 1 -> P = 1/3, R = 1/2 -> F1 = (1/3) / (5/6) = 0.4
    assert squad_f1("in the year 1998", ["1998 season"]) == pytest.approx(0.4)
    # token counts are a multiset: "x x y" vs "x y y" share one x and one y -> P = R = 2/3
    assert squad_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    # max over ground truths
    assert squad_f1("in the year 1998", ["1998 season", "1998"]) == pytest.approx(2 * (1 / 3) / (4 / 3))
    assert squad_f1("", ["Denver"]) == 0.0
    assert squad_f1("Denver", ["Carolina"]) == 0.0


def test_squad_metrics_in_percent():
    references = {
        "q1": ["Denver Broncos", "The Denver Broncos"],
        "q2": ["the Denver Broncos football team"],
    }
    predictions = {"q1": "denver broncos", "q2": "Denver Broncos team", "extra": "ignored"}
    scores = squad_metrics(predictions, references)
    # EM: (1 + 0) / 2 -> 50; F1: (1 + 6/7) / 2 -> 92.857...
    assert scores == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 6 / 7) / 2)}
    assert all(type(value) is float for value in scores.values())
    # HF `answers` dicts are accepted as references
    hf_refs = {"q1": {"text": ["Denver Broncos"], "answer_start": [0]}}
    assert squad_metrics({"q1": "Denver Broncos"}, hf_refs) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_errors():
    with pytest.raises(ValueError, match="no prediction for reference id.*'?q2'?"):
        squad_metrics({"q1": "x"}, {"q1": ["x"], "q2": ["y"]})
    with pytest.raises(ValueError, match="references are empty"):
        squad_metrics({"q1": "x"}, {})
    with pytest.raises(ValueError, match="at least one ground-truth"):
        squad_f1("x", [])
