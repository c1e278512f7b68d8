"""Shift check: hand-computed prior-shift arithmetic, drift tests on planted shifts, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import logits_for, make_context, make_view

from audit.checks.shift import (
    ShiftCheck,
    absorbing_classes,
    accuracy_drop_ci,
    describe_property_drift,
    prior_shift_decomposition,
)
from audit.drift import (
    class_matched_sample,
    domain_classifier_auc,
    mmd2_unbiased,
    mmd_permutation_test,
    property_drift,
    rbf_kernel,
)
from audit.results import Status

CLASSES = ("a", "b", "c")


# --- drift statistics -------------------------------------------------------------------------

def test_mmd2_unbiased_matches_the_u_statistic_written_out():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    kxx, kyy, kxy = (rbf_kernel(a, b, bandwidth=1.3) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    expected = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy))
                / (m * (m - 1)) - 2 * kxy.mean())
    assert mmd2_unbiased(x, y, bandwidth=1.3) == pytest.approx(expected, rel=1e-10)


def test_mmd_detects_a_planted_mean_shift_and_not_a_null():
    x = np.random.default_rng(1).normal(size=(150, 16))
    shifted = np.random.default_rng(2).normal(size=(150, 16)) + 0.4
    same = np.random.default_rng(3).normal(size=(150, 16))
    planted = mmd_permutation_test(x, shifted, n_perm=200, rng=np.random.default_rng(0))
    null = mmd_permutation_test(x, same, n_perm=200, rng=np.random.default_rng(0))
    assert planted["p_value"] == pytest.approx(1 / 201)  # no permutation reaches the observed
    assert planted["mmd2"] > 0
    assert null["p_value"] > 0.1
    again = mmd_permutation_test(x, shifted, n_perm=200, rng=np.random.default_rng(0))
    assert again == planted


def test_domain_classifier_auc_separates_a_shift_and_not_a_null():
    x = np.random.default_rng(1).normal(size=(100, 8))
    shifted = np.random.default_rng(2).normal(size=(100, 8)) + 1.0
    same = np.random.default_rng(3).normal(size=(100, 8))
    assert domain_classifier_auc(x, shifted, seed=0) > 0.95
    assert abs(domain_classifier_auc(x, same, seed=0) - 0.5) < 0.15
    assert np.isnan(domain_classifier_auc(x[:1], same, seed=0))


def test_property_drift_direction_and_scale():
    rng = np.random.default_rng(0)
    ref, darker = rng.normal(0.6, 0.05, 400), rng.normal(0.5, 0.05, 400)
    d = property_drift(ref, darker)
    assert d["shift_sd"] == pytest.approx(-2.0, abs=0.25)
    assert d["wasserstein_sd"] == pytest.approx(2.0, abs=0.25)
    assert d["ks_p"] < 1e-6
    text, props = describe_property_drift("site_b", {"brightness": d}, alpha=0.01, min_sd=0.2)
    assert props == ["brightness"]
    assert text == "site_b images are darker (brightness W=2.0 SD, p<0.001)"
    bigger = property_drift(ref, rng.normal(0.7, 0.05, 400))
    bigger["wasserstein_sd"] = 5.0  # listed first, still phrased after the adjectives
    text, props = describe_property_drift("site_b", {"brightness": d, "cell_size": bigger,
                                                     "hue": d | {"ks_p": 0.5}},
                                          alpha=0.01, min_sd=0.2)
    assert props == ["cell_size", "brightness"]
    assert text == ("site_b images are darker (brightness W=2.0 SD, p<0.001) and have larger "
                    "white cells (cell size W=5.0 SD, p<0.001)")


def test_hue_is_compared_on_the_circle():
    rng = np.random.default_rng(0)
    ref = (355 + rng.normal(0, 3, 300)) % 360  # straddles 0/360
    rotated = (ref + 10) % 360
    d = property_drift(ref, rotated, circular=True)
    assert d["shift"] == pytest.approx(10.0, abs=1e-6)
    assert d["wasserstein_sd"] < 5  # not the ~100 SD a linear comparison of 355 vs 5 gives
    assert d["ref_mean"] == pytest.approx(355, abs=1)
    with_nan = property_drift(np.r_[ref, np.nan], rotated, circular=True)
    assert with_nan["n_ref"] == 300


def test_class_matched_sample_equalises_shared_classes():
    ref = np.array([0] * 50 + [1] * 50 + [2] * 5)
    shifted = np.array([0] * 10 + [1] * 80)
    r, s = class_matched_sample(ref, shifted, 1000, rng=np.random.default_rng(0))
    assert np.bincount(ref[r]).tolist() == [10, 50] and np.bincount(shifted[s]).tolist() == [10, 50]
    r, s = class_matched_sample(ref, shifted, 30, rng=np.random.default_rng(0))
    assert np.bincount(ref[r]).tolist() == [5, 25] == np.bincount(shifted[s]).tolist()


def test_a_changed_class_mix_alone_is_not_embedding_drift(tmp_path):
    """Same class-conditional embeddings, priors 50/50 -> 15/85: drift only without matching."""
    rng = np.random.default_rng(0)

    def view(name, role, labels):
        emb = rng.normal(size=(len(labels), 4)) + 3.0 * labels[:, None]
        return make_view(name, role, labels, logits_for(None, labels, 3), class_names=CLASSES,
                         embeddings=emb)

    views = [view("heldout", "heldout", np.repeat([0, 1], 100)),
             view("site_b", "shifted", np.repeat([0, 1], [30, 170]))]
    matched = ShiftCheck().run(make_context(views, tmp_path=tmp_path))
    plain = ShiftCheck().run(make_context(views, tmp_path=tmp_path,
                                          overrides=["checks.shift.match_classes=false"]))
    assert matched.metrics["datasets"]["site_b"]["embedding"]["p_value"] > 0.05
    assert plain.metrics["datasets"]["site_b"]["embedding"]["p_value"] < 0.01


# --- accuracy decomposition -------------------------------------------------------------------

def _labels_correct(counts_and_hits):
    labels, correct = [], []
    for cls, (n, hits) in enumerate(counts_and_hits):
        labels += [cls] * n
        correct += [True] * hits + [False] * (n - hits)
    return np.array(labels), np.array(correct)


def test_identical_per_class_accuracy_with_changed_priors_is_all_prior_shift():
    ref_labels, ref_correct = _labels_correct([(50, 45), (50, 25)])   # 90% and 50%, acc 0.70
    sh_labels, sh_correct = _labels_correct([(20, 18), (80, 40)])     # same, acc 0.58
    dec = prior_shift_decomposition(ref_labels, ref_correct, sh_labels, sh_correct, n_classes=2)
    assert dec["drop"] == pytest.approx(0.12)
    assert dec["prior_part"] == pytest.approx(0.12)
    assert dec["accuracy_part"] == pytest.approx(0.0)
    assert dec["prior_share"] == pytest.approx(1.0)


def test_same_priors_changed_accuracy_is_all_accuracy_part():
    ref_labels, ref_correct = _labels_correct([(50, 45), (50, 25)])
    sh_labels, sh_correct = _labels_correct([(50, 45), (50, 10)])  # class 1: 50% -> 20%
    dec = prior_shift_decomposition(ref_labels, ref_correct, sh_labels, sh_correct, n_classes=2)
    assert dec["prior_part"] == pytest.approx(0.0)
    assert dec["accuracy_part"] == pytest.approx(0.15)
    assert dec["per_class"]["accuracy_part"] == pytest.approx([0.0, 0.15])


def test_classes_absent_from_one_set_keep_the_parts_summing_to_the_drop():
    ref_labels, ref_correct = _labels_correct([(40, 36), (60, 30), (0, 0)])  # acc 0.66
    sh_labels, sh_correct = _labels_correct([(0, 0), (50, 25), (50, 10)])
    dec = prior_shift_decomposition(ref_labels, ref_correct, sh_labels, sh_correct, n_classes=3)
    assert dec["prior_part"] + dec["accuracy_part"] == pytest.approx(dec["drop"])
    assert dec["imputed_classes"] == [2]
    # class 2 is judged against the reference's overall accuracy 0.66: 0.5 * (0.66 - 0.2)
    assert dec["per_class"]["accuracy_part"][2] == pytest.approx(0.23)


def test_drop_ci_brackets_the_drop_and_absorbing_shares():
    rng = np.random.default_rng(0)
    ci = accuracy_drop_ci(rng.random(300) < 0.9, rng.random(300) < 0.6, n_boot=500,
                          rng=np.random.default_rng(1))
    assert ci["low"] < ci["value"] < ci["high"] and ci["low"] > 0.15
    absorb = absorbing_classes(np.array([0, 1, 2, 0]), np.array([2, 2, 2, 0]),
                               np.array([0, 1, 2, 1]), n_classes=3)
    assert absorb["n_errors"] == 3
    assert absorb["error_share"] == pytest.approx([1 / 3, 0, 2 / 3])
    assert absorb["predicted_share_change"] == pytest.approx([-0.25, -0.25, 0.5])


# --- the check --------------------------------------------------------------------------------

def _views(n=120, seed=0):
    rng = np.random.default_rng(seed)
    ref_labels = np.arange(n) % 3
    ref_pred = np.where(rng.random(n) < 0.9, ref_labels, (ref_labels + 1) % 3)
    sh_labels = np.arange(n) % 3
    sh_pred = np.where(rng.random(n) < 0.5, sh_labels, 2)  # errors go to class c
    ref_props = {"brightness": rng.normal(0.6, 0.05, n), "sharpness": rng.normal(1.0, 0.1, n),
                 "hue": (350 + rng.normal(0, 5, n)) % 360}
    sh_props = {"brightness": rng.normal(0.45, 0.05, n), "sharpness": rng.normal(0.7, 0.1, n),
                "hue": (350 + rng.normal(0, 5, n)) % 360}
    ref = make_view("heldout", "heldout", ref_labels, logits_for(ref_labels, ref_pred, 3, rng=rng),
                    class_names=CLASSES, embeddings=rng.normal(size=(n, 8)), properties=ref_props)
    shifted = make_view("site_b", "shifted", sh_labels, logits_for(sh_labels, sh_pred, 3, rng=rng),
                        class_names=CLASSES, embeddings=rng.normal(size=(n, 8)) + 1.0,
                        properties=sh_props)
    return ref, shifted


def test_check_finds_planted_drift_and_fails_on_a_large_drop(tmp_path):
    ctx = make_context(_views(), tmp_path=tmp_path, overrides=["checks.shift.n_perm=100"])
    result = ShiftCheck().run(ctx)
    assert result.status == Status.FAIL
    m = result.metrics["datasets"]["site_b"]
    assert m["drop"]["value"] > 0.15 and m["drop"]["low"] > 0
    assert m["embedding"]["domain_auc"] > 0.95 and m["embedding"]["p_value"] < 0.01
    assert m["properties"]["brightness"]["shift_sd"] < -2
    kinds = {f.kind: f for f in result.findings}
    assert "darker (brightness" in kinds["property_drift"].text
    assert "blurrier (sharpness" in kinds["property_drift"].text
    assert "hue" not in kinds["property_drift"].text
    assert "stain normalisation" in kinds["property_drift"].action
    assert "AUC" in kinds["embedding_drift"].text
    assert "predicted as c" in kinds["absorbing_class"].text
    assert kinds["class_accuracy"].action.startswith("collect labelled images of")
    json.dumps(result.to_dict(), allow_nan=False)


def test_check_is_deterministic(tmp_path):
    first = ShiftCheck().run(make_context(_views(), tmp_path=tmp_path)).to_dict()
    second = ShiftCheck().run(make_context(_views(), tmp_path=tmp_path)).to_dict()
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_single_dataset_is_skipped(tmp_path):
    ref, _ = _views()
    result = ShiftCheck().run(make_context([ref], tmp_path=tmp_path))
    assert result.status == Status.SKIP
    json.dumps(result.to_dict(), allow_nan=False)


def test_tiny_sets_with_absent_classes_and_no_properties(tmp_path):
    ref = make_view("heldout", "heldout", [0, 1, 1], logits_for(None, [0, 1, 0], 3),
                    class_names=CLASSES)
    shifted = make_view("tiny", "shifted", [2], logits_for(None, [0], 3), class_names=CLASSES,
                        groups=["g1"])
    result = ShiftCheck().run(make_context([ref, shifted], tmp_path=tmp_path))
    m = result.metrics["datasets"]["tiny"]
    assert m["decomposition"]["imputed_classes"] == ["c"]
    assert m["embedding"]["p_value"] is None or not np.isfinite(m["embedding"]["p_value"])
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["metrics"]["datasets"]["tiny"]["confidence"]["shifted"]["correct"] is None
