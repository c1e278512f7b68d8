"""The loaders over the real images in ../shared/data, with the counts its README states."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.data import load_dataset
from audit.labels import load_label_map

pytestmark = pytest.mark.realdata
WBC5 = Path(__file__).resolve().parents[1] / "examples" / "labelmaps" / "wbc5.toml"


def test_pbc_has_300_images_per_class(shared_data):
    ds = load_dataset(shared_data / "pbc")
    assert ds.class_counts() == {c: 300 for c in ("basophil", "eosinophil", "erythroblast", "ig",
                                                  "lymphocyte", "monocyte", "neutrophil",
                                                  "platelet")}
    assert not ds.skipped


def test_kaggle_split_layout(shared_data):
    root = shared_data / "kaggle_bloodcells"
    classes = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
    assert load_dataset(root / "TRAIN").class_counts() == {c: 500 for c in classes}
    assert load_dataset(root / "TEST").class_counts() == {c: 300 for c in classes}
    assert len(load_dataset(root / "TEST_SIMPLE")) == 71


def test_bccd_crops_and_the_shared_label_map(shared_data):
    label_map = load_label_map(WBC5)
    bccd = load_dataset(shared_data / "bccd_cropped", label_map=label_map)
    assert bccd.class_counts() == {"basophil": 3, "eosinophil": 88, "lymphocyte": 33,
                                   "monocyte": 20, "neutrophil": 207}
    pbc = load_dataset(shared_data / "pbc", label_map=label_map, check_files=False)
    # One label map puts all three sources on the same five canonical classes.
    assert pbc.class_names == bccd.class_names
    kaggle = load_dataset(shared_data / "kaggle_bloodcells" / "TEST", label_map=label_map,
                          class_names=pbc.class_names, check_files=False)
    assert kaggle.class_counts()["basophil"] == 0 and len(kaggle) == 1200
