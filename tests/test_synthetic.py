"""The synthetic blood-cell generator: determinism, morphology, domain shift, datasets, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import time

import numpy as np
import pytest
from PIL import Image

from audit import cli
from audit.synthetic import (
    CLASSES,
    REFERENCE_SITE,
    SHIFTED_SITE,
    SiteDomain,
    generate,
    render_cell,
    sites,
    write_site,
)


@pytest.fixture(scope="module")
def reference_set():
    return generate(300, seed=1)


def _mean_mask_area(masks: np.ndarray) -> float:
    return float(masks.reshape(len(masks), -1).mean(axis=1).mean())


def _blueness(images: np.ndarray, masks: np.ndarray) -> float:
    """Mean blue minus red over the white-cell pixels."""
    pixels = images[masks].astype(float)
    return float((pixels[:, 2] - pixels[:, 0]).mean())


def _sharpness(images: np.ndarray) -> float:
    grey = images.astype(float).mean(axis=-1)
    return float(np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=2)).mean())


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    first, second, other = generate(12, seed=3), generate(12, seed=3), generate(12, seed=4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_an_image_does_not_depend_on_how_many_are_generated():
    many, few = generate(10, seed=5), generate(4, seed=5)
    for a, b in zip(many, few, strict=True):
        np.testing.assert_array_equal(a[:4], b)


def test_shapes_and_dtypes():
    images, labels, masks = generate(6, size=32, seed=0)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6,) and np.issubdtype(labels.dtype, np.integer)
    assert masks.shape == (6, 32, 32) and masks.dtype == bool
    assert set(labels) <= set(range(len(CLASSES)))
    image, mask = render_cell("monocyte", size=48, rng=np.random.default_rng(0))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == bool
    assert generate(0)[0].shape == (0, 64, 64, 3)


def test_class_priors_are_respected():
    _, labels, _ = generate(600, size=16, domain=SHIFTED_SITE, seed=2)
    observed = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    expected = np.array([SHIFTED_SITE.class_priors[c] for c in CLASSES])
    np.testing.assert_allclose(observed, expected / expected.sum(), atol=0.06)


def test_priors_are_renormalised_over_the_requested_classes():
    classes = ("neutrophil", "lymphocyte")
    _, labels, _ = generate(300, size=16, domain=SHIFTED_SITE, seed=2, classes=classes)
    assert set(labels) == {0, 1}
    priors = SHIFTED_SITE.class_priors
    share = priors["neutrophil"] / sum(priors[c] for c in classes)
    assert abs((labels == 0).mean() - share) < 0.08


def test_uniform_priors_cover_every_class(reference_set):
    counts = np.bincount(reference_set[1], minlength=len(CLASSES))
    assert counts.min() > 0.1 * len(reference_set[1])


def test_classes_are_distinguishable_from_simple_colour_and_size_features(reference_set):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels, masks = reference_set
    features = []
    for image, mask in zip(images / 255.0, masks, strict=True):
        pixels = image[mask]
        grey = pixels.mean(axis=1)
        features.append([mask.mean(), *pixels.mean(axis=0), (grey < 0.45).mean(),
                         (pixels[:, 0] - pixels[:, 2] > 0.25).mean(), grey.std()])
    features = np.array(features)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(features[:200], labels[:200])
    assert model.score(features[200:], labels[200:]) > 0.8  # chance is 0.2


def test_mask_covers_the_centre_and_has_a_plausible_area(reference_set):
    _, labels, masks = reference_set
    size = masks.shape[1]
    assert masks[:, size // 2, size // 2].all()
    areas = masks.reshape(len(masks), -1).mean(axis=1)
    assert areas.min() > 0.03 and areas.max() < 0.4
    by_class = {c: areas[labels == i].mean() for i, c in enumerate(CLASSES)}
    assert by_class["lymphocyte"] < by_class["monocyte"]
    assert by_class["lymphocyte"] == min(by_class.values())
    assert by_class["monocyte"] == max(by_class.values())


@pytest.mark.parametrize(("field", "measure", "direction"), [
    pytest.param("stain_hue_shift", _blueness, +1, id="bluer"),
    pytest.param("blur_sigma", lambda images, masks: _sharpness(images), -1, id="blurrier"),
    pytest.param("cell_scale", lambda images, masks: _mean_mask_area(masks), -1, id="smaller"),
])
def test_each_shifted_parameter_moves_its_statistic_the_stated_way(field, measure, direction):
    # Same seed, one field changed: every other draw is identical, so the shift is controlled.
    changed = dataclasses.replace(REFERENCE_SITE, **{field: getattr(SHIFTED_SITE, field)})
    before = measure(*generate(60, domain=REFERENCE_SITE, seed=9)[::2])
    after = measure(*generate(60, domain=changed, seed=9)[::2])
    assert direction * (after - before) > 0.05 * abs(before)


def test_the_shifted_site_is_bluer_blurrier_and_has_smaller_cells():
    uniform_shifted = dataclasses.replace(SHIFTED_SITE, class_priors=None)
    ref_images, _, ref_masks = generate(100, domain=REFERENCE_SITE, seed=11)
    new_images, _, new_masks = generate(100, domain=uniform_shifted, seed=11)
    assert _blueness(new_images, new_masks) > _blueness(ref_images, ref_masks)
    assert _sharpness(new_images) < _sharpness(ref_images)
    assert _mean_mask_area(new_masks) < 0.85 * _mean_mask_area(ref_masks)


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"blur_sigma": -1.0}, "blur_sigma", "-1.0"),
    ({"stain_hue_shift": 500}, "stain_hue_shift", "500"),
    ({"cell_scale": 0}, "cell_scale", "0"),
    ({"noise_std": float("nan")}, "noise_std", "nan"),
    ({"class_priors": {"bogus": 1.0}}, "class_priors", "bogus"),
    ({"class_priors": {"neutrophil": -1}}, "class_priors['neutrophil']", "-1"),
    ({"class_priors": {"neutrophil": 0}}, "class_priors", "0"),
])
def test_bad_domain_parameters_name_the_field_and_value(kwargs, field, value):
    with pytest.raises(ValueError) as caught:
        SiteDomain(**kwargs)
    assert field in str(caught.value) and value in str(caught.value)


def test_domain_is_frozen_and_serialisable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE_SITE.blur_sigma = 3.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        SHIFTED_SITE.class_priors["neutrophil"] = 1.0  # type: ignore[index]
    assert json.loads(json.dumps(SHIFTED_SITE.to_dict()))["class_priors"]["neutrophil"] == 0.45


def test_bad_arguments_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cls.*'platelet'"):
        render_cell("platelet", rng=rng)
    with pytest.raises(ValueError, match="size.*8"):
        render_cell("monocyte", size=8, rng=rng)
    with pytest.raises(ValueError, match="n.*-1"):
        generate(-1)
    with pytest.raises(ValueError, match="classes"):
        generate(2, classes=("neutrophil", "neutrophil"))
    with pytest.raises(ValueError, match="no weight"):
        generate(2, domain=SiteDomain(class_priors={"neutrophil": 1}), classes=("monocyte",))


def test_write_site_writes_images_manifest_and_record(tmp_path):
    manifest = write_site(tmp_path / "ref", n_images=15, size=32, seed=4, site_name="ref")
    out = tmp_path / "ref"
    assert manifest == out / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "group"]
    assert len(rows) == 15 and len({row["group"] for row in rows}) == 15
    images, labels, _ = generate(15, size=32, seed=4)
    for i, row in enumerate(rows):
        assert row["label"] == CLASSES[labels[i]]
        assert row["path"] == f"{CLASSES[labels[i]]}/ref_{i:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["path"])), images[i])
    record = json.loads((out / "site.json").read_text())
    assert record["seed"] == 4 and record["size"] == 32
    assert record["domain"] == REFERENCE_SITE.to_dict()
    assert sum(record["class_counts"].values()) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # no staging left behind


def test_write_site_a_thousand_images(tmp_path):
    started = time.perf_counter()
    manifest = write_site(tmp_path / "big", n_images=1000)
    print(f"write_site: 1000 images at 64x64 in {time.perf_counter() - started:.2f} s")
    assert len(list((tmp_path / "big").glob("*/*.png"))) == 1000
    assert len(manifest.read_text().splitlines()) == 1001


def test_write_site_refuses_a_foreign_directory_but_replaces_its_own(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="notes"):
        write_site(foreign, n_images=2, size=16)
    assert (foreign / "keep.txt").read_text() == "precious"

    write_site(foreign, n_images=2, size=16, overwrite=True)
    assert not (foreign / "keep.txt").exists()
    write_site(foreign, n_images=3, size=16)  # a previous synth output: replaced without asking
    assert len(list(foreign.glob("*/*.png"))) == 3


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sites, "render_cell", explode)  # as write_site looks it up
    with pytest.raises(RuntimeError):
        write_site(tmp_path / "out", n_images=5, size=16)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "shifted"
    code = cli.main(["synth", str(out), "--n-images", "12", "--size", "32", "--site", "shifted",
                     "--blur-sigma", "2", "--class-priors", "neutrophil=1,lymphocyte=1"])
    assert code == 0
    assert "wrote 12 images" in capsys.readouterr().out
    record = json.loads((out / "site.json").read_text())
    assert record["domain"]["blur_sigma"] == 2.0
    assert record["domain"]["cell_scale"] == SHIFTED_SITE.cell_scale
    assert set(record["class_counts"]) == set(CLASSES)
    assert record["class_counts"]["monocyte"] == 0 and len(list(out.glob("*/*.png"))) == 12


@pytest.mark.parametrize(("option", "named"), [
    (["--size", "0"], "--size"),
    (["--n-images", "-3"], "--n-images"),
    (["--class-priors", "bogus=1"], "--class-priors"),
    (["--class-priors", "neutrophil"], "--class-priors"),
    (["--blur-sigma", "-1"], "--blur-sigma"),
    (["--site", "moon"], "--site"),
])
def test_cli_rejects_a_bad_option_with_one_clear_line(tmp_path, capsys, option, named):
    assert cli.main(["synth", str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
