"""Tests for audit.corruptions: API contract, determinism, severity order and what each corruption does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_real

from audit.corruptions import CORRUPTIONS, SEVERITIES, SEVERITY_PARAMS, _stain_shift, corrupt
from audit.imaging import image_properties
from audit.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
RANDOM = ("stain_shift", "motion_blur", "gaussian_noise")  # the corruptions that draw random numbers


@pytest.fixture(scope="module")
def smears() -> np.ndarray:
    images, _, _ = generate(6, size=96, seed=11)
    return images




def _distortion(clean: np.ndarray, corrupted: np.ndarray) -> float:
    return float(np.abs(corrupted.astype(np.float64) - clean).mean())


def test_registry_is_consistent():
    assert CORRUPTIONS == tuple(SEVERITY_PARAMS)
    assert len(set(CORRUPTIONS)) == len(CORRUPTIONS) >= 9
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert all(len(params) == len(SEVERITIES) for params in SEVERITY_PARAMS.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_new_uint8_array_of_same_shape_and_input_untouched(name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 52, 3), dtype=np.uint8)  # not square
    before = images.copy()
    out = corrupt(images, name, 3, seed=1)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert out is not images and not np.shares_memory(out, images)
    np.testing.assert_array_equal(images, before)
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_for_a_seed(smears, name):
    np.testing.assert_array_equal(corrupt(smears, name, 4, seed=7), corrupt(smears, name, 4, seed=7))


@pytest.mark.parametrize("name", RANDOM)
def test_seed_changes_random_draws(smears, name):
    assert not np.array_equal(corrupt(smears, name, 4, seed=7), corrupt(smears, name, 4, seed=8))


def test_severities_do_not_share_noise():
    grey = np.full((2, 64, 64, 3), 128, np.uint8)  # no clipping: the noise is recoverable
    noise = [(corrupt(grey, "gaussian_noise", s, seed=3).astype(float) - 128).ravel() for s in (1, 2)]
    assert abs(np.corrcoef(noise)[0, 1]) < 0.1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distortion_grows_with_severity(smears, name):
    d = [_distortion(smears, corrupt(smears, name, s, seed=0)) for s in SEVERITIES]
    assert d[0] > 0
    assert all(b > a for a, b in zip(d[:-1], d[1:], strict=True)), f"{name}: {np.round(d, 2)}"


@pytest.fixture(scope="module")
def real_smears() -> np.ndarray:
    return np.concatenate([load_real("pbc/neutrophil", 4), load_real("bccd_cropped/Neutrophil", 4)])


@pytest.mark.realdata
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distortion_grows_with_severity_on_real_smears(real_smears, name):
    images = real_smears
    d = [_distortion(images, corrupt(images, name, s, seed=0)) for s in SEVERITIES]
    assert all(b > a for a, b in zip(d[:-1], d[1:], strict=True)), f"{name}: {np.round(d, 2)}"


def test_brightness_scales_intensity(smears):
    out = corrupt(smears, "brightness", 5, seed=0).astype(float)
    assert np.abs(out - smears * SEVERITY_PARAMS["brightness"][4]).max() <= 0.5 + 1e-9


def test_contrast_keeps_mean_and_shrinks_spread(smears):
    before = image_properties(smears)
    after = image_properties(corrupt(smears, "contrast", 5, seed=0))
    np.testing.assert_allclose(after["brightness"], before["brightness"], atol=2 / 255)
    np.testing.assert_allclose(after["contrast"], 0.5 * before["contrast"], rtol=0.05)


def test_saturation_raises_saturation_and_keeps_grey_grey(smears):
    before = image_properties(smears)["saturation"]
    assert np.all(image_properties(corrupt(smears, "saturation", 5, seed=0))["saturation"] > before + 0.1)
    grey = np.full((1, 16, 16, 3), 90, np.uint8)
    np.testing.assert_array_equal(corrupt(grey, "saturation", 5, seed=0), grey)


def test_stain_shift_changes_stained_colour_not_white():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:, :, :4] = 255  # white slide
    images[:, :, 4:] = (90, 40, 140)  # purple nucleus
    out = corrupt(images, "stain_shift", 5, seed=2).astype(int)
    assert np.abs(out[:, :, :4] - 255).max() <= 1
    assert np.abs(out[:, :, 4:] - images[:, :, 4:]).max(axis=(1, 2, 3)).min() >= 10
    assert len({tuple(out[i, 0, 5]) for i in range(4)}) == 4  # each image draws its own stain


def test_stain_shift_without_shift_is_identity(smears):
    out = _stain_shift(smears, (0.0, 0.0), np.random.default_rng(0))
    assert np.abs(out - smears).max() < 0.01


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur"])
def test_blurs_lower_sharpness(smears, name):
    before = image_properties(smears)["sharpness"]
    assert np.all(image_properties(corrupt(smears, name, 3, seed=0))["sharpness"] < 0.7 * before)


def test_gaussian_noise_has_the_stated_std():
    grey = np.full((4, 64, 64, 3), 128, np.uint8)
    out = corrupt(grey, "gaussian_noise", 2, seed=0).astype(float)
    assert abs((out - 128).std() / 255 - SEVERITY_PARAMS["gaussian_noise"][1]) < 0.003
    assert abs((out - 128).mean()) < 0.5


def test_pixelate_makes_constant_blocks():
    images = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    out = corrupt(images, "pixelate", 5, seed=0)  # factor 0.25: 16x16 blocks of 4x4 pixels
    blocks = out.reshape(2, 16, 4, 16, 4, 3)
    assert np.all(blocks == blocks[:, :, :1, :, :1, :])


def test_empty_batch():
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    for name in CORRUPTIONS:
        assert corrupt(empty, name, 1, seed=0).shape == empty.shape


def test_unknown_name_lists_accepted():
    with pytest.raises(ValueError, match="'fog'") as info:
        corrupt(np.zeros((1, 8, 8, 3), np.uint8), "fog", 1, seed=0)
    assert all(name in str(info.value) for name in CORRUPTIONS)


@pytest.mark.parametrize("severity", [0, 6, 2.0, "3", True, None])
def test_bad_severity(severity):
    with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\), got " + repr(severity).replace(".", r"\.")):
        corrupt(np.zeros((1, 8, 8, 3), np.uint8), "jpeg", severity, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        corrupt(np.zeros((1, 8, 8, 3), np.uint8), "jpeg", 1, seed=seed)


@pytest.mark.parametrize(
    "images", [np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 4), np.uint8), [[0]]]
)
def test_bad_images(images):
    with pytest.raises(ValueError, match="images must be a uint8 array of shape"):
        corrupt(images, "brightness", 1, seed=0)
