"""AdaBN aligned to source statistics (model.adapt) and `audit adapt`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from audit.cli import main
from audit.data import load_dataset, load_unlabelled, read_images
from model.adapt import align_batchnorm, batchnorm_input_statistics
from model.build import BACKBONE, build_classifier
from model.io import read_metadata, save_model
from model.loaded import as_loaded, load_model

SIZE = 64  # the 32-px synthetic cells upsampled: fewer pixels on a zero-padded border


def _norms(model):
    return [layer for layer in model.get_layer(BACKBONE).layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _embedding(model, images: np.ndarray) -> np.ndarray:
    embed = keras.Model(model.inputs, model.get_layer("pool").output)
    return np.asarray(embed.predict(images.astype(np.float32), batch_size=64, verbose=0))


def _spread(embedding: np.ndarray) -> float:
    return float(embedding.std(axis=0).mean())


@pytest.fixture(scope="module")
def source(synthetic_sites):
    return load_unlabelled(synthetic_sites["train"]).subset(range(60))


@pytest.fixture()
def foreign_stats(source):
    """Random features whose BatchNorm statistics are first the source's (classic AdaBN on
    it), then moved off them, as ImageNet statistics under a fine-tuned head are."""
    keras.utils.set_random_seed(0)
    model = build_classifier(3, input_size=SIZE, alpha=0.35, weights=None)
    align_batchnorm(as_loaded(model), source)
    rng = np.random.default_rng(0)
    for layer in _norms(model):
        mean, var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
        layer.moving_mean.assign(mean + 0.3 * np.sqrt(var) * rng.standard_normal(mean.shape))
        layer.moving_variance.assign(var * rng.uniform(0.5, 2.0, var.shape))
    return model


def test_classic_adabn_sets_population_statistics_in_any_file_order(tmp_path):
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("bright", 200)):  # listed one class after the other
        (tmp_path / name).mkdir()
        for i in range(30):
            image = np.clip(rng.normal(level, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / name / f"{i:03d}.png")
    site = load_dataset(tmp_path)
    model = build_classifier(2, input_size=SIZE, alpha=0.35, weights=None)
    record = align_batchnorm(as_loaded(model), site, batch_size=16)
    measured = batchnorm_input_statistics(as_loaded(model), site, batch_size=60)
    for layer, (mean, var) in zip(_norms(model), measured, strict=True):
        np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance, var, rtol=1e-3, atol=1e-4)
    assert record["images"] == 60 and "source" not in record


def test_aligning_to_the_source_itself_changes_nothing(foreign_stats, source):
    images = read_images(source.paths[:40], SIZE, resize="crop")
    before = _embedding(foreign_stats, images)
    assert _spread(before) > 0.01
    record = align_batchnorm(as_loaded(foreign_stats), source, source)
    np.testing.assert_allclose(_embedding(foreign_stats, images), before,
                               atol=1e-3 * _spread(before), rtol=1e-3)
    assert record["source"]["images"] == len(source)


def test_classic_adabn_would_move_such_a_model(foreign_stats, source):
    # Without source images the moving statistics stand in for the source's; here they are
    # not, so adapting to the very same images changes the features: why adapt asks --source.
    images = read_images(source.paths[:40], SIZE, resize="crop")
    before = _embedding(foreign_stats, images)
    align_batchnorm(as_loaded(foreign_stats), source)
    assert np.abs(_embedding(foreign_stats, images) - before).mean() > 0.1 * _spread(before)


def test_undoes_a_global_intensity_change(foreign_stats, source, tmp_path):
    # The target: the source's own cells, paler and brighter, so only the change differs.
    originals = read_images(source.paths, SIZE, resize="crop")
    # Contrast around mid-grey: 0.6x in the model's [-1, 1] input, so the zero padding of the
    # first convolution is changed alike and the first BatchNorm input is exactly 0.6x per
    # channel. (A brightness offset would leave the padding behind.)
    shifted = (127.5 + 0.6 * (originals.astype(np.float64) - 127.5)).round().astype(np.uint8)
    for i, image in enumerate(shifted):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    backbone = foreign_stats.get_layer(BACKBONE)
    first = keras.Model(backbone.inputs, _norms(foreign_stats)[0].output)

    def first_norm(images):
        return np.asarray(first(foreign_stats.get_layer("preprocess")(images.astype("float32"))))

    reference, embedded = first_norm(originals), _embedding(foreign_stats, originals)
    gap_before = np.abs(first_norm(shifted) - reference).mean()
    embedding_gap_before = np.abs(_embedding(foreign_stats, shifted) - embedded).mean()
    align_batchnorm(as_loaded(foreign_stats), load_unlabelled(tmp_path), source)
    # The first BatchNorm's output is restored but for rounding to 8 bits ...
    assert np.abs(first_norm(shifted) - reference).mean() < 0.1 * gap_before
    # ... and the features much nearer (random untrained layers amplify the rounding).
    embedding_gap = np.abs(_embedding(foreign_stats, shifted) - embedded).mean()
    assert embedding_gap < 0.5 * embedding_gap_before


def test_cli_aligns_to_the_training_manifest_beside_the_model(tiny_model, synthetic_sites,
                                                               tmp_path):
    out = tmp_path / "adapted.keras"
    assert main(["adapt", "--model", str(tiny_model), "--data", str(synthetic_sites["site_b"]),
                 "--out", str(out), "--max-images", "40"]) == 0
    record = read_metadata(out)["adaptation"][-1]
    assert record["images"] == 40 and record["batchnorm_layers"] > 0
    assert tiny_model.with_name("tiny.train.csv").is_file()
    assert record["method"] == "AdaBN aligned to source statistics"
    assert record["source"]["images"] == 40


def test_cli_needs_source_for_a_pretrained_backbone(tiny_model, synthetic_sites, tmp_path,
                                                    capsys):
    loaded = load_model(tiny_model)
    model, metadata = loaded.keras_model, loaded.metadata
    metadata = {**metadata, "architecture": {**metadata["architecture"], "weights": "imagenet"}}
    metadata.pop("format", None)
    lonely = tmp_path / "lonely.keras"
    save_model(model, lonely, metadata)
    code = main(["adapt", "--model", str(lonely), "--data", str(synthetic_sites["site_b"]),
                 "--out", str(tmp_path / "x.keras")])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--source" in errors[0] and "ImageNet" in errors[0]
    assert all(line.startswith(("error:", "warning:")) for line in err), err  # no traceback
    assert not (tmp_path / "x.keras").exists()
    assert main(["adapt", "--model", str(lonely), "--data", str(synthetic_sites["site_b"]),
                 "--out", str(tmp_path / "x.h5")]) == 2
    assert "--out" in capsys.readouterr().err
