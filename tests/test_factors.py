"""Factor transforms on synthetic smears with one property changed: each factor moves its own
property toward the target and finds nothing to do on a null site."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from audit.cell_mask import white_cell_mask
from audit.gap_factors import (
    BackgroundFactor,
    ResolutionFactor,
    SetSample,
    apply_factors,
    estimate_jpeg_quality,
    fit_factors,
    native_side,
    sharpness,
    zoom_images,
)
from audit.gap_factors.stain import MacenkoStains, ReinhardStats
from audit.synthetic import REFERENCE_SITE, SiteDomain, generate

N, SIZE = 40, 64


def sample(domain: SiteDomain = REFERENCE_SITE, seed: int = 1) -> SetSample:
    return SetSample.from_images(generate(N, size=SIZE, domain=domain, seed=seed)[0])


@pytest.fixture(scope="module")
def reference() -> SetSample:
    return sample()


def test_zoom_about_the_centre():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[:, 12:20, 12:20] = 255
    side = lambda x: int((x[0, 16, :, 0] > 127).sum())  # noqa: E731
    assert side(zoom_images(image, 2.0)) == 16 and side(zoom_images(image, 0.5)) == 4
    assert np.array_equal(zoom_images(image, 1.0), image)
    framed = np.full((1, 32, 32, 3), 200, np.uint8)
    framed[:, 8:24, 8:24] = 0
    out = zoom_images(framed, 0.5)  # the new border takes the image's border colour
    assert (out[0, :6] == 200).all() and (out[0, 13:19, 13:19] == 0).all()
    mask = zoom_images((image[..., 0] > 0).astype(np.uint8) * 255, 0.5, fill=False)
    assert (mask >= 128).sum() == 16


def test_file_measurements(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    for quality in (30, 75, 95):
        image.save(tmp_path / f"q{quality}.jpg", quality=quality)
        assert abs(estimate_jpeg_quality(str(tmp_path / f"q{quality}.jpg")) - quality) <= 2
    image.save(tmp_path / "a.png")
    assert estimate_jpeg_quality(str(tmp_path / "a.png")) == 100
    assert native_side(str(tmp_path / "a.png")) == 30
    assert native_side(str(tmp_path / "missing.png")) == 0


def test_null_site_fits_identity_for_measured_properties(reference):
    factors = fit_factors(sample(seed=2), reference, ["scale", "sharpness", "resolution"])
    assert [f.identity for f in factors.factors] == [True, True, True]
    assert factors["scale"].details["p_value"] > 0.01


def test_scale_matches_cell_area(reference):
    small = sample(SiteDomain(cell_scale=0.7), seed=3)
    factors = fit_factors(small, reference, ["scale"])
    zoom = factors["scale"].zoom
    assert zoom == pytest.approx(1 / 0.7, rel=0.12)
    moved = white_cell_mask(factors.apply(small.images)).mean(axis=(1, 2))
    target = reference.masks.mean(axis=(1, 2))
    assert np.median(moved) == pytest.approx(np.median(target), rel=0.2)
    warped = factors["scale"].warp_masks(small.masks)
    assert warped.mean() == pytest.approx(small.masks.mean() * zoom ** 2, rel=0.15)


def test_colour_shift_is_not_mistaken_for_a_size_change(reference):
    # The mask reads stain colour: segmenting after a stain match keeps cell size unchanged.
    hue = sample(SiteDomain(stain_hue_shift=-60, stain_saturation=1.4), seed=4)
    for direction in (fit_factors(hue, reference, ["scale"], segment_in="target"),
                      fit_factors(reference, hue, ["scale"], segment_in="source")):
        assert direction["scale"].identity, direction["scale"].details


def test_sharpness_blurs_the_sharper_set_and_sharpens_the_blurrier(reference):
    blurry = sample(SiteDomain(blur_sigma=1.5), seed=5)
    blur = fit_factors(reference, blurry, ["sharpness"])["sharpness"]
    assert blur.mode == "blur" and blur.amount == pytest.approx(1.45, abs=0.25)
    reached = np.median(sharpness(blur.apply(reference.images)))
    assert reached == pytest.approx(np.median(sharpness(blurry.images)), rel=0.1)
    sharpen = fit_factors(blurry, reference, ["sharpness"], allow_sharpen=True)["sharpness"]
    assert sharpen.mode == "sharpen" and sharpen.amount > 0
    none = fit_factors(blurry, reference, ["sharpness"])["sharpness"]
    assert none.identity  # by default only the sharper set is changed


def test_colour_moves_stain_vectors_or_lab_statistics_toward_the_target(reference):
    hue = sample(SiteDomain(stain_hue_shift=-40), seed=6)
    stains = fit_factors(hue, reference, ["color"], color_method="macenko").apply(hue.images)
    target, before = MacenkoStains.fit(reference.images), MacenkoStains.fit(hue.images)
    after = MacenkoStains.fit(stains)
    assert np.abs(after.vectors - target.vectors).sum() < \
        0.3 * np.abs(before.vectors - target.vectors).sum()
    lab = fit_factors(hue, reference, ["color"], color_method="reinhard").apply(hue.images)
    target, before = ReinhardStats.fit(reference.images), ReinhardStats.fit(hue.images)
    assert np.abs(ReinhardStats.fit(lab).mean - target.mean).max() < \
        0.2 * np.abs(before.mean - target.mean).max()
    with pytest.raises(ValueError, match="color method"):
        fit_factors(hue, reference, ["color"], color_method="histogram")


def test_resolution_round_trip_only_when_the_target_is_coarser(reference):
    coarse = SetSample(reference.images, reference.masks, np.full(N, 24), np.full(N, 40))
    fine = SetSample(reference.images, reference.masks, np.full(N, 360), np.full(N, 100))
    down = fit_factors(fine, coarse, ["resolution"])["resolution"]
    assert (down.side, down.quality) == (24, 40)
    out = down.apply(reference.images[:4])
    assert out.shape == (4, SIZE, SIZE, 3) and not np.array_equal(out, reference.images[:4])
    assert np.median(sharpness(out)) < 0.8 * np.median(sharpness(reference.images[:4]))
    assert fit_factors(coarse, fine, ["resolution"])["resolution"].identity
    assert ResolutionFactor().identity and fit_factors(reference, reference,
                                                       ["resolution"])["resolution"].identity


def test_background_keeps_the_cell_and_replaces_the_rest(reference):
    busy = sample(SiteDomain(background_density=3.0), seed=7)
    factors = fit_factors(reference, busy, ["background"])
    background = factors["background"]
    assert isinstance(background, BackgroundFactor) and not background.identity
    images, masks = reference.images[:6], reference.masks[:6]
    out = background.apply(images, masks=masks, seed=3)
    assert np.array_equal(out[masks], images[masks])  # the cell itself is untouched
    far = ~np.stack([np.pad(m, 0) for m in masks])
    far[:, 16:48, 16:48] = False  # the border, away from the centred cell
    assert (out[far] != images[far]).any(axis=-1).mean() > 0.5
    assert np.array_equal(background.apply(images, masks=masks, seed=3), out)
    empty = np.zeros_like(masks)
    assert np.array_equal(background.apply(images, masks=empty, seed=3), images)


def test_composition_is_ordered_seeded_and_validated(reference):
    other = sample(SiteDomain(cell_scale=0.8, blur_sigma=1.0, background_density=2.0), seed=8)
    factors = fit_factors(other, reference, ["color", "scale", "sharpness", "background"],
                          seed=1)
    assert factors.names == ("scale", "background", "color", "sharpness")
    images = other.images[:4]
    masks = factors.masks(images)
    full = factors.apply(images, masks=masks, seed=5)
    assert np.array_equal(full, apply_factors(images, list(factors.factors), masks=masks,
                                              seed=5))
    assert np.array_equal(full, factors.apply(images, masks=masks, seed=5))
    only_colour = factors.apply(images, ["color"], seed=5)
    assert np.array_equal(only_colour, factors["color"].apply(images))
    assert fit_factors(other, reference, []).factors == ()
    with pytest.raises(ValueError, match="unknown factor"):
        fit_factors(other, reference, ["hue"])
