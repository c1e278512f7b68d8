"""Training end to end on synthetic cells: learns, saves metadata and a split manifest."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from audit.cli import main
from audit.data import load_dataset, read_images
from audit.synthetic import write_site
from model.loaded import load_model

TINY = ["--weights", "none", "--input-size", "32", "--alpha", "0.35", "--head-epochs", "0",
        "--finetune-from", "Conv1", "--batch-size", "32", "--no-affine", "--no-stain"]


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "site"
    write_site(out, n_images=400, size=32, seed=3, classes=("lymphocyte", "neutrophil"))
    return out


@pytest.fixture(scope="module")
def trained(two_classes, tmp_path_factory):
    model_path = tmp_path_factory.mktemp("model") / "m.keras"
    code = main(["train", str(two_classes), "--out", str(model_path), "--finetune-epochs", "12", "--patience", "12",
                 "--finetune-lr", "1e-3", "--seed", "1", *TINY])
    assert code == 0
    return model_path


def test_training_beats_chance_clearly(trained, two_classes):
    loaded = load_model(trained)
    model, meta = loaded.keras_model, loaded.metadata
    # The per-split manifest written beside the model is a dataset of its own.
    val = load_dataset(trained.with_name("m.validation.csv"), class_names=meta["class_names"])
    assert len(val) == 80  # 20% of 400, stratified
    images = read_images(list(val.paths), 32, resize="crop").astype("float32")
    accuracy = float(np.mean(np.asarray(model.predict(images, verbose=0)).argmax(1) == val.labels))
    assert accuracy >= 0.75, accuracy  # chance is 0.5
    assert meta["validation_accuracy"] == pytest.approx(accuracy, abs=0.05)


def test_metadata_is_complete(trained):
    meta = load_model(trained).metadata
    for key in ("class_names", "input_size", "preprocessing", "training_data", "split",
                "hyperparameters", "seed", "versions", "history", "phases"):
        assert key in meta, key
    assert meta["class_names"] == ["lymphocyte", "neutrophil"]
    assert len(meta["training_data"]["fingerprint"]) == 64
    assert len(meta["history"]["val_accuracy"]) == meta["phases"][0]["epochs_run"]
    assert {"tensorflow", "keras", "numpy"} <= set(meta["versions"])


def test_split_is_stratified_and_disjoint(trained):
    rows = list(csv.DictReader(open(trained.with_name("m.split.csv"))))
    train = {r["path"] for r in rows if r["split"] == "train"}
    val = [r for r in rows if r["split"] == "validation"]
    assert not train & {r["path"] for r in val}
    counts = {c: sum(r["label"] == c for r in val) for c in ("lymphocyte", "neutrophil")}
    assert abs(counts["lymphocyte"] - counts["neutrophil"]) <= 2 or min(counts.values()) > 10


def test_group_split_keeps_groups_apart(two_classes, tmp_path):
    rows = list(csv.DictReader(open(two_classes / "manifest.csv")))
    manifest = tmp_path / "grouped.csv"
    with manifest.open("w") as fh:
        fh.write("path,label,group\n")
        for i, row in enumerate(rows):
            fh.write(f"{two_classes / row['path']},{row['label']},g{i // 4}\n")
    out = tmp_path / "g.keras"
    assert main(["train", str(manifest), "--out", str(out), "--group-split",
                 "--finetune-epochs", "1", *TINY]) == 0
    split = list(csv.DictReader(open(out.with_name("g.split.csv"))))
    sides = {}
    for row in split:
        sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())


def test_train_cli_errors_exit_2(tmp_path, capsys, two_classes):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m.keras")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.h5")]) == 2
    assert "must end in .keras" in capsys.readouterr().err
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.keras"),
                 "--weights", str(tmp_path / "nope.h5")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.keras"),
                 "--val-split", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--val-split" in err and err.count("\n") == 1
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.keras"), "--group-split",
                 *TINY]) == 2
    assert "no group column" in capsys.readouterr().err
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.keras"),
                 "--zoom-in", "9"]) == 2
    err = capsys.readouterr().err
    assert "--zoom-in" in err and "from 1 to 4" in err and err.count("\n") == 1
    assert main(["train", str(two_classes), "--out", str(tmp_path / "m.keras"),
                 "--zoom-in", "2", "--no-affine"]) == 2
    assert "--no-affine" in capsys.readouterr().err


def test_zoom_in_magnifies_up_to_the_given_factor():
    import tensorflow as tf

    from model.augment import AugmentConfig, make_augmenter

    square = np.zeros((1, 64, 64, 3), np.float32)
    square[:, 24:40, 24:40] = 255.0  # 1/16 of the image
    areas = {}
    for zoom_in in (1.0, 2.0):
        augment = make_augmenter(AugmentConfig(flips=False, color=False, stain=False,
                                               rotation_deg=0.0, shift=0.0, zoom=0.0,
                                               zoom_in=zoom_in), seed=1)
        areas[zoom_in] = [float((augment(tf.constant(square), tf.constant(step, tf.int64))
                                 .numpy() > 128).mean()) for step in range(30)]
    assert min(areas[1.0]) == max(areas[1.0]) == pytest.approx(1 / 16)
    # Magnification m covers m^2 the area: up to 4x at 2, and spread in between.
    assert max(areas[2.0]) == pytest.approx(4 / 16, abs=0.02) and min(areas[2.0]) >= 1 / 16
    assert len({round(a, 3) for a in areas[2.0]}) > 5
