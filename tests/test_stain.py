"""Stain and colour normalisation: Lab conversion, Reinhard transfer and Macenko stain
normalisation on images built from known stain vectors."""

from __future__ import annotations

import numpy as np
import pytest

from audit.gap_factors.stain import (
    MacenkoStains,
    ReinhardStats,
    lab_to_rgb,
    macenko_normalize,
    reinhard_transfer,
    rgb_to_lab,
)

# Haematoxylin-like (absorbs red most) and eosin-like unit OD vectors, and a second pair.
STAINS_A = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
STAINS_B = np.array([[0.80, 0.55, 0.25], [0.15, 0.85, 0.50]])
STAINS_A /= np.linalg.norm(STAINS_A, axis=1, keepdims=True)
STAINS_B /= np.linalg.norm(STAINS_B, axis=1, keepdims=True)


def stained_images(stains: np.ndarray, *, n: int = 6, size: int = 24, seed: int = 0,
                   amount: float = 1.0) -> np.ndarray:
    """Images mixing two stains with known amounts: background, nucleus, cytoplasm, mixtures."""
    rng = np.random.default_rng(seed)
    c = np.zeros((n, size, size, 2))
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    c[..., 0] = np.where(r < size / 6, 1.4, 0.0)
    c[..., 1] = np.where((r >= size / 6) & (r < size / 3), 0.9, 0.08)
    c += rng.uniform(0, 0.4, c.shape) * (r < size / 3)[None, ..., None]
    od = amount * c @ stains
    return np.clip(np.rint(256 * np.exp(-od) - 1), 0, 255).astype(np.uint8)


def test_lab_matches_skimage_and_round_trips():
    from skimage.color import rgb2lab

    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert np.abs(rgb_to_lab(x) - rgb2lab(x)).max() < 0.02
    assert np.array_equal(lab_to_rgb(rgb_to_lab(x)), x)


def test_reinhard_moves_set_statistics_to_the_target():
    source, target = stained_images(STAINS_A), stained_images(STAINS_B, seed=1, amount=0.6)
    s, t = ReinhardStats.fit(source), ReinhardStats.fit(target)
    moved = ReinhardStats.fit(reinhard_transfer(source, s, t))
    assert np.abs(moved.mean - t.mean).max() < 1.0
    assert np.abs(moved.std / t.std - 1).max() < 0.05
    same = reinhard_transfer(source, s, s)
    assert np.abs(same.astype(int) - source).max() <= 1
    per_image = reinhard_transfer(source, None, t)  # each image normalised on its own
    for image in per_image:
        assert np.abs(rgb_to_lab(image).reshape(-1, 3).mean(0) - t.mean).max() < 1.5


def test_fit_streams_batches_like_one_array():
    images = stained_images(STAINS_A, n=4)
    whole = ReinhardStats.fit(images, pixels_per_image=100, seed=3)
    streamed = ReinhardStats.fit(iter([images[:1], images[1:]]), pixels_per_image=100, seed=3)
    assert np.allclose(whole.mean, streamed.mean) and np.allclose(whole.std, streamed.std)
    with pytest.raises(ValueError, match="uint8"):
        ReinhardStats.fit(images.astype(np.float32))


def test_macenko_recovers_known_stain_vectors_in_order():
    stains = MacenkoStains.fit(stained_images(STAINS_A, n=8))
    assert not stains.fallback and stains.n_pixels > 100
    cosines = np.sum(stains.vectors * STAINS_A, axis=1)
    assert cosines.min() > 0.98  # first row haematoxylin-like, second eosin-like
    fitted_b = MacenkoStains.fit(stained_images(STAINS_B, n=8))
    assert np.sum(fitted_b.vectors * STAINS_B, axis=1).min() > 0.98


def test_macenko_maps_one_stain_pair_onto_another():
    a, b = stained_images(STAINS_A, seed=5), stained_images(STAINS_B, seed=5)
    fit_a, fit_b = MacenkoStains.fit(a), MacenkoStains.fit(b)
    mapped = macenko_normalize(a, fit_a, fit_b)
    before = np.abs(a.astype(int) - b).mean()
    after = np.abs(mapped.astype(int) - b).mean()
    assert after < 0.25 * before and after < 4
    assert mapped.dtype == np.uint8 and mapped.shape == a.shape
    assert np.abs(macenko_normalize(a, fit_a, fit_a).astype(int) - a).max() <= 1


def test_macenko_is_robust_to_images_with_few_stained_pixels():
    blank = np.full((2, 24, 24, 3), 245, np.uint8)
    stains = MacenkoStains.fit(blank)
    assert stains.fallback and np.isfinite(stains.vectors).all()
    one_colour = np.full((2, 24, 24, 3), (120, 60, 140), np.uint8)
    assert MacenkoStains.fit(one_colour).fallback  # a single stain colour: nothing to separate
    target = MacenkoStains.fit(stained_images(STAINS_B))
    assert np.array_equal(macenko_normalize(blank, None, target), blank)  # per image: unchanged
    mixed = np.concatenate([blank[:1], stained_images(STAINS_A, n=1, size=24, amount=3.0)])
    out = macenko_normalize(mixed, None, target)
    assert np.array_equal(out[0], blank[0]) and not np.array_equal(out[1], mixed[1])
    assert np.isfinite(out.astype(float)).all()
