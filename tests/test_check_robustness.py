"""Robustness check: pure helpers on hand-made arrays, and the check end to end with a tiny
random-weight MobileNetV2 on a few 32x32 PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_context, make_view
from PIL import Image

from audit.checks.robustness import (
    RobustnessCheck,
    confusion_distance,
    nearest_corruptions,
    relative_corruption_error,
    row_confusion,
    stratified_subsample,
)
from audit.corruptions import CORRUPTIONS
from audit.data import read_images
from audit.errors import UsageError
from audit.results import Status

CLASSES = ("a", "b")
NAMES = list(CORRUPTIONS)[:3]


# --- pure helpers -----------------------------------------------------------------------------

def test_stratified_subsample_keeps_proportions_and_small_classes():
    labels = np.array([0] * 70 + [1] * 28 + [2] * 2)
    idx = stratified_subsample(labels, 10, rng=np.random.default_rng(0))
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [7, 2, 1]  # the 2-image class keeps one
    assert stratified_subsample(labels[:5], 10, rng=np.random.default_rng(0)).tolist() == \
        [0, 1, 2, 3, 4]


def test_confusion_distance_on_a_hand_made_case():
    a = row_confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert a[0].tolist() == [0.5, 0.5, 0.0] and np.isnan(a[2]).all()
    b = row_confusion(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), 3)
    # row 0: |0.5-1|+|0.5-0| = 1.0; row 1: |0-0.5|+|1-0.5| = 1.0; class 2 absent from a
    assert confusion_distance(a, b) == pytest.approx(1.0)
    assert confusion_distance(a, a) == 0.0
    empty = np.full((3, 3), np.nan)
    assert np.isnan(confusion_distance(a, empty))


def test_nearest_corruptions_finds_the_planted_pattern():
    labels = np.repeat(np.arange(3), 10)
    target = row_confusion(labels, np.where(labels == 1, 2, labels), 3)  # class 1 -> 2
    candidates = {
        ("blur", 3): row_confusion(labels, np.where(labels == 1, 2, labels), 3),
        ("noise", 1): row_confusion(labels, labels, 3),
        ("noise", 5): row_confusion(labels, np.zeros_like(labels), 3),
    }
    top = nearest_corruptions(target, candidates, top=2)
    assert [(t["corruption"], t["severity"]) for t in top] == [("blur", 3), ("noise", 1)]
    assert top[0]["distance"] == 0.0 and top[1]["distance"] == pytest.approx(2 / 3)


def test_relative_corruption_error():
    accuracy = np.array([[0.9, 0.7], [1.0, 0.9]])
    assert relative_corruption_error(0.9, accuracy) == pytest.approx([0.1, -0.05])


# --- the check with a real (tiny) model -------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from audit.inference import Predictor
    from model.build import build_classifier

    root = tmp_path_factory.mktemp("robustness")
    rng = np.random.default_rng(0)
    labels = np.arange(16) % 2
    paths = []
    for i, label in enumerate(labels):
        colour = np.array([200, 80, 120]) if label == 0 else np.array([90, 90, 200])
        pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
        path = root / f"{CLASSES[label]}_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    model = build_classifier(2, input_size=32, alpha=0.35, weights=None)
    predictor = Predictor(model, batch_size=16)
    logits = predictor.logits(read_images(paths, 32, resize="crop"))
    ref = make_view("heldout", "heldout", labels, logits, class_names=CLASSES, paths=paths)
    shifted = make_view("site_b", "shifted", labels[:8], logits[:8] + [[2.0, 0.0]],
                        class_names=CLASSES, paths=paths[:8])
    return ref, shifted, predictor


def _run(setup, tmp_path, *extra):
    ref, shifted, predictor = setup
    names = "[" + ", ".join(f'"{n}"' for n in NAMES) + "]"
    overrides = [f"checks.robustness.corruptions={names}", "checks.robustness.severities=[1, 5]",
                 "checks.robustness.batch_size=6", *extra]
    ctx = make_context([ref, shifted], tmp_path=tmp_path, overrides=overrides,
                       predictor=predictor, image_size=32)
    return RobustnessCheck().run(ctx), ctx


def test_check_end_to_end(setup, tmp_path):
    result, ctx = _run(setup, tmp_path)
    m = result.metrics
    assert m["n_images"] == 16 and m["n_forward_passes"] == 16 * 3 * 2
    assert set(m["corruptions"]) == set(NAMES)
    for entry in m["corruptions"].values():
        assert set(entry["severities"]) == {"1", "5"}
        accs = [s["accuracy"] for s in entry["severities"].values()]
        assert entry["rce"] == pytest.approx(m["clean_accuracy"] - np.mean(accs))
    near = m["datasets"]["site_b"]
    assert 1 <= len(near["top"]) <= 3
    assert [t["distance"] for t in near["top"]] == sorted(t["distance"] for t in near["top"])
    with np.load(tmp_path / result.artifacts["predictions"]) as saved:
        assert saved["probs"].shape == (3, 2, 16, 2)
        assert saved["corruptions"].tolist() == NAMES
        assert np.allclose(saved["probs"].sum(-1), 1.0, atol=1e-4)
    assert result.status in (Status.PASS, Status.WARN, Status.FAIL)
    json.dumps(result.to_dict(), allow_nan=False)


def test_check_is_deterministic_and_subsamples(setup, tmp_path):
    first, _ = _run(setup, tmp_path / "a", "checks.robustness.max_images=8")
    second, _ = _run(setup, tmp_path / "b", "checks.robustness.max_images=8")
    assert first.metrics["n_forward_passes"] == 8 * 3 * 2
    a, b = first.to_dict(), second.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_status_follows_thresholds():
    # Thresholds are fractions in [0, 1], so the logic is driven with planted accuracies.
    opts = RobustnessCheck.options_type()(severity_for_status=2, max_drop_warn=0.10,
                                          max_drop_fail=0.30)
    names, severities = ["blur", "noise"], [1, 2, 5]
    for planted, expected in ((0.05, Status.PASS), (0.20, Status.WARN), (0.40, Status.FAIL)):
        accuracy = np.full((2, 3), 0.9)
        accuracy[1, 1] = 0.9 - planted                    # noise at severity 2: the worst mild one
        accuracy[0, 2] = 0.0                               # severity 5 is beyond the status range
        metrics = {"mean_rce": 0.1}
        status, text = RobustnessCheck._status(opts, metrics, names, severities, accuracy, 0.9)
        assert status == expected
        assert metrics["status_drop"] == {"corruption": "noise", "severity": 2,
                                          "drop": pytest.approx(planted)}


def test_without_model_or_with_unknown_corruption(setup, tmp_path):
    ref, shifted, predictor = setup
    result = RobustnessCheck().run(make_context([ref], tmp_path=tmp_path))
    assert result.status == Status.SKIP
    # Bad options are refused when the config is read, before any image is touched.
    with pytest.raises(UsageError, match="no_such_thing"):
        make_context([ref], tmp_path=tmp_path, predictor=predictor,
                     overrides=['checks.robustness.corruptions=["no_such_thing"]'])
    with pytest.raises(UsageError, match="severities"):
        make_context([ref], tmp_path=tmp_path, predictor=predictor,
                     overrides=["checks.robustness.severities=[0, 7]"])
