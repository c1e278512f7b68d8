"""Dataset loading: folder and manifest sources, label maps, corrupt files, resizing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from audit.data import fingerprint, iter_batches, load_dataset
from audit.decode import load_image
from audit.errors import InputError
from audit.labels import LabelMap, load_label_map


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    for cls, n in (("NEUTROPHIL", 3), ("Lymphocyte", 2)):
        for i in range(n):
            _save(root / cls / f"{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return root


def test_folder_dataset_classes_counts_and_fingerprint(folder):
    ds = load_dataset(folder)
    assert ds.class_names == ("Lymphocyte", "NEUTROPHIL")
    assert ds.class_counts() == {"Lymphocyte": 2, "NEUTROPHIL": 3}
    assert ds.groups is None and len(ds.fingerprint) == 64
    assert load_dataset(folder).fingerprint == ds.fingerprint


def test_fingerprint_changes_with_content_and_labels(folder):
    before = load_dataset(folder).fingerprint
    (folder / "Lymphocyte" / "0.png").write_bytes((folder / "Lymphocyte" / "0.png").read_bytes() + b"x")
    assert load_dataset(folder).fingerprint != before
    ds = load_dataset(folder)
    swapped = fingerprint(ds.root, ds.paths, 1 - ds.labels, ds.class_names)
    assert swapped != ds.fingerprint


def test_label_map_renames_merges_and_drops(folder, tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text('map = { NEUTROPHIL = "neutrophil" }\ndrop = ["Lymphocyte"]\n')
    ds = load_dataset(folder, label_map=load_label_map(mapping))
    assert ds.class_names == ("neutrophil",) and len(ds) == 3
    json_map = tmp_path / "map.json"
    json_map.write_text(json.dumps({"NEUTROPHIL": "neutrophil", "Lymphocyte": "lymphocyte"}))
    assert load_dataset(folder, label_map=load_label_map(json_map)).class_names == (
        "lymphocyte", "neutrophil")
    assert LabelMap({"neutrophil": "n"}, ignore_case=True).apply("NEUTROPHIL") == "n"


def test_unknown_classes_are_listed(folder):
    with pytest.raises(InputError, match="does not know: Lymphocyte, NEUTROPHIL"):
        load_dataset(folder, class_names=("basophil", "eosinophil"))


def test_bad_label_map_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("map = [1, 2]")
    with pytest.raises(InputError, match="bad.toml"):
        load_label_map(bad)


def test_corrupt_files_are_reported_and_skipped_or_strict(folder):
    (folder / "NEUTROPHIL" / "empty.jpg").write_bytes(b"")
    (folder / "NEUTROPHIL" / "text.png").write_text("not an image")
    good = folder / "NEUTROPHIL" / "0.png"
    (folder / "NEUTROPHIL" / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (folder / "NEUTROPHIL" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipped 4 unusable"):
        ds = load_dataset(folder)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in ds.skipped}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "not a JPEG/PNG" in reasons["text.png"]
    assert "cut.png" in reasons and "notes.txt" in reasons
    assert len(ds) == 5
    with pytest.raises(InputError, match="4 unusable"):
        load_dataset(folder, strict=True)


def test_manifest_with_groups_and_missing_file(tmp_path, folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,group\nset/NEUTROPHIL/0.png,NEUTROPHIL,p1\n"
                        "set/NEUTROPHIL/1.png,NEUTROPHIL,p1\nset/Lymphocyte/0.png,Lymphocyte,p2\n"
                        "set/missing.png,Lymphocyte,p3\n")
    with pytest.warns(UserWarning, match="missing"):
        ds = load_dataset(manifest)
    assert ds.groups == ("p1", "p1", "p2") and ds.class_counts() == {"Lymphocyte": 1, "NEUTROPHIL": 2}


def test_manifest_header_is_checked(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.png,x\n")
    with pytest.raises(InputError, match="path,label"):
        load_dataset(manifest)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        load_dataset(tmp_path / "empty")


@pytest.mark.parametrize("mode,fmt,suffix", [("L", "PNG", "png"), ("RGBA", "PNG", "png"),
                                             ("RGB", "BMP", "bmp"), ("RGB", "TIFF", "tif"),
                                             ("RGB", "JPEG", "jpg"), ("I;16", "PNG", "png")])
def test_load_image_formats_become_rgb(tmp_path, mode, fmt, suffix):
    array = np.zeros((40, 60, 4), np.uint8)
    array[..., :3] = 200
    array[..., 3] = 255
    array[:, :30, 3] = 0  # left half transparent
    image = Image.fromarray(array, "RGBA")
    if mode == "I;16":
        image = Image.fromarray((np.arange(2400).reshape(40, 60) * 20).astype(np.uint16))
    elif mode != "RGBA":
        image = image.convert(mode)
    path = tmp_path / f"x.{suffix}"
    image.save(path, format=fmt)
    out = load_image(path, 16, resize="crop")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode == "RGBA":  # transparency composited onto white, not black
        assert out[:, :2].min() >= 250


def test_load_image_centre_crops_instead_of_squashing(tmp_path):
    array = np.zeros((20, 60, 3), np.uint8)
    array[:, 20:40] = 255  # a white centre square flanked by black
    Image.fromarray(array).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 10, resize="crop")
    assert out.min() > 240  # the crop is the white centre only


def test_iter_batches_streams_in_order(folder):
    ds = load_dataset(folder)
    batches = list(iter_batches(ds, image_size=8, resize="crop", batch_size=2))
    assert [len(idx) for _, idx in batches] == [2, 2, 1]
    assert np.concatenate([idx for _, idx in batches]).tolist() == list(range(5))
    assert all(images.shape[1:] == (8, 8, 3) for images, _ in batches)


def test_cell_size_sample_is_stratified_and_seeded_by_the_dataset(tmp_path):
    from audit.inference import cell_size_sample

    rows = ["path,label"] + [f"{tmp_path}/{i}.png,{'a' if i < 30 else 'b'}" for i in range(40)]
    for i in range(40):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(tmp_path / "m.csv")
    picked = cell_size_sample(dataset, 8)
    assert picked.sum() == 8 and picked[:30].sum() == 6 and picked[30:].sum() == 2
    np.testing.assert_array_equal(picked, cell_size_sample(dataset, 8))
    assert cell_size_sample(dataset, 0).all() and cell_size_sample(dataset, 40).all()
    (tmp_path / "m.csv").write_text("\n".join(rows[:-1]) + "\n")  # another set, another draw
    smaller = cell_size_sample(load_dataset(tmp_path / "m.csv"), 8)
    assert smaller.sum() == 8 and not np.array_equal(smaller, picked[:39])
