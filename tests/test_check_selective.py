"""Selective check: threshold fitting, risk-coverage/AURC by hand, referral on shifted sets, OOD AUROC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_context, make_view

from audit.checks.calibration import CalibrationCheck
from audit.checks.selective import (
    SelectiveCheck,
    accepted_accuracy,
    aurc,
    energy_score,
    fit_threshold,
    guaranteed_threshold,
    risk_coverage_curve,
    shift_auroc,
)
from audit.results import Status


def _run(views, tmp_path, *overrides, seed=0, with_calibration=False):
    ctx = make_context(views, tmp_path=tmp_path, seed=seed, overrides=list(overrides))
    if with_calibration:
        ctx.results["calibration"] = CalibrationCheck().run(ctx)
    result = SelectiveCheck().run(ctx)
    return result, json.loads(json.dumps(result.to_dict(), allow_nan=False))


def _logits(labels, confidence_margin, right, n_classes=2):
    """Logits with top-class margin per image, on the label when `right`."""
    labels = np.asarray(labels)
    predicted = np.where(right, labels, (labels + 1) % n_classes)
    logits = np.zeros((len(labels), n_classes))
    logits[np.arange(len(labels)), predicted] = confidence_margin
    return logits


def test_fit_threshold_by_hand():
    conf = np.array([0.6, 0.99, 0.8, 0.7, 0.9])
    correct = np.array([1, 1, 1, 0, 1], bool)
    # Sorted: .99 .9 .8 .7 .6 -> accepted accuracy 1, 1, 1, .75, .8
    assert fit_threshold(conf, correct, target_accuracy=0.95) == 0.8
    assert fit_threshold(conf, correct, target_accuracy=0.8) == 0.6
    assert fit_threshold(conf, correct, target_accuracy=1.01) is None
    assert accepted_accuracy(conf, correct, 0.8) == (1.0, 0.6)
    assert accepted_accuracy(conf, correct, None) == (None, 0.0)


def test_fit_threshold_keeps_ties_together():
    conf = np.array([0.9, 0.9, 0.8])
    correct = np.array([True, False, True])
    assert fit_threshold(conf, correct, target_accuracy=1.0) is None   # 0.9 accepts both


def test_risk_coverage_and_aurc_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 0, 1, 1], bool)
    curve = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(curve["risk"], [0, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    assert aurc(conf, correct) == pytest.approx((0 + 0.5 + 1 / 3 + 0.25) / 4)
    rng = np.random.default_rng(0)
    big = risk_coverage_curve(rng.random(5000), rng.random(5000) < 0.9, max_points=101)
    assert len(big["coverage"]) == 101 and big["coverage"][0] == 1 / 5000 and big["coverage"][-1] == 1


def test_energy_and_shift_auroc():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    np.testing.assert_allclose(energy_score(logits), [-np.log(2.0), -np.log(4.0)])
    assert shift_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert shift_auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75
    assert shift_auroc(np.array([]), np.array([0.2])) is None


def _sets():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    # Reference: confident images right, the 20% least confident right half the time.
    ref_right = np.r_[np.ones(320, bool), rng.random(80) < 0.5]
    ref_margin = np.r_[rng.uniform(4, 6, 320), rng.uniform(0, 1, 80)]
    # Shifted: still confident, but a third of the confident images are wrong.
    sh_right = np.r_[rng.random(320) < 0.67, rng.random(80) < 0.5]
    sh_margin = np.r_[rng.uniform(3, 5, 320), rng.uniform(0, 1, 80)]
    return (make_view("heldout", "heldout", labels, _logits(labels, ref_margin, ref_right)),
            make_view("site_b", "shifted", labels, _logits(labels, sh_margin, sh_right)))


def test_threshold_does_not_protect_shifted_set(tmp_path):
    ref, shifted = _sets()
    result, data = _run([ref, shifted], tmp_path)
    m = data["metrics"]
    assert {"value", "target_accuracy", "calibrated", "delta", "guarantee"} <= set(m["threshold"])
    assert m["threshold"]["calibrated"] is False and m["threshold"]["target_accuracy"] == 0.95
    t = m["threshold"]["value"]
    ref_conf = ref.probs.max(axis=1)
    assert t == guaranteed_threshold(ref_conf, ref.correct, target_accuracy=0.95,
                                     delta=0.1)["value"]
    # The certified threshold is never more lenient than the in-sample winner's-curse one.
    assert t >= m["threshold"]["naive_value"] == fit_threshold(ref_conf, ref.correct,
                                                               target_accuracy=0.95)
    r = m["datasets"]["heldout"]
    assert r["basis"] == "out_of_fold" and m["crossfit"]["folds"] == 5
    assert r["accepted_accuracy"] >= 0.95 and r["coverage"] >= 0.75
    assert r["accepted_accuracy_ci"]["n"] == r["n_accepted"] > 0
    assert r["in_sample"]["coverage"] == pytest.approx(np.mean(ref_conf >= t))
    s = m["datasets"]["site_b"]
    expected_acc, expected_cov = accepted_accuracy(shifted.probs.max(axis=1), shifted.correct, t)
    assert s["accepted_accuracy"] == pytest.approx(expected_acc) and expected_acc < 0.85
    assert s["referred"] == pytest.approx(1 - expected_cov)
    assert result.status == Status.FAIL
    assert set(s["ood_auroc"]) == {"msp", "energy"} and s["ood_auroc"]["msp"] > 0.5
    assert "ood_auroc" not in r
    finding = next(f for f in data["findings"] if f["dataset"] == "site_b")
    assert f"keeps accuracy {100 * expected_acc:.1f}%" in finding["text"]
    assert "not under shift" in finding["text"] and s["basis"] == "measured_under_shift"
    assert f"refers {100 * (1 - expected_cov):.1f}% to a human" in finding["text"]
    assert f"confidence >= {t:.3f}" in finding["text"]
    assert finding["impact"] == pytest.approx(0.95 - expected_acc)
    assert len(r["risk_coverage"]["risk"]) == 101


def test_uses_calibrated_probabilities_when_calibration_ran(tmp_path):
    ref, shifted = _sets()
    _, raw = _run([ref, shifted], tmp_path)
    _, cal = _run([ref, shifted], tmp_path, with_calibration=True)
    assert cal["metrics"]["calibrated"] is True and cal["metrics"]["threshold"]["calibrated"] is True
    assert cal["metrics"]["temperature"] > 0
    assert cal["metrics"]["threshold"]["value"] != raw["metrics"]["threshold"]["value"]


def test_single_dataset_and_unreachable_target(tmp_path):
    labels = np.array([0, 1, 0, 1])
    view = make_view("heldout", "heldout", labels,
                     _logits(labels, np.array([3.0, 2.0, 1.0, 0.5]), np.array([0, 1, 1, 1], bool)))
    result, data = _run([view], tmp_path)
    assert result.status == Status.WARN                  # most confident image is wrong
    assert data["metrics"]["threshold"]["value"] is None
    ds = data["metrics"]["datasets"]["heldout"]
    assert ds["coverage"] == 0 and ds["referred"] == 1 and ds["accepted_accuracy"] is None
    assert [f["dataset"] for f in data["findings"]] == ["heldout"]
    assert "no confidence threshold" in data["findings"][0]["text"]


def test_low_coverage_warns_and_easy_set_passes(tmp_path):
    labels = np.arange(1000) % 2
    margins = np.linspace(5, 0.1, 1000)
    right = np.r_[np.ones(400, bool), np.arange(600) % 2 == 0]   # only the top 40% all right
    result, data = _run([make_view("heldout", "heldout", labels, _logits(labels, margins, right))],
                        tmp_path)
    assert 0.3 < data["metrics"]["datasets"]["heldout"]["coverage"] < 0.5
    assert result.status == Status.WARN
    result, _ = _run([make_view("heldout", "heldout", labels, _logits(labels, margins, True))],
                     tmp_path)
    assert result.status == Status.PASS


def test_too_few_images_cannot_be_certified(tmp_path):
    """Ten right answers are no evidence of 95% accuracy at 90% confidence: refer everything."""
    labels = np.arange(10) % 2
    view = make_view("heldout", "heldout", labels, _logits(labels, np.linspace(5, 1, 10), True))
    result, data = _run([view], tmp_path)
    assert data["metrics"]["threshold"]["value"] is None and result.status == Status.WARN
    assert "only 10 images" in data["findings"][0]["text"]


def test_deterministic(tmp_path):
    ref, shifted = _sets()
    assert _run([ref, shifted], tmp_path)[1] == _run([ref, shifted], tmp_path)[1]
