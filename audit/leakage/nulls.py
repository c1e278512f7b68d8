"""Null distributions: what unrelated images look like on the sets at hand, and the
thresholds they allow.

A copy shares its source's label, so an image's nearest neighbour of another class is as
alike as an unrelated image gets: `cross_class_null` measures that for the per-image
thresholds (`calibrated_hash_threshold`, `calibrated_cosine_threshold`), and
`class_matched_nearest` draws an observed and a null score alike for the set level.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["cross_class_null", "class_matched_nearest", "calibrated_hash_threshold",
           "calibrated_cosine_threshold"]


def cross_class_null(query_labels: np.ndarray, ref_labels: np.ndarray,
                     nearest: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each query's similarity to its nearest reference image of *another* class.

    Copies of one cell share its label, so these pairs are unrelated images as alike as the
    data makes them: a null distribution measured on the sets at hand, in the same
    embedding space. (For ImageNet MobileNetV2 features it matches the nearest unrelated
    same-class image closely: 99th percentile of cosine 0.929 vs 0.937 on PBC, 0.913 vs
    0.907 on kaggle_bloodcells.) `nearest(query_idx, ref_idx)` returns the nearest
    similarity of each query among those references. Queries whose class is alone: skipped.
    """
    query_labels, ref_labels = np.asarray(query_labels), np.asarray(ref_labels)
    out = []
    for c in np.unique(query_labels):
        others = np.flatnonzero(ref_labels != c)
        if others.size:
            out.append(np.asarray(nearest(np.flatnonzero(query_labels == c), others), float))
    return np.concatenate(out) if out else np.empty(0)


def class_matched_nearest(query_labels: np.ndarray, ref_labels: np.ndarray,
                          nearest: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                          rng: np.random.Generator, max_refs: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Per query, aligned with the queries: `nearest(query_idx, ref_idx)` (a score of each
    query's nearest among those references) against the references of its own class (where
    copies live), and against as many references of one other class, drawn at random per
    query (which cannot hold its copies): an observed value and a null value drawn alike.

    One class, not a mix: a mix of classes gives each query a multi-modal spread of
    similarities that one class never has. The nearest of K candidates grows with K (3x as
    many other-class references moved the share estimate for kaggle_bloodcells TEST against
    TRAIN by -0.24), so both sides get K = min(own, other) references, a random subset of
    the larger class; subsetting the own class can only miss copies. `max_refs` bounds K
    (the cost is queries x K similarities; see `audit.leakage.neighbors.SET_LEVEL_MAX_REFS`).
    NaN where a side is empty.
    """
    query_labels, ref_labels = np.asarray(query_labels), np.asarray(ref_labels)
    observed, null = np.full(len(query_labels), np.nan), np.full(len(query_labels), np.nan)
    ref_classes = np.unique(ref_labels)
    for c in np.unique(query_labels):
        queries = np.flatnonzero(query_labels == c)
        own, others = np.flatnonzero(ref_labels == c), ref_classes[ref_classes != c]
        if own.size == 0 or others.size == 0:
            continue
        drawn = others[rng.integers(0, others.size, queries.size)]
        for other_class in others:
            picked, other = queries[drawn == other_class], np.flatnonzero(ref_labels == other_class)
            if picked.size == 0:
                continue
            k = min(own.size, other.size, max_refs or own.size)
            same_refs, other_refs = (np.sort(rng.choice(refs, k, replace=False))
                                     if refs.size > k else refs for refs in (own, other))
            observed[picked] = nearest(picked, same_refs)
            null[picked] = nearest(picked, other_refs)
    return observed, null


def calibrated_hash_threshold(null_distances: np.ndarray, *, max_distance: int,
                              max_rate: float) -> int:
    """The largest threshold <= `max_distance` that at most `max_rate` of the null falls
    within (-1: even identical hashes are common among unrelated images)."""
    null = np.asarray(null_distances)
    for threshold in range(int(max_distance), -1, -1):
        if null.size == 0 or np.mean(null <= threshold) <= max_rate:
            return threshold
    return -1


def calibrated_cosine_threshold(null_cosines: np.ndarray, *, minimum: float,
                                max_rate: float) -> float:
    """The smallest threshold >= `minimum` that at most `max_rate` of the null reaches.

    Only ever raised. When most of the null reaches `minimum` - embeddings that make
    unrelated images alike, as a collapsed or barely trained model's do - the tail of a
    small null is no safe bound: the threshold is infinite, i.e. no embedding matches.
    """
    null = np.asarray(null_cosines, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0:
        return float(minimum)
    if np.mean(null >= minimum) > 0.5:
        return float("inf")
    level = float(np.quantile(null, 1.0 - max_rate, method="higher"))
    return max(float(minimum), float(np.nextafter(level, np.inf)))
