"""Performance check: hand-computed metrics, bootstrap CIs, absent classes, gaps, findings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import logits_for, make_context, make_view
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from audit.checks.performance import (
    PerformanceCheck,
    confusion_counts,
    confusion_statistics,
    one_vs_rest_auc,
)
from audit.results import Status

ABC = ("a", "b", "c")


def _run(views, tmp_path, *overrides, seed=0):
    ctx = make_context(views, tmp_path=tmp_path, seed=seed, overrides=list(overrides))
    result = PerformanceCheck().run(ctx)
    return result, json.loads(json.dumps(result.to_dict(), allow_nan=False))


def _view(name, role, labels, preds, classes=ABC, **kw):
    return make_view(name, role, labels, logits_for(labels, preds, len(classes)),
                     class_names=classes, **kw)


def test_statistics_match_hand_computation_and_sklearn():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 2])
    counts = confusion_counts(labels, preds, 3)
    assert counts.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    stats = confusion_statistics(counts)
    assert stats["accuracy"] == pytest.approx(4 / 6)
    assert stats["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert stats["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert stats["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=range(3), zero_division=0)
    np.testing.assert_allclose(stats["precision"], precision)
    np.testing.assert_allclose(stats["recall"], recall)
    np.testing.assert_allclose(stats["f1"], f1)
    np.testing.assert_array_equal(stats["support"], support)


def test_batched_confusions_equal_one_by_one():
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    resamples = [rng.integers(0, 50, size) for size in (50, 37, 61)]  # group resamples vary in size
    batched = confusion_counts(labels, preds, 4, resamples)
    for counts, idx in zip(batched, resamples, strict=True):
        np.testing.assert_array_equal(counts, confusion_matrix(labels[idx], preds[idx],
                                                               labels=range(4)))


def test_absent_class_gives_none_not_zero(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 0])
    preds = np.array([0, 1, 1, 1, 0, 0])
    view = _view("heldout", "heldout", labels, preds)
    _, data = _run([view], tmp_path)
    ds = data["metrics"]["datasets"]["heldout"]
    c = ds["per_class"]["c"]
    assert c["support"] == 0 and c["precision"]["value"] is None and c["f1"] is None \
        and c["auc"] is None and c["precision"]["n"] == 0
    assert c["recall"] == {"value": None, "low": None, "high": None, "n": 0}
    assert ds["confusion"]["counts"][2] == [0, 0, 0]
    assert ds["confusion"]["normalized"][2] == [None, None, None]
    assert ds["confusion"]["normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0])
    # An absent class neither lowers macro-F1 nor balanced accuracy.
    assert ds["macro_f1"]["value"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert ds["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert ds["per_class"]["a"]["auc"] == pytest.approx(roc_auc_score(labels == 0, view.probs[:, 0]))
    assert ds["macro_auc"] == pytest.approx(np.mean([ds["per_class"][k]["auc"] for k in "ab"]))


def test_one_vs_rest_auc_none_for_a_class_alone():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert one_vs_rest_auc(np.array([0, 0]), probs) == [None, None]
    assert one_vs_rest_auc(np.array([0, 1]), probs) == [1.0, 1.0]


def test_single_dataset_passes_without_gap_and_ci_brackets_value(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    preds = np.where(rng.random(400) < 0.95, labels, (labels + 1) % 3)
    result, data = _run([_view("heldout", "heldout", labels, preds)], tmp_path,
                        "checks.performance.n_boot=300")
    assert result.status == Status.PASS
    assert data["metrics"]["gap"] == {} and data["metrics"]["reference"] == "heldout"
    acc = data["metrics"]["datasets"]["heldout"]["accuracy"]
    assert acc["value"] == pytest.approx(np.mean(labels == preds))
    assert acc["low"] < acc["value"] < acc["high"]
    assert 0.01 < acc["high"] - acc["low"] < 0.08  # about 4 * sqrt(.95 * .05 / 400) = 0.044
    assert data["metrics"]["datasets"]["heldout"]["resampling"] == "images"
    assert not any(f["kind"] == "accuracy_drop" for f in data["findings"])


def test_shifted_drop_fails_and_is_explained(tmp_path):
    labels = np.tile([0, 1, 2], 100)
    good = labels.copy()
    good[:15] = (labels[:15] + 1) % 3                  # 95% right
    bad = labels.copy()
    bad[labels == 2] = 1                               # class c always called b: 66.7% right
    views = [_view("heldout", "heldout", labels, good), _view("site_b", "shifted", labels, bad),
             _view("train", "train", labels, labels)]
    result, data = _run(views, tmp_path, "checks.performance.n_boot=200")
    assert result.status == Status.FAIL                 # drop 28.3 points > 15
    gap = data["metrics"]["gap"]["site_b"]
    assert gap["value"] == pytest.approx(0.95 - 2 / 3)
    assert gap["low"] < gap["value"] < gap["high"]
    assert set(data["metrics"]["datasets"]) == {"heldout", "site_b", "train"}
    assert data["metrics"]["datasets"]["train"]["role"] == "train"
    drop = next(f for f in data["findings"] if f["kind"] == "accuracy_drop")
    assert "Accuracy on site_b is 66.7%" in drop["text"] and "95.0% on heldout" in drop["text"]
    assert "drop of 28.3 points" in drop["text"] and drop["gap_share"] is None
    assert drop["impact"] == pytest.approx(0.95 - 2 / 3)
    recall = [f for f in data["findings"] if f["kind"] == "class_recall"]
    assert [(f["dataset"], f["evidence"]["class"]) for f in recall] == [("site_b", "c")]
    assert "0.0% of c images (n=100)" in recall[0]["text"]
    assert "100.0% are called b" in recall[0]["text"]
    assert recall[0]["impact"] == pytest.approx(1 / 3)


def test_small_drop_warns(tmp_path):
    labels = np.tile([0, 1], 200)
    ref = labels.copy()
    shifted = labels.copy()
    shifted[:40] = 1 - labels[:40]                     # 90% right: drop of 10 points
    result, _ = _run([_view("heldout", "heldout", labels, ref, classes=("a", "b")),
                      _view("s", "shifted", labels, shifted, classes=("a", "b"))],
                     tmp_path, "checks.performance.n_boot=100")
    assert result.status == Status.WARN


def test_low_reference_accuracy_fails(tmp_path):
    labels = np.array([0, 1, 0, 1])
    result, _ = _run([_view("heldout", "heldout", labels, 1 - labels, classes=("a", "b"))],
                     tmp_path, "checks.performance.n_boot=100")
    assert result.status == Status.FAIL


def test_groups_are_resampled_whole(tmp_path):
    rng = np.random.default_rng(3)
    group_right = rng.random(40) < 0.8
    labels = np.tile([0, 1], 200)
    correct = np.repeat(group_right, 10)                # 40 groups of 10 near-copies
    preds = np.where(correct, labels, 1 - labels)
    groups = np.repeat(np.arange(40), 10)
    widths = {}
    for name, g in (("images", None), ("groups", groups)):
        view = _view("heldout", "heldout", labels, preds, classes=("a", "b"), groups=g)
        _, data = _run([view], tmp_path / name, "checks.performance.n_boot=400")
        ds = data["metrics"]["datasets"]["heldout"]
        assert ds["resampling"] == name
        widths[name] = ds["accuracy"]["high"] - ds["accuracy"]["low"]
    assert data["metrics"]["datasets"]["heldout"]["n_groups"] == 40
    assert widths["groups"] > 2 * widths["images"]      # sqrt(10) wider in expectation


def test_deterministic_and_seeded(tmp_path):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.8, labels, rng.integers(0, 3, 200))
    views = [_view("heldout", "heldout", labels, preds),
             _view("s", "shifted", labels[::-1], preds)]
    _, first = _run(views, tmp_path, "checks.performance.n_boot=100")
    _, again = _run(views, tmp_path, "checks.performance.n_boot=100")
    _, other = _run(views, tmp_path, "checks.performance.n_boot=100", seed=1)
    assert first == again
    # Bootstrap intervals follow the seed; exact proportion intervals do not depend on one.
    assert first["metrics"]["datasets"]["heldout"]["balanced_accuracy"] != \
        other["metrics"]["datasets"]["heldout"]["balanced_accuracy"]
    assert first["metrics"]["datasets"]["heldout"]["accuracy"] == \
        other["metrics"]["datasets"]["heldout"]["accuracy"]


def test_recall_of_zero_of_three_has_an_honest_interval_and_says_few_images(tmp_path):
    """0 of 3 was printed "0.0% (95% CI 0.0-0.0)" by the percentile bootstrap."""
    labels = np.r_[np.zeros(3, int), np.ones(97, int)]
    preds = np.ones(100, int)                            # every class-a image called b
    _, data = _run([_view("heldout", "heldout", labels, preds, classes=("a", "b"))], tmp_path)
    recall = data["metrics"]["datasets"]["heldout"]["per_class"]["a"]["recall"]
    assert recall["value"] == 0 and recall["low"] == 0 and recall["high"] > 0.5
    assert recall["n"] == 3
    b = data["metrics"]["datasets"]["heldout"]["per_class"]["b"]["recall"]
    assert b["value"] == 1 and b["high"] == 1 and b["low"] < 0.97   # 100% is not certain either
    text = next(f["text"] for f in data["findings"] if f["kind"] == "class_recall")
    assert "(n=3)" in text and "only 3 images: a rough estimate" in text


def test_default_bootstrap_on_five_thousand_images(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 5000)
    preds = np.where(rng.random(5000) < 0.9, labels, rng.integers(0, 5, 5000))
    view = make_view("heldout", "heldout", labels, logits_for(labels, preds, 5),
                     class_names=tuple("abcde"))
    _, data = _run([view], tmp_path)
    assert data["metrics"]["n_boot"] == 1000
    recall = data["metrics"]["datasets"]["heldout"]["per_class"]["a"]["recall"]
    assert recall["low"] < recall["value"] < recall["high"]
