"""Training recipes: BatchNorm modes while fine-tuning, recipe and CLI defaults, the new
augmentations, the few-label target sample."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.cli import build_parser
from audit.data import Dataset
from audit.errors import UsageError
from model.augment import make_augmenter
from model.build import BACKBONE, build_classifier
from model.config import RECIPES, AugmentConfig, TrainConfig, make_config
from model.train import _compile, _unfreeze_top
from model.train_and_save import target_sample

WEIGHTS = Path(os.environ.get(
    "CELLAUDIT_WEIGHTS",
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_no_top.weights.h5",
))


def _top_norms(model):
    backbone = model.get_layer(BACKBONE)
    names = [layer.name for layer in backbone.layers]
    start = names.index(next(n for n in names if n.startswith("block_13")))
    return [layer for layer in backbone.layers[start:]
            if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("freeze", [True, False])
def test_fine_tuning_keeps_batchnorm_in_inference_mode_only_when_frozen(freeze):
    """Keras 3 hands fit's training=True to the nested backbone despite the training=False it
    was called with; only non-trainable BatchNorm layers ignore it (issue 20's collapse)."""
    model = build_classifier(3, input_size=32, alpha=1.0, weights=WEIGHTS, dropout=0.0)
    _unfreeze_top(model.get_layer(BACKBONE), "block_13",
                  batchnorm="frozen" if freeze else "train")
    _compile(model, 1e-3, TrainConfig())
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    norms = _top_norms(model)
    before = [(np.array(n.moving_mean), np.array(n.gamma)) for n in norms]
    backbone = model.get_layer(BACKBONE)
    probe = keras.Model(backbone.inputs, norms[-1].output)
    scaled = images / 127.5 - 1.0
    # Training-mode and inference-mode outputs of the last BatchNorm agree only when it uses
    # its moving statistics in training.
    gap = float(np.abs(np.asarray(probe(scaled, training=True))
                       - np.asarray(probe(scaled, training=False))).max())
    model.train_on_batch(images, labels)
    moved = max(float(np.abs(np.array(n.moving_mean) - m).max()) for n, (m, _) in
                zip(norms, before, strict=True))
    learned = max(float(np.abs(np.array(n.gamma) - g).max()) for n, (_, g) in
                  zip(norms, before, strict=True))
    if freeze:
        assert gap < 1e-5 and moved == 0.0 and learned == 0.0
    else:
        assert gap > 1e-2 and moved > 0.0 and learned > 0.0
    # The convolutions above block_13 train either way; those below never do.
    assert backbone.get_layer("Conv_1").trainable and not backbone.get_layer("Conv1").trainable



def test_adapt_moves_batchnorm_statistics_faster_than_mobilenets_momentum():
    """"adapt" (the default) keeps batch statistics in training like "train", but its moving
    statistics follow with momentum 0.9 instead of 0.999: after one step they have moved 100
    times as far (1 - 0.9 against 1 - 0.999), which is what keeps validation from collapsing."""
    moved = {}
    for mode in ("adapt", "train"):
        model = build_classifier(3, input_size=32, alpha=1.0, weights=WEIGHTS, dropout=0.0)
        _unfreeze_top(model.get_layer(BACKBONE), "block_13", batchnorm=mode)
        _compile(model, 0.0, TrainConfig())   # no weight update: only the statistics move
        norms = _top_norms(model)
        assert {n.momentum for n in norms} == ({0.9} if mode == "adapt" else {0.999})
        before = np.array(norms[0].moving_mean)
        rng = np.random.default_rng(0)
        model.train_on_batch(rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32),
                             np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)])
        moved[mode] = float(np.abs(np.array(norms[0].moving_mean) - before).max())
    assert moved["adapt"] > 5 * moved["train"] > 0

def test_recipes_fill_in_and_explicit_options_win():
    assert make_config("default") == TrainConfig()
    cross = make_config("cross-site")
    assert cross.head_augment and cross.finetune_epochs == 0
    for key, value in RECIPES["cross-site"].train.items():
        assert getattr(cross, key) == value
    strong = make_config("cross-site-finetune")
    for key, value in RECIPES["cross-site-finetune"].augment.items():
        assert getattr(strong.augment, key) == value
    assert strong.augment != AugmentConfig()
    mixed = make_config("cross-site-finetune", train={"finetune_epochs": 2, "seed": None},
                        augment={"zoom_in": 1.5, "blur_sigma": None})
    assert mixed.finetune_epochs == 2 and mixed.seed == TrainConfig().seed
    assert mixed.augment.zoom_in == 1.5
    assert mixed.augment.blur_sigma == RECIPES["cross-site-finetune"].augment["blur_sigma"]
    accurate = make_config("accurate")
    assert (accurate.finetune_from, accurate.views) == ("block_10", "dihedral8")
    assert make_config("accurate", train={"views": "single"}).views == "single"
    with pytest.raises(UsageError, match="--views"):
        make_config(train={"views": "flips"})
    with pytest.raises(UsageError, match="--recipe"):
        make_config("fast")
    with pytest.raises(UsageError, match="--label-smoothing"):
        make_config(train={"label_smoothing": 1.5})
    with pytest.raises(UsageError, match="--batchnorm"):
        make_config(train={"batchnorm": "renorm"})


def test_train_help_states_every_default_and_the_cli_uses_them(tmp_path):
    from audit.commands.train import config_from_args

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    defaults = TrainConfig()
    texts = {a.option_strings[0]: a.help or "" for a in sub._actions if a.option_strings}
    expected = {"--head-epochs": defaults.head_epochs, "--finetune-epochs":
                defaults.finetune_epochs, "--finetune-lr": f"{defaults.finetune_learning_rate:g}",
                "--head-lr": f"{defaults.head_learning_rate:g}", "--schedule": defaults.schedule,
                "--batchnorm": defaults.batchnorm, "--finetune-from": defaults.finetune_from,
                "--label-smoothing": f"{defaults.label_smoothing:g}",
                "--imbalance": defaults.imbalance, "--patience": defaults.patience,
                "--input-size": defaults.input_size, "--batch-size": defaults.batch_size,
                "--views": defaults.views}
    for option, value in expected.items():
        assert f"default {value}" in texts[option], option
        # ... and a reason: a clause after the default.
        assert len(texts[option].split(f"default {value}", 1)[1]) > 20, option
    args = parser.parse_args(["train", str(tmp_path), "--out", "m.keras", "--weights", "none"])
    assert config_from_args(args) == TrainConfig(weights=None)
    args = parser.parse_args(["train", str(tmp_path), "--out", "m.keras", "--weights", "none",
                              "--recipe", "cross-site-finetune", "--no-affine"])
    config = config_from_args(args)
    # The recipe's scale augmentation goes with the affine family that was switched off.
    assert not config.augment.affine and config.augment.zoom_in == 1.0
    assert config.augment.blur_sigma == RECIPES["cross-site-finetune"].augment["blur_sigma"]


def test_train_cli_rejects_bad_recipe_options(tmp_path, capsys):
    from audit.cli import main

    for option, message in ((["--jpeg-quality", "0"], "--jpeg-quality"),
                            (["--label-smoothing", "1"], "--label-smoothing"),
                            (["--blur", "-1"], "--blur")):
        assert main(["train", str(tmp_path), "--out", str(tmp_path / "m.keras"),
                     *option]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_blur_spreads_a_point_by_a_random_amount_per_image_and_keeps_its_mass():
    point = np.zeros((6, 33, 33, 3), np.float32)
    point[:, 16, 16] = 255.0
    augment = make_augmenter(AugmentConfig(flips=False, affine=False, color=False,
                                           stain=False, blur_sigma=3.0), seed=0)
    out = augment(tf.constant(point), tf.constant(0, tf.int64)).numpy()
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 255.0, rtol=1e-4)
    peaks = out[:, 16, 16, 0]
    assert peaks.max() < 255.0 and len(np.unique(np.round(peaks, 2))) == 6
    again = augment(tf.constant(point), tf.constant(0, tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)   # stateless: the same step, the same blur


def test_jpeg_reencoding_degrades_more_at_lower_quality():
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 40, (8, 32, 32, 3)), 0, 255).astype(np.float32)

    def change(min_quality: int) -> float:
        augment = make_augmenter(AugmentConfig(flips=False, affine=False, color=False,
                                               stain=False, jpeg_quality=min_quality), seed=0)
        out = augment(tf.constant(images), tf.constant(3, tf.int64)).numpy()
        assert out.shape == images.shape
        np.testing.assert_array_equal(
            out, augment(tf.constant(images), tf.constant(3, tf.int64)).numpy())
        return float(np.abs(out - images).mean())

    assert 0.5 < change(95) < change(50) < change(5)


def test_target_sample_takes_at_most_half_of_each_class():
    labels = np.array([0] * 3 + [1] * 120 + [2] * 1 + [3] * 40)
    target = Dataset(name="t", root="/x", paths=tuple(f"/x/{i}.png" for i in range(len(labels))),
                     labels=labels, class_names=("a", "b", "c", "d"))
    chosen, rest, counts = target_sample(target, 50, seed=0)
    assert counts == {"a": 1, "b": 50, "c": 0, "d": 20}
    assert not set(chosen) & set(rest) and len(chosen) + len(rest) == len(labels)
    np.testing.assert_array_equal(target_sample(target, 50, seed=0)[0], chosen)
    assert not np.array_equal(target_sample(target, 50, seed=1)[0], chosen)
    with pytest.raises(UsageError, match="--n-per-class"):
        target_sample(target, 0, seed=0)
