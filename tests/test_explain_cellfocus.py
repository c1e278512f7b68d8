"""Cell focus on synthetic cells whose mask is known; selection of the images to explain."""

from __future__ import annotations

import numpy as np
import pytest

from audit.explain.cellfocus import aggregate_focus, focus_scores
from audit.explain.selection import select_images
from audit.synthetic import render_cell


@pytest.fixture
def cells():
    pairs = [render_cell(cls, size=48, rng=np.random.default_rng(i))
             for i, cls in enumerate(["lymphocyte", "monocyte", "neutrophil"])]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_map_equal_to_the_mask_puts_all_mass_on_the_cell(cells):
    _, masks = cells
    scores = focus_scores(masks.astype(np.float32), masks)
    np.testing.assert_allclose(scores["mass_share"], 1.0)
    np.testing.assert_allclose(scores["area_share"], masks.reshape(3, -1).mean(axis=1))
    np.testing.assert_allclose(scores["focus_ratio"], 1.0 / scores["area_share"])


def test_background_map_uniform_map_and_negative_values(cells):
    _, masks = cells
    background = focus_scores((~masks).astype(np.float32), masks)
    np.testing.assert_allclose(background["mass_share"], 0.0)
    uniform = focus_scores(np.ones(masks.shape, np.float32), masks)
    np.testing.assert_allclose(uniform["focus_ratio"], 1.0)
    # negative attribution (evidence against) is not counted as looking at the cell
    signed = np.where(masks, -1.0, 0.5).astype(np.float32)
    np.testing.assert_allclose(focus_scores(signed, masks)["mass_share"], 0.0)
    empty = focus_scores(np.zeros(masks.shape, np.float32), masks)
    assert np.isnan(empty["mass_share"]).all() and np.isnan(empty["focus_ratio"]).all()


def test_aggregates_per_class_skip_absent_classes_and_undefined_images(cells):
    _, masks = cells
    maps = masks.astype(np.float32)
    maps[2] = 0.0  # undefined share
    scores = focus_scores(maps, masks)
    summary = aggregate_focus(scores, np.array([0, 0, 2]), ("a", "b", "c"))
    assert summary["n"] == 2 and summary["mass_share"] == pytest.approx(1.0)
    assert summary["focus_ratio"] == pytest.approx(1.0 / masks[:2].mean())
    assert set(summary["per_class"]) == {"a", "c"}
    assert summary["per_class"]["c"] == {"mass_share": None, "area_share": None,
                                         "focus_ratio": None, "n": 0}


def _probs(predictions: np.ndarray, confidence: np.ndarray, n_classes: int) -> np.ndarray:
    probs = np.full((len(predictions), n_classes), 0.0)
    probs[np.arange(len(predictions)), predictions] = confidence
    rest = (1 - confidence) / (n_classes - 1)
    return probs + (probs == 0) * rest[:, None]


def test_selection_counts_reasons_and_most_confident_errors():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 0, 2, 2])
    confidence = np.array([0.9, 0.6, 0.95, 0.8, 0.7, 0.99, 0.5, 0.9])
    probs = _probs(predictions, confidence, 4)  # class 3 absent
    selection = select_images(labels, probs, correct_per_class=1, errors_per_class=1,
                              most_confident_errors=2, rng=np.random.default_rng(0))
    reasons = dict(zip(selection.indices.tolist(), selection.reasons, strict=True))
    assert len(set(selection.indices.tolist())) == len(selection)
    assert [r for r in selection.reasons if r == "correct"] == ["correct"] * 3
    assert sum(r == "error" for r in selection.reasons) == 2  # class 2 has no error
    errors = {i for i, r in reasons.items() if r == "error"}
    confident = [i for i, r in reasons.items() if r == "confident_error"]
    # most confident errors first, skipping any already picked as a class error
    ranked = [i for i in (5, 2, 4, 1, 6) if i not in errors]
    assert confident == ranked[:2]
    again = select_images(labels, probs, correct_per_class=1, errors_per_class=1,
                          most_confident_errors=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(selection.indices, again.indices)


def test_selection_of_a_perfect_or_empty_set():
    probs = _probs(np.array([0, 1]), np.array([0.9, 0.9]), 2)
    perfect = select_images(np.array([0, 1]), probs, correct_per_class=2, errors_per_class=1,
                            most_confident_errors=3, rng=np.random.default_rng(0))
    assert perfect.reasons == ("correct", "correct")
    empty = select_images(np.zeros(0, int), np.zeros((0, 2)), correct_per_class=1,
                          errors_per_class=1, most_confident_errors=1,
                          rng=np.random.default_rng(0))
    assert len(empty) == 0
