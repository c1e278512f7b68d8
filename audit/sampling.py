"""Seeded subsamples, uniform or class-stratified: the budgets that bound per-image work on
large sets."""

from __future__ import annotations

import numpy as np

__all__ = ["subsample", "stratified_subsample"]


def subsample(n: int, max_n: int, *, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `max_n` of n items (all of them when n <= max_n, without
    drawing from `rng`), uniformly: blind to classes (see `stratified_subsample`)."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def stratified_subsample(labels: np.ndarray, max_n: int, *, rng: np.random.Generator
                         ) -> np.ndarray:
    """Sorted indices of at most `max_n` items keeping class proportions (largest remainder;
    every present class keeps at least one item when max_n allows)."""
    labels = np.asarray(labels)
    if len(labels) <= max_n:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * max_n / counts.sum()
    take = np.maximum(np.floor(quota).astype(int), 1 if max_n >= len(classes) else 0)
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= max_n:
            break
        take[i] += 1
    while take.sum() > max_n:  # minimum-one rule overshot: trim the largest quota
        take[np.argmax(take)] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, np.minimum(take, counts), strict=True)]
    return np.sort(np.concatenate(picked))
