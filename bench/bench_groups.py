"""Source-group discovery (audit.groups): speed, peak memory and accuracy against known truth.

    python bench/bench_groups.py [--sets kaggle_train,kaggle_test,synthetic] [--size 224]
        [--synthetic 200x4@112,500x4@128] [--min-inliers 12] [--out results.json]

- kaggle_train: `kaggle_bloodcells/TRAIN` (2,000 images, augmented copies of 277 originals,
  fewer in a 500-per-class sample): number of groups and their sizes; and the share of a
  seeded random 80/20 split's validation images with a verified copy in its training part
  (`match_sources`), against the same share for a split by discovered groups.
- kaggle_test: `TEST` (1,200 copies of 71 originals). Truth from `TEST_SIMPLE`, the originals:
  each TEST image's verified original (`match_sources`), originals that are copies of one
  another (the release holds duplicates) merged by `discover_groups` on TEST_SIMPLE. Reports
  the share of TEST images with a verified original, and on those the adjusted Rand index,
  purity (images in their group's majority source) and groups merging two sources.
  Also TEST against TRAIN (disjoint originals): the share that should be 0.
- synthetic: `audit.groups.copies.write_copies` (render, then rotate, flip, shift with black
  fill, shear, zoom, recolour), N sources x C copies at S px: ARI and merged groups.

Speed: images/s of the keypoint stage against a bare decode of the same images at the same
size (the baseline, measured in the same run), pairs verified/s, and the split of time
between keypoints, candidates and verification; wall and CPU seconds (CPU time, all threads,
is what another process's load does not inflate); peak RSS per set (VmHWM, rewound between
sets). Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, machine_line, peak_rss_mb, reset_peak_rss  # noqa: E402

from audit.data import iter_batches, load_dataset  # noqa: E402
from audit.groups import GroupConfig, discover_groups, match_sources  # noqa: E402
from audit.groups.copies import write_copies  # noqa: E402

DATA = Path(os.environ.get("CELLAUDIT_DATA", Path(__file__).resolve().parents[2] / "shared" /
                           "data")).resolve()
KAGGLE = DATA / "kaggle_bloodcells"


def decode_baseline(dataset, size: int) -> Timer:
    with Timer() as timer:
        for _ in iter_batches(dataset, image_size=size, resize="crop", batch_size=64):
            pass
    return timer


def speed(found, timer: Timer, baseline: Timer, n: int) -> dict:
    t = found.timings
    verified = found.pairs_examined + found.null_pairs_examined
    return {"images": n, "wall_s": round(timer.seconds, 1), "cpu_s": round(timer.cpu_seconds, 1),
            "images_per_s": round(n / timer.seconds, 1),
            "keypoints_images_per_s": round(n / max(t["keypoints"], 1e-9), 1),
            "decode_only_images_per_s": round(n / max(baseline.seconds, 1e-9), 1),
            "keypoints_vs_decode": round(t["keypoints"] / max(baseline.seconds, 1e-9), 2),
            "pairs_verified": verified,
            "pairs_verified_per_s": round(verified / max(t["verification"], 1e-9), 1),
            "stage_seconds": t, "peak_rss_mb": round(peak_rss_mb())}


def purity(truth: np.ndarray, found: np.ndarray) -> dict:
    """Share of images in their group's majority source; groups holding several sources."""
    majority = sum(Counter(truth[found == g]).most_common(1)[0][1] for g in np.unique(found))
    merged = sum(len(set(truth[found == g])) > 1 for g in np.unique(found))
    return {"ari": round(float(adjusted_rand_score(truth, found)), 4),
            "purity": round(majority / len(truth), 4), "groups": int(len(np.unique(found))),
            "true_sources": int(len(np.unique(truth))), "groups_merging_sources": int(merged)}


def summary(found) -> dict:
    return {"n_groups": found.n_groups, "sizes": found.size_distribution(),
            "threshold": found.threshold, "null": found.null.to_dict(),
            "graph": found.graph.to_dict()}


def kaggle_train(config: GroupConfig) -> dict:
    from model.split import split_dataset

    train = load_dataset(KAGGLE / "TRAIN", check_files=False)
    baseline = decode_baseline(train, config.image_size)
    reset_peak_rss()
    with Timer() as timer:
        found = discover_groups(train, config=config)
    out = {"groups": summary(found), "speed": speed(found, timer, baseline, len(train))}
    # a verified copy in training: random split vs split by the discovered groups
    for name, groups in (("random_split", None), ("discovered_split", found.labels())):
        tr, va = split_dataset(train, val_fraction=0.2, seed=config.seed, groups=groups)
        matched = match_sources(train.subset(va), train.subset(tr), config=config)
        out[name] = {"validation": int(len(va)), "with_copy_in_train": int(matched.has_copy.sum()),
                     "share": round(matched.share, 4)}
    return out


def kaggle_test(config: GroupConfig) -> dict:
    test = load_dataset(KAGGLE / "TEST", check_files=False)
    simple = load_dataset(KAGGLE / "TEST_SIMPLE", check_files=False)
    originals = discover_groups(simple, config=config)
    to_original = match_sources(test, simple, config=config)
    truth = np.where(to_original.has_copy, originals.group[np.maximum(to_original.index, 0)], -1)
    baseline = decode_baseline(test, config.image_size)
    reset_peak_rss()
    with Timer() as timer:
        found = discover_groups(test, config=config)
    known = truth >= 0
    train = load_dataset(KAGGLE / "TRAIN", check_files=False)
    against_train = match_sources(test, train, config=config)
    return {"groups": summary(found), "speed": speed(found, timer, baseline, len(test)),
            "originals": {"images": len(simple), "distinct": originals.n_groups},
            "matched_to_an_original": round(float(known.mean()), 4),
            "against_originals": purity(truth[known], found.group[known]),
            "test_with_copy_in_train": round(against_train.share, 4)}


def synthetic(spec: str, config: GroupConfig) -> dict:
    counts, size = spec.split("@")
    n_sources, copies = (int(v) for v in counts.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv = write_copies(tmp, n_sources=n_sources, copies=copies, size=int(size), seed=0)
        data = load_dataset(truth_csv, check_files=False)
        cfg = GroupConfig(**{**config.to_dict(), "image_size": int(size)})
        baseline = decode_baseline(data, cfg.image_size)
        reset_peak_rss()
        with Timer() as timer:
            found = discover_groups(data, config=cfg)
        truth = np.asarray(data.groups)
    return {"groups": summary(found), "speed": speed(found, timer, baseline, len(data)),
            "against_truth": purity(truth, found.group)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="kaggle_train,kaggle_test,synthetic")
    parser.add_argument("--size", type=int, default=224, help="working size for kaggle")
    parser.add_argument("--synthetic", default="200x4@112,500x4@128",
                        help="comma-separated NxC@S: N sources, C copies, S px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-inliers", type=int, default=GroupConfig.min_inliers,
                        help="floor of the calibrated threshold (default: GroupConfig's)")
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    config = GroupConfig(image_size=args.size, seed=args.seed, min_inliers=args.min_inliers)
    results: dict = {"machine": machine_line(), "config": config.to_dict()}
    for name in args.sets.split(","):
        if name == "kaggle_train":
            results["kaggle_train"] = kaggle_train(config)
        elif name == "kaggle_test":
            results["kaggle_test"] = kaggle_test(config)
        elif name == "synthetic":
            results["synthetic"] = {spec: synthetic(spec, config)
                                    for spec in args.synthetic.split(",")}
        else:
            parser.error(f"--sets: unknown set '{name}'")
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    results["machine_after"] = machine_line()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
