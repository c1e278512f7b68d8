"""AdaBN (model.adapt) and `audit adapt`."""

from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from audit.cli import main
from audit.data import load_dataset, read_images
from model.adapt import adapt_batchnorm
from model.build import BACKBONE, build_classifier
from model.io import read_metadata


def _class_sorted_site(root, n_per_class: int = 40):
    """Two classes of very different brightness, stored (and listed) one class after the other."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("bright", 200)):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            image = np.clip(rng.normal(level, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return load_dataset(root)


def _first_norm_input_variance(model, images: np.ndarray) -> np.ndarray:
    backbone = model.get_layer(BACKBONE)
    first = next(layer for layer in backbone.layers
                 if isinstance(layer, keras.layers.BatchNormalization))
    probe = keras.Model(backbone.inputs, first.input)
    scaled = model.get_layer("preprocess")(images.astype(np.float32))
    return np.asarray(probe(scaled)).reshape(-1, first.input.shape[-1]).var(axis=0), first


def test_statistics_are_those_of_the_whole_site_not_of_one_class_batches(tmp_path):
    site = _class_sorted_site(tmp_path / "site")
    model = build_classifier(2, input_size=32, alpha=0.35, weights=None)
    population, first = _first_norm_input_variance(model, read_images(site.paths, 32))
    record = adapt_batchnorm(model, site, image_size=32, batch_size=16, seed=3)
    adapted = np.asarray(first.moving_variance)
    # Batches of one class would see a fraction of the between-class variance.
    np.testing.assert_allclose(adapted, population, rtol=0.25)
    assert record["images"] == len(site) and record["seed"] == 3


def test_cli_adapts_and_records_it(tiny_model, synthetic_sites, tmp_path):
    out = tmp_path / "adapted.keras"
    assert main(["adapt", "--model", str(tiny_model), "--data", str(synthetic_sites["site_b"]),
                 "--out", str(out), "--max-images", "40"]) == 0
    record = read_metadata(out)["adaptation"][-1]
    assert record["method"] == "AdaBN" and record["images"] == 40
    assert record["batchnorm_layers"] > 0


def test_cli_rejects_an_output_that_is_not_keras(tiny_model, synthetic_sites, tmp_path, capsys):
    code = main(["adapt", "--model", str(tiny_model), "--data", str(synthetic_sites["site_b"]),
                 "--out", str(tmp_path / "adapted.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0]
