"""Source-group discovery (audit.groups) against synthetic truth, its parts on hand-made
cases, and the `audit groups` command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from audit.cli import main
from audit.data import load_dataset
from audit.groups import GroupConfig, discover_groups, match_sources
from audit.groups.calibrate import calibrate_threshold
from audit.groups.copies import augmented_copy, write_copies
from audit.groups.features import describe_image
from audit.groups.graph import guarded_components
from audit.groups.verify import verify_pair
from audit.synthetic import render_cell

SIZE = 112
CONFIG = GroupConfig(image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """200 synthetic cells, 4 augmented copies each (rotation, flips, shift with black fill,
    shear, zoom, colour): 800 images whose true source is the manifest's group."""
    root = tmp_path_factory.mktemp("copies")
    truth = write_copies(root, n_sources=200, copies=4, size=SIZE, seed=0)
    return load_dataset(truth)


@pytest.fixture(scope="module")
def found(copies):
    return discover_groups(copies, config=CONFIG)


def test_groups_recover_the_sources(copies, found):
    truth = np.asarray(copies.groups)
    assert adjusted_rand_score(truth, found.group) >= 0.9
    merged = sum(len(set(truth[found.group == g])) > 1 for g in range(found.n_groups))
    assert merged <= 0.02 * found.n_groups, (merged, found.n_groups)
    # the sizes describe the same groups
    assert found.sizes.sum() == len(copies) and len(found.sizes) == found.n_groups
    per_class = found.per_class(copies)
    assert sum(c["images"] for c in per_class.values()) == len(copies)
    # no copy is filed under two labels here, so each group lies in one class
    assert sum(c["groups"] for c in per_class.values()) == found.n_groups
    assert all(c["groups"] >= 36 for c in per_class.values())  # 40 cells per class


def test_threshold_is_calibrated_on_other_class_pairs(found):
    assert found.threshold >= CONFIG.min_inliers
    assert found.null.n_pairs > 0 and found.null.max < found.threshold
    assert found.null_pairs_examined == found.null.n_pairs + found.null.cross_class_copies
    assert 0 < found.pairs_examined <= CONFIG.neighbours * 800
    assert found.sample and all(p.inliers >= found.threshold for p in found.sample)
    assert set(found.timings) == {"keypoints", "candidates", "verification", "grouping"}
    import json

    json.dumps(found.to_dict(), allow_nan=False)


def test_same_seed_same_groups(copies, found):
    subset = copies.subset(np.arange(0, 160))  # 40 cells x 4 copies
    again = discover_groups(subset, config=CONFIG)
    once_more = discover_groups(subset, config=CONFIG)
    assert np.array_equal(again.group, once_more.group)
    assert again.threshold == once_more.threshold


def test_match_sources_finds_each_copy_of_a_reference_cell(copies):
    first, second = (copies.subset(np.arange(k, 400, 4)) for k in (0, 1))  # 100 cells
    other = copies.subset(np.arange(402, 800, 4))  # copies of the other 100 cells
    matched = match_sources(first, second, config=CONFIG)
    hits = matched.has_copy
    assert matched.share >= 0.8
    truth_first, truth_second = np.asarray(first.groups), np.asarray(second.groups)
    assert np.all(truth_first[hits] == truth_second[matched.index[hits]])
    unrelated = match_sources(other, second, config=CONFIG)
    assert unrelated.share <= 0.02


def test_a_mirrored_copy_matches_only_through_the_mirrored_descriptors():
    import cv2

    rng = np.random.default_rng(5)
    image, _ = render_cell("neutrophil", size=160, rng=rng)
    sift = cv2.SIFT_create(nfeatures=500, contrastThreshold=0.02)
    from audit.groups.features import Keypoints

    described = [describe_image(im, sift) for im in (image, np.ascontiguousarray(image[:, ::-1]))]
    kp = Keypoints(tuple((d[0][0], d[1][0]) for d in described),
                   tuple((d[0][1], d[1][1]) for d in described), 160)
    score = verify_pair(kp, 1, kp, 0)
    assert score.mirrored and score.inliers >= 20


def test_black_edge_fill_is_masked_out():
    import cv2

    rng = np.random.default_rng(1)
    image, _ = render_cell("lymphocyte", size=128, rng=rng)
    copy = augmented_copy(image, rng)
    sift = cv2.SIFT_create(nfeatures=500, contrastThreshold=0.02)
    (points, _), _ = describe_image(copy, sift)
    fill = copy.max(axis=2) < 8
    xs, ys = np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)
    assert not fill[np.clip(ys, 0, 127), np.clip(xs, 0, 127)].any()


def test_calibration_sets_apart_copies_under_two_labels():
    chance = np.r_[np.zeros(3000, int), np.full(500, 3), np.full(300, 4), np.full(20, 5)]
    contaminated = np.r_[chance, np.arange(16, 96)]  # 80 copies filed under two labels
    threshold, null, copies = calibrate_threshold(contaminated, minimum=12, max_rate=1e-3)
    assert threshold == 12 and null.cross_class_copies == 80 and copies.sum() == 80
    assert null.max == 5
    # a tail that rises without a gap is chance, not copies: the threshold rises with it
    smooth = np.r_[chance, np.repeat(np.arange(6, 40), 3)]
    threshold, null, copies = calibrate_threshold(smooth, minimum=12, max_rate=1e-3)
    assert null.cross_class_copies == 0 and threshold >= 39


def test_chaining_guard_refuses_one_weak_link_between_two_groups():
    # two triangles (0,1,2) and (3,4,5) joined by one weak link 2-3; a weak chain 6-7-8
    rows = np.array([0, 1, 0, 3, 4, 3, 2, 6, 7])
    cols = np.array([1, 2, 2, 4, 5, 5, 3, 7, 8])
    inliers = np.array([15, 15, 15, 15, 15, 15, 13, 13, 13])
    groups, summary = guarded_components(9, rows, cols, inliers, threshold=12, strong=24)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert summary.refused == 1 and summary.merges_prevented == 1 and summary.attached == 2
    # a strong link is trusted
    inliers[6] = 30
    groups, summary = guarded_components(9, rows, cols, inliers, threshold=12, strong=24)
    assert groups.tolist() == [0] * 6 + [1] * 3 and summary.merges_prevented == 0


def test_groups_cli_writes_a_manifest(copies, tmp_path, capsys):
    subset = copies.subset(np.arange(0, 120))  # 30 cells x 4 copies
    manifest = tmp_path / "in.csv"
    with manifest.open("w") as fh:
        fh.write("path,label\n")
        for path, label in zip(subset.paths, subset.labels, strict=True):
            fh.write(f"{path},{subset.class_names[label]}\n")
    out = tmp_path / "groups.csv"
    assert main(["groups", str(manifest), "--out", str(out), "--image-size", str(SIZE)]) == 0
    err = capsys.readouterr().err
    assert "groups in 120 images" in err and "threshold" in err
    rows = list(csv.DictReader(open(out)))
    assert [r["label"] for r in rows] == [subset.class_names[i] for i in subset.labels]
    assert adjusted_rand_score(subset.groups, [r["group"] for r in rows]) >= 0.8
    # the manifest is a dataset of its own, with groups
    assert load_dataset(out).groups is not None


@pytest.mark.parametrize("args, expected", [
    (["MISSING", "--out", "g.csv"], "does not exist"),
    (["DATA", "--out", "g.txt"], "--out"),
    (["DATA", "--out", "g.csv", "--image-size", "8"], "--image-size"),
    (["DATA", "--out", "g.csv", "--neighbours", "0"], "--neighbours"),
])
def test_groups_cli_bad_input_is_one_line_exit_2(copies, tmp_path, capsys, args, expected):
    args = [str(tmp_path / "missing") if a == "MISSING" else
            str(tmp_path / a) if a.startswith("g.") else
            str(copies.root) + "/truth.csv" if a == "DATA" else a for a in args]
    assert main(["groups", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.slow
def test_train_group_split_discovered_keeps_each_group_on_one_side(copies, tmp_path):
    from model.io import read_metadata

    subset = copies.subset(np.arange(0, 160))  # 40 cells x 4 copies, 5 classes
    manifest = tmp_path / "cells.csv"
    with manifest.open("w") as fh:
        fh.write("path,label\n")
        for path, label in zip(subset.paths, subset.labels, strict=True):
            fh.write(f"{path},{subset.class_names[label]}\n")
    out = tmp_path / "d.keras"
    assert main(["train", str(manifest), "--out", str(out), "--group-split", "discovered",
                 "--weights", "none", "--input-size", "32", "--alpha", "0.35",
                 "--head-epochs", "0", "--finetune-epochs", "1", "--finetune-from", "Conv1",
                 "--no-affine", "--no-stain"]) == 0
    rows = list(csv.DictReader(open(out.with_name("d.split.csv"))))
    sides: dict[str, set] = {}
    for row in rows:
        sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {"train", "validation"} == set().union(*sides.values())
    # the groups are the discovered sources, not one per image: copies of a cell stay together
    truth = dict(zip(subset.paths, subset.groups, strict=True))
    assert len(rows) == 160
    assert adjusted_rand_score([truth[r["path"]] for r in rows], [r["group"] for r in rows]) >= 0.8
    split = read_metadata(out)["split"]
    assert split["n_groups"] == len(sides) and 34 <= split["n_groups"] <= 60
    assert split["group_discovery"]["n_groups"] == split["n_groups"]
    assert split["group_discovery"]["threshold"] >= 12


@pytest.mark.realdata
def test_kaggle_test_copies_find_their_original_and_none_in_train(shared_data):
    """Real augmented copies: a seeded sample of kaggle_bloodcells TEST against TEST_SIMPLE
    (its 71 originals) and against TRAIN (made from other originals)."""
    kaggle = shared_data / "kaggle_bloodcells"
    test = load_dataset(kaggle / "TEST", check_files=False)
    rng = np.random.default_rng(0)
    sample = test.subset(np.sort(rng.choice(len(test), 120, replace=False)))
    originals = load_dataset(kaggle / "TEST_SIMPLE", check_files=False)
    matched = match_sources(sample, originals)
    assert matched.share >= 0.85
    assert matched.null.max < matched.threshold  # other-class originals never match
    train = load_dataset(kaggle / "TRAIN", check_files=False)
    train_sample = train.subset(np.sort(rng.choice(len(train), 200, replace=False)))
    assert match_sources(sample, train_sample).share <= 0.02
