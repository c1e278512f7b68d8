"""Errors check: quantile and circular bins, planted weak slices (and none in a null),
confusions, confident errors, recall drops, edge cases and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import logits_for, make_context, make_view

from audit.checks.class_errors import (
    ErrorsCheck,
    assign_bins,
    confident_errors,
    confused_pairs,
    per_class_errors,
    property_bins,
    recall_drop,
    slice_table,
)
from audit.results import Status

ABC = ("a", "b", "c")


def _view(name, role, labels, preds, classes=ABC, **kw):
    return make_view(name, role, labels, logits_for(labels, preds, len(classes)),
                     class_names=classes, **kw)


def _run(views, tmp_path, *overrides, seed=0):
    ctx = make_context(views, tmp_path=tmp_path, seed=seed, overrides=list(overrides))
    result = ErrorsCheck().run(ctx)
    return result, json.loads(json.dumps(result.to_dict(), allow_nan=False))


def _properties(n, rng):
    return {"brightness": rng.uniform(0.5, 0.9, n), "contrast": rng.uniform(0.05, 0.2, n),
            "saturation": rng.uniform(0.1, 0.4, n), "hue": rng.uniform(200, 300, n),
            "sharpness": rng.uniform(0.0, 1.0, n), "cell_size": rng.uniform(0.1, 0.3, n)}


def test_quantile_bins_and_assignment():
    bins = property_bins("sharpness", np.arange(100.0), n_bins=4)
    np.testing.assert_allclose(bins.inner_edges, [24.75, 49.5, 74.25])
    got = assign_bins(bins, np.array([-5.0, 24.0, 25.0, 60.0, 99.0, 500.0, np.nan]))
    assert got.tolist() == [0, 0, 1, 2, 3, 3, -1]  # outside values fall in the end bins
    assert bins.edge(0) is None and bins.edge(4) is None and bins.edge(2) == pytest.approx(49.5)


def test_tied_values_merge_bins():
    bins = property_bins("cell_size", np.r_[np.zeros(90), np.arange(1.0, 11.0)], n_bins=4)
    assert bins.n_bins == 2  # three quartile edges at 0 collapse into one


def test_circular_hue_bins_do_not_split_at_zero():
    # Reference hues cluster around 0/360: 330..390 (mod 360); the empty arc is 30..330.
    ref = np.arange(330.0, 390.0) % 360.0
    bins = property_bins("hue", ref, n_bins=4, circular=True)
    assert bins.offset == pytest.approx(330.0)
    index = assign_bins(bins, np.array([331.0, 350.0, 359.0, 0.0, 5.0, 20.0, 29.0]))
    assert index.tolist() == sorted(index.tolist())  # monotone through 0
    assert index[0] == 0 and index[-1] == 3
    # Edges in degrees: a quarter of the 60 degree cluster each.
    np.testing.assert_allclose([bins.edge(k) for k in (1, 2, 3)], [344.75, 359.5, 14.25])
    assert bins.edge(0) == bins.edge(4) == pytest.approx(330.0)


def test_planted_weak_slice_is_flagged_and_null_is_not():
    rng = np.random.default_rng(0)
    n = 400
    props = _properties(n, rng)
    bins = [property_bins(k, v, n_bins=4, circular=k == "hue") for k, v in props.items()]
    blurred = props["sharpness"] < np.quantile(props["sharpness"], 0.25)
    correct = rng.random(n) > np.where(blurred, 0.5, 0.1)
    rows = slice_table(bins, props, correct, alpha=0.05, margin=0.05, min_size=10)
    weak = [r for r in rows if r["weak"]]
    assert [(r["property"], r["bin"]) for r in weak] == [("sharpness", 0)]
    assert weak[0]["error_rate"] > 0.4 and weak[0]["q_value"] < 1e-6
    overall = 1 - correct.mean()
    assert weak[0]["impact"] == pytest.approx((weak[0]["error_rate"] - overall) * weak[0]["share"])
    assert len(rows) == 6 * 4
    null = rng.random(n) > 0.2
    assert not any(r["weak"] for r in slice_table(bins, props, null, alpha=0.05, margin=0.05,
                                                  min_size=10))


def test_min_size_and_margin_block_flags():
    props = {"sharpness": np.arange(40.0)}
    bins = [property_bins("sharpness", props["sharpness"], n_bins=4)]
    correct = np.ones(40, bool)
    correct[:10] = False  # bottom quartile all wrong
    strict = slice_table(bins, props, correct, alpha=0.05, margin=0.05, min_size=11)
    assert not any(r["weak"] for r in strict)
    assert slice_table(bins, props, correct, alpha=0.05, margin=0.05, min_size=10)[0]["weak"]
    assert not slice_table(bins, props, correct, alpha=0.05, margin=0.8, min_size=10)[0]["weak"]


def test_confused_pairs_hand_computed():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 2, 1, 0, 2])
    pairs = confused_pairs(labels, preds, ABC, top=2)
    assert pairs[0] == {"true": "a", "predicted": "b", "count": 2, "share_of_class": 0.5}
    assert pairs[1]["count"] == 1 and len(pairs) == 2
    assert confused_pairs(labels, labels, ABC, top=5) == []


def test_confident_errors_sorted_with_relative_paths():
    labels = np.array([0, 0, 1, 1])
    logits = np.array([[0.0, 1.0], [0.0, 5.0], [3.0, 0.0], [0.0, 2.0]])  # items 0, 1, 2 wrong
    view = make_view("h", "heldout", labels, logits, class_names=("a", "b"))
    out = confident_errors(view, ("a", "b"), top=2)
    assert [e["path"] for e in out] == ["h/1.png", "h/2.png"]
    assert out[0]["true"] == "a" and out[0]["predicted"] == "b"
    assert out[0]["probability"] == pytest.approx(1 / (1 + np.exp(-5)))


def test_per_class_errors_absent_class():
    out = per_class_errors(np.array([0, 0, 1]), np.array([True, False, True]), ABC)
    ci = out["a"].pop("error_rate_ci")
    assert out["a"] == {"n": 2, "errors": 1, "error_rate": 0.5}
    assert ci["value"] == 0.5 and ci["n"] == 2 and ci["low"] < 0.05 and ci["high"] > 0.95
    assert out["c"].pop("error_rate_ci")["n"] == 0
    assert out["c"] == {"n": 0, "errors": 0, "error_rate": None}


def test_recall_drop_names_class_and_destination():
    ref = _view("h", "heldout", [0] * 10 + [1] * 10, [0] * 10 + [1] * 9 + [0])
    shifted = _view("s", "shifted", [0] * 10 + [1] * 10, [0] * 10 + [1] * 3 + [2] * 5 + [0] * 2)
    drop = recall_drop(ref, shifted, 3)
    assert drop["class"] == 1 and drop["to"] == 2
    assert drop["reference_recall"] == pytest.approx(0.9) and drop["recall"] == pytest.approx(0.3)
    assert drop["cost"] == pytest.approx(0.6 * 0.5) and drop["to_share"] == pytest.approx(0.5)
    assert recall_drop(ref, ref, 3) is None


def test_check_end_to_end_with_shift(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    labels = rng.integers(0, 3, n)
    props = _properties(n, rng)
    dark = props["brightness"] < np.quantile(props["brightness"], 0.25)
    preds = np.where(rng.random(n) < np.where(dark, 0.6, 0.05), (labels + 1) % 3, labels)
    ref = _view("heldout", "heldout", labels, preds, properties=props)
    s_labels = rng.integers(0, 3, 200)
    s_preds = np.where((s_labels == 2) & (rng.random(200) < 0.7), 0, s_labels)
    shifted = _view("site_b", "shifted", s_labels, s_preds, properties=_properties(200, rng))
    result, data = _run([ref, shifted], tmp_path)
    assert result.status == Status.WARN
    kinds = {(f.kind, f.dataset) for f in result.findings}
    assert ("weak_slice", "heldout") in kinds and ("recall_drop", "site_b") in kinds
    weak = next(f for f in result.findings if f.kind == "weak_slice")
    assert "low brightness (bottom quartile)" in weak.text and weak.impact > 0
    drop = next(f for f in result.findings if f.kind == "recall_drop")
    assert drop.text.startswith("c recall falls") and "mostly to a" in drop.text
    assert drop.gap_share is None and 0 < drop.evidence["share_of_gap"] <= 1
    metrics = data["metrics"]["datasets"]
    assert set(metrics) == {"heldout", "site_b"}
    assert len(metrics["heldout"]["confident_errors"]) == 12
    assert metrics["site_b"]["confused_pairs"][0]["true"] == "c"
    assert len(data["metrics"]["bin_edges"]["hue"]) == 3
    again, data_again = _run([ref, shifted], tmp_path)
    assert data_again["metrics"] == data["metrics"]


def test_one_tiny_set_with_absent_class_and_grey_hue(tmp_path):
    props = {"sharpness": np.array([0.1, 0.2, 0.3]), "hue": np.array([np.nan, np.nan, 10.0])}
    view = _view("heldout", "heldout", [0, 0, 1], [0, 1, 1], properties=props)
    result, data = _run([view], tmp_path)
    assert result.status == Status.PASS
    per_class = data["metrics"]["datasets"]["heldout"]["per_class"]
    assert per_class["c"]["error_rate"] is None
    assert result.findings == []


def test_no_properties_and_perfect_model(tmp_path):
    view = _view("heldout", "heldout", [0, 1, 2], [0, 1, 2])
    result, data = _run([view], tmp_path)
    assert result.status == Status.PASS
    assert data["metrics"]["datasets"]["heldout"]["slices"] == []
    assert data["metrics"]["datasets"]["heldout"]["confident_errors"] == []


def test_config_overrides_bins(tmp_path):
    rng = np.random.default_rng(0)
    view = _view("heldout", "heldout", rng.integers(0, 3, 50), rng.integers(0, 3, 50),
                 properties=_properties(50, rng))
    _, data = _run([view], tmp_path, "checks.errors.n_bins=2")
    assert {s["label"] for s in data["metrics"]["datasets"]["heldout"]["slices"]} == {
        "bottom 1/2 quantile bin", "top 1/2 quantile bin"}
