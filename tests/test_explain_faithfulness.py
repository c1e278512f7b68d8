"""Deletion/insertion on a constructed case whose right ranking is known."""

from __future__ import annotations

import numpy as np
import pytest

from audit.explain.faithfulness import (
    curve_auc,
    deletion_auc,
    gain_over_random,
    insertion_auc,
    make_baseline,
    perturbation_curves,
    pixel_ranks,
    random_maps,
)


def region_predict(images: np.ndarray) -> np.ndarray:
    """P(class 1) = mean brightness of the central 8x8 block / 255."""
    images = np.asarray(images, dtype=np.float64)
    score = images[:, 12:20, 12:20].mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1.0 - score, score], axis=1)


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (4, 32, 32, 3)).astype(np.uint8)
    images[:, 12:20, 12:20] = 240  # what the model reads
    images[:, :8, :8] = 250        # a brighter distractor it ignores
    right = np.zeros((4, 32, 32), np.float32)
    right[:, 12:20, 12:20] = 1.0
    wrong = np.zeros((4, 32, 32), np.float32)
    wrong[:, :8, :8] = 1.0
    baseline = make_baseline(images, kind="mean")
    return images, right, wrong, baseline


def test_map_on_the_region_beats_a_map_elsewhere_and_random_maps(case):
    images, right, wrong, baseline = case
    targets = np.ones(4, int)
    kw = {"steps": 16, "baseline": baseline}
    scores = {}
    for name, maps in {"right": right, "wrong": wrong,
                       "random": random_maps(4, 32, 32, rng=np.random.default_rng(1))}.items():
        scores[name] = (deletion_auc(images, maps, targets, region_predict,
                                     rng=np.random.default_rng(2), **kw),
                        insertion_auc(images, maps, targets, region_predict,
                                      rng=np.random.default_rng(2), **kw))
    right_del, right_ins = scores["right"]
    for other in ("wrong", "random"):
        assert (right_del < scores[other][0]).all()
        assert (right_ins > scores[other][1]).all()
    gain = gain_over_random(right_del, right_ins, *scores["random"],
                            rng=np.random.default_rng(3), n_boot=50)
    assert gain["low"] > 0.3 and gain["low"] <= gain["value"] <= gain["high"]
    null = gain_over_random(*scores["random"], *scores["random"], rng=np.random.default_rng(3),
                            n_boot=50)
    assert null["value"] == 0.0


def test_curves_start_at_the_image_and_end_at_the_baseline(case):
    images, right, _, baseline = case
    targets = np.ones(4, int)
    deletion = perturbation_curves(images, right, targets, region_predict, mode="deletion",
                                   steps=8, baseline=baseline, rng=np.random.default_rng(0),
                                   max_batch=10)  # several chunks
    insertion = perturbation_curves(images, right, targets, region_predict, mode="insertion",
                                    steps=8, baseline=baseline, rng=np.random.default_rng(0))
    np.testing.assert_allclose(deletion[:, 0], region_predict(images)[:, 1])
    np.testing.assert_allclose(deletion[:, -1], region_predict(baseline)[:, 1])
    np.testing.assert_allclose(insertion[:, 0], deletion[:, -1])
    np.testing.assert_allclose(insertion[:, -1], deletion[:, 0])
    # the region is 64 of 1024 pixels: deleted entirely in the first 1/8 step
    np.testing.assert_allclose(deletion[:, 1], deletion[:, -1], atol=1e-9)


def test_auc_is_the_trapezoid_over_unit_interval():
    np.testing.assert_allclose(curve_auc(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])),
                               [1.0, 0.25])


def test_ties_are_broken_at_random_not_in_row_order():
    ranks = pixel_ranks(np.zeros((1, 16, 16)), rng=np.random.default_rng(0))
    first_half = ranks[0] < 128
    assert 0.3 < first_half[:8].mean() < 0.7  # not the top rows first
    assert sorted(ranks.ravel()) == list(range(256))
    again = pixel_ranks(np.zeros((1, 16, 16)), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(ranks, again)


def test_baselines():
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    mean = make_baseline(images, kind="mean")
    np.testing.assert_allclose(mean[:, 3, 5], images.reshape(2, -1, 3).mean(axis=1), atol=0.51)
    blur = make_baseline(images, kind="blur", blur_fraction=0.25)
    assert blur.dtype == np.uint8 and blur.shape == images.shape
    assert blur.astype(float).std() < images.astype(float).std() / 2
    with pytest.raises(ValueError, match="baseline must be one of"):
        make_baseline(images, kind="zeros")


def test_random_maps_are_smooth_seeded_and_sized():
    maps = random_maps(3, 40, 24, rng=np.random.default_rng(5), grid=4)
    assert maps.shape == (3, 40, 24) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, random_maps(3, 40, 24, rng=np.random.default_rng(5),
                                                    grid=4))
    assert np.abs(np.diff(maps, axis=1)).max() < 0.2  # neighbours close: not pixel noise


def test_bad_mode_and_steps_are_refused(case):
    images, right, _, baseline = case
    with pytest.raises(ValueError, match="mode"):
        perturbation_curves(images, right, np.ones(4, int), region_predict, mode="both",
                            steps=4, baseline=baseline, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="steps"):
        perturbation_curves(images, right, np.ones(4, int), region_predict, mode="deletion",
                            steps=0, baseline=baseline, rng=np.random.default_rng(0))
