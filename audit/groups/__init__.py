"""Source-group discovery: which images are augmented copies of the same source cell.

Public medical image sets are often built by rotating, flipping, shifting (with edge fill),
shearing, zooming and recolouring a few hundred crops; a random split then puts copies of
one cell on both sides. Perceptual hashes and embeddings do not see through these
transforms; keypoints with geometric verification do.

How
    1. Keypoints: SIFT on each image decoded by `audit.data.iter_batches` at
       `GroupConfig.image_size` (centre square crop, as training sees it), as is and mirrored
       (descriptors are not reflection invariant), constant black edge fill masked out.
    2. Candidates: each image's `neighbours` most similar images of its own class in a
       flip-invariant bag-of-visual-words embedding, under a budget of `max_pairs`.
    3. Verification: ratio-test matches, one-to-one, affine RANSAC; score = inliers.
    4. Threshold: calibrated on a null of pairs known to be different cells (each image's
       most similar images of other classes), the smallest inlier count reached by at most
       `max_null_rate` of the null and at least `min_inliers`.
    5. Groups: connected components of pairs at or above the threshold, each edge either
       strong (>= `strong_factor` x threshold) or confirmed by a triangle; weak unconfirmed
       links may attach a lone image but never join two groups (chaining guard).
    6. `rounds - 1` more rounds: each image's candidates are then its most similar images
       outside its current group (the links its own copies crowded out), until no group
       joins or the budget is spent.

API
    `discover_groups(dataset, *, config=GroupConfig()) -> SourceGroups`
        `group` (N,) int group id per image (0.., numbered by first image; `labels()` gives
        "src-<id>" strings for a manifest or `split_dataset(groups=...)`); `n_groups`;
        `sizes` and `size_distribution()` (singletons, median, p90, max);
        `per_class(dataset)` ({class: images, groups}: distinct source cells behind each class;
        a group holding copies filed under two labels counts in both);
        `threshold` (inliers a pair needs to link two images);
        `null` (`NullStatistics`: n_pairs, median, q99, max inliers of the other-class pairs,
        `rate_at_threshold` = share of them that would have linked, `rate_upper_95` = its
        95% upper bound per pair; times `pairs_examined` it bounds the expected number of
        false links); `graph` (`GraphSummary`: edges at threshold, kept, dropped by the
        chaining guard, `merges_prevented` = groups the guard kept apart);
        `pairs_examined` (all rounds), `null_pairs_examined`, `rounds`; `sample` (verified pairs with inlier counts
        and mirroring: a seeded random half and the weakest links kept, for thumbnails);
        `timings` (seconds: keypoints, candidates, verification, grouping);
        `to_dict()` (JSON-able, no per-image arrays).
    `match_sources(query_dataset, reference_dataset, *, config=GroupConfig()) -> SourceMatches`
        per query image `index` of a verified copy in the reference (-1: none) and best
        `inliers`; `has_copy`, `share` (the share of the query set with a copy in the
        reference: for the leakage check, an evaluation set against training); `threshold`,
        `null`, `pairs_examined`, `timings`, `to_dict()`.
    `write_groups_manifest(path, dataset, groups)`: CSV path,label,group, written atomically.

Measured (bench/bench_groups.py, docs/case-study.md section 2b): kaggle_bloodcells TRAIN,
2,000 images -> 260 groups (277 originals in the release); TEST -> 68 groups, ARI 0.999
against its originals; a discovered split leaves 0.5% of validation with a verified copy in
training, against 97% for a random split. Synthetic copies: ARI 0.94 (200 cells x 4).

Limits: a copy whose centre square shares too little with its source's (a large shift) is
linked only through other copies (4.7% of kaggle TEST could not be matched to its original);
candidates are looked for within a class (cross-class copies are found only among the null
pairs, and counted in `null.cross_class_copies`); the other-class null does not see chance
matches between look-alike cells of one class (on 500 synthetic cells x 4 copies, 4 of 627
groups joined cells at the default `min_inliers` 12, none at 15).
"""

from audit.groups.calibrate import NullStatistics
from audit.groups.discover import (
    GroupConfig,
    SourceGroups,
    SourceMatches,
    VerifiedPair,
    discover_groups,
    match_sources,
)
from audit.groups.graph import GraphSummary
from audit.groups.manifest import write_groups_manifest

__all__ = ["GroupConfig", "SourceGroups", "SourceMatches", "VerifiedPair", "NullStatistics",
           "GraphSummary", "discover_groups", "match_sources", "write_groups_manifest"]
