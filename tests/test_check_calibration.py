"""Calibration check: ECE on known bins, temperature recovery, absent class, findings, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import logits_for, make_context, make_view

from audit.checks.calibration import (
    CalibrationCheck,
    brier_score,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from audit.inference import softmax
from audit.results import Status


def _probs_with_confidence(confidence, labels, correct, n_classes=2):
    """Rows whose top probability is `confidence`, on the label when `correct`."""
    n = len(labels)
    predicted = np.where(correct, labels, (labels + 1) % n_classes)
    probs = np.full((n, n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(n), predicted] = confidence
    return probs


def _run(views, tmp_path, *overrides, seed=0):
    ctx = make_context(views, tmp_path=tmp_path, seed=seed, overrides=list(overrides))
    result = CalibrationCheck().run(ctx)
    return result, json.loads(json.dumps(result.to_dict(), allow_nan=False))


def test_ece_of_one_bin_is_confidence_minus_accuracy():
    labels = np.zeros(10, int)
    probs = _probs_with_confidence(0.8, labels, np.arange(10) < 6)   # 80% sure, 60% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2)
    assert expected_calibration_error(probs, labels, adaptive=True) == pytest.approx(0.2)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.2)
    bins = reliability_bins(probs, labels)
    assert sum(bins["count"]) == 10 and len(bins["edges"]) == 16
    filled = int(np.argmax(bins["count"]))
    assert bins["edges"][filled] < 0.8 <= bins["edges"][filled + 1]
    assert bins["confidence"][filled] == pytest.approx(0.8)
    assert bins["accuracy"][filled] == pytest.approx(0.6)
    assert np.isnan(bins["accuracy"][0])                         # empty bins are NaN -> None


def test_ece_weights_bins_by_count_and_mce_takes_the_worst():
    labels = np.zeros(20, int)
    # 10 images at 0.95 all right (gap 0.05), 10 at 0.6 with 3 right (gap 0.3)
    probs = np.vstack([_probs_with_confidence(0.95, labels[:10], np.ones(10, bool)),
                       _probs_with_confidence(0.6, labels[10:], np.arange(10) < 3)])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.05 + 0.5 * 0.3)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.3)
    # Two equal-mass bins split the same way here.
    assert expected_calibration_error(probs, labels, n_bins=2, adaptive=True) == \
        pytest.approx(0.175)


def test_brier_and_nll_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    labels = np.array([0, 1])
    assert brier_score(probs, labels) == pytest.approx(((0.09 + 0.04 + 0.01)
                                                        + (0.25 + 0.5625 + 0.0625)) / 2)
    logits = np.log(probs)
    assert negative_log_likelihood(logits, labels) == pytest.approx(-(np.log(0.7) +
                                                                      np.log(0.25)) / 2)


def test_fit_temperature_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 5))
    true = softmax(logits / 2.0)
    labels = (rng.random(20_000)[:, None] > np.cumsum(true, axis=1)).sum(axis=1)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(1.0, rel=0.05)


def test_classwise_ece_none_for_absent_class():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0]])
    per_class = classwise_ece(probs, labels)
    assert per_class[2] is None
    # class a: four images, probs 0.9, 0.9 (both a) and 0.1, 0.1 (neither): gaps 0.1 each
    assert per_class[0] == pytest.approx(0.1)


def test_check_fits_on_reference_and_flags_overconfident_shift(tmp_path):
    rng = np.random.default_rng(1)
    n = 3000
    ref_logits = rng.normal(0, 3, (n, 3))
    ref_labels = (rng.random(n)[:, None] > np.cumsum(softmax(ref_logits / 2.0), axis=1)).sum(1)
    # Shifted: same confident logits, but labels unrelated to them -> overconfident by far.
    sh_logits = rng.normal(0, 3, (n, 3))
    sh_labels = rng.integers(0, 3, n)
    views = [make_view("heldout", "heldout", ref_labels, ref_logits, class_names=("a", "b", "c")),
             make_view("site_b", "shifted", sh_labels, sh_logits, class_names=("a", "b", "c"))]
    result, data = _run(views, tmp_path)
    m = data["metrics"]
    assert m["temperature"] == pytest.approx(2.0, rel=0.1)
    ref = m["datasets"]["heldout"]
    assert ref["after"]["ece"] < ref["before"]["ece"] and ref["after"]["nll"] < ref["before"]["nll"]
    # Out-of-fold figures are within-fold (600 images each): compare them with the same
    # fold-wise figures before scaling; the in-sample fit on all 3000 is kept, labelled.
    assert ref["after_basis"] == "out_of_fold" and ref["after"]["folds"] == 5
    assert ref["after"]["ece"] < 0.5 * ref["before_by_fold"]["ece"]
    assert ref["after_in_sample"]["ece"] < 0.03
    assert result.status == Status(
        "FAIL" if ref["before"]["ece"] > 0.15 else "WARN" if ref["before"]["ece"] > 0.05 else "PASS")
    assert result.status != Status.PASS
    assert "uncalibrated" in result.summary
    shifted = [f for f in data["findings"] if f["dataset"] == "site_b"]
    assert len(shifted) == 1
    before = m["datasets"]["site_b"]["before"]
    assert shifted[0]["impact"] == pytest.approx(before["mean_confidence"] - before["accuracy"])
    assert f"{100 * before['accuracy']:.1f}%" in shifted[0]["text"]
    assert "recalibrate on data from site_b" in shifted[0]["action"]
    assert set(ref["before"]["per_class_ece"]) == {"a", "b", "c"}


def test_absent_class_and_single_dataset(tmp_path):
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    preds = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    view = make_view("heldout", "heldout", labels, logits_for(labels, preds, 3, confidence=2.0),
                     class_names=("a", "b", "c"))
    result, data = _run([view], tmp_path)
    ds = data["metrics"]["datasets"]
    assert list(ds) == ["heldout"]
    assert ds["heldout"]["before"]["per_class_ece"]["c"] is None
    assert ds["heldout"]["after"]["per_class_ece"]["c"] is None
    assert None in ds["heldout"]["before"]["reliability"]["accuracy"]   # empty bins
    assert result.status in (Status.PASS, Status.WARN, Status.FAIL)


def test_tiny_perfect_set_stays_finite_and_deterministic(tmp_path):
    labels = np.array([0, 1])
    view = make_view("heldout", "heldout", labels, logits_for(labels, labels, 2))
    _, first = _run([view], tmp_path)
    _, again = _run([view], tmp_path)
    assert first == again
    assert 0.05 <= first["metrics"]["temperature"] <= 20.0
