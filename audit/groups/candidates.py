"""Candidate pairs: each image's nearest neighbours in a cheap bag-of-visual-words embedding.

Verifying every pair costs O(N^2) keypoint matchings; instead each image is summarised by a
tf-idf histogram of its SIFT descriptors over a small vocabulary (k-means, seeded), counting
the descriptors of the image and of its mirror image together, so the histogram is the same
for an image, its rotations and its reflections. Copies share most of their visual words;
each image's `k` most similar images (cosine) become the candidates that geometric
verification examines. The same similarities give the null: each image's most similar
images of *other* classes, which cannot be its copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.groups.features import Keypoints
from audit.leakage.duplicates import unit_rows

__all__ = ["Vocabulary", "fit_vocabulary", "bow_embeddings", "nearest_pairs"]

_MAX_TRAINING_DESCRIPTORS = 30_000
_KMEANS_ITERATIONS = 10
_BLOCK_ELEMENTS = 2**22  # query rows x reference columns per similarity block (16 MB float32)


@dataclass(frozen=True)
class Vocabulary:
    centres: np.ndarray  # (words, 128) float32

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest word of each descriptor (squared Euclidean distance)."""
        if len(descriptors) == 0:
            return np.empty(0, np.int64)
        d = descriptors.astype(np.float32)
        scores = d @ self.centres.T - 0.5 * np.sum(self.centres**2, axis=1)
        return scores.argmax(axis=1)


def fit_vocabulary(keypoint_sets: list[Keypoints], *, words: int, seed: int) -> Vocabulary:
    """k-means words from a seeded sample of the descriptors of all the sets."""
    pool = [d for kp in keypoint_sets for pair in kp.descriptors for d in pair if len(d)]
    if not pool:
        return Vocabulary(np.zeros((1, 128), np.float32))
    rng = np.random.default_rng(seed)
    sizes = np.array([len(d) for d in pool])
    take = min(int(sizes.sum()), _MAX_TRAINING_DESCRIPTORS)
    # a descriptor sample spread over every image, not the first images' descriptors
    picks = np.sort(rng.choice(int(sizes.sum()), take, replace=False))
    sample = np.concatenate(pool)[picks].astype(np.float32) if take < sizes.sum() else \
        np.concatenate(pool).astype(np.float32)
    k = max(1, min(words, len(sample) // 4))
    return Vocabulary(_lloyd(sample, k, rng=rng))


def _lloyd(sample: np.ndarray, k: int, *, rng: np.random.Generator,
           iterations: int = _KMEANS_ITERATIONS) -> np.ndarray:
    """Plain k-means from k seeded sample points: a vocabulary for candidate ranking needs
    no converged optimum, and a few matrix products beat library k-means that oversubscribe
    threads on a shared machine (sklearn's took 84 s for 27k descriptors under load)."""
    centres = sample[np.sort(rng.choice(len(sample), k, replace=False))].copy()
    for _ in range(iterations):
        nearest = Vocabulary(centres).assign(sample)
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, sample)
        counts = np.bincount(nearest, minlength=k)
        filled = counts > 0  # an empty word keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def bow_embeddings(keypoint_sets: list[Keypoints], vocabulary: Vocabulary) -> list[np.ndarray]:
    """Unit tf-idf histograms (square-rooted counts) per image of each set, flip invariant."""
    words = len(vocabulary.centres)
    counts = []
    for kp in keypoint_sets:
        owner = np.concatenate([np.full(len(p) + len(m), i, np.int64)
                                for i, (p, m) in enumerate(kp.descriptors)] or [np.empty(0, int)])
        assigned = np.concatenate([vocabulary.assign(np.concatenate(
            [d for pair in kp.descriptors[s:s + 256] for d in pair]))
            for s in range(0, len(kp), 256)] or [np.empty(0, int)])
        rows = np.bincount(owner * words + assigned, minlength=len(kp) * words)
        counts.append(rows.reshape(len(kp), words).astype(np.float32))
    stacked = np.concatenate(counts) if counts else np.zeros((0, words), np.float32)
    document_frequency = np.count_nonzero(stacked, axis=0)
    idf = np.log((1 + len(stacked)) / (1 + document_frequency)).astype(np.float32) + 1.0
    out = []
    for rows in counts:
        out.append(unit_rows(np.sqrt(rows) * idf))
    return out


def nearest_pairs(query: np.ndarray, reference: np.ndarray, query_labels: np.ndarray,
                  reference_labels: np.ndarray, *, k: int, same_class: bool,
                  same_set: bool, groups: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(query index, reference index) of each query's `k` most similar references among those
    of its own class (`same_class`) or of other classes (not `same_class`, the null).

    `same_set`: query and reference are one set; an image is not its own neighbour. With
    `groups` (one set, a group id per image) only images of other groups are neighbours:
    the candidates that a group's own copies would otherwise crowd out. Ties break by
    index, so the pairs are deterministic.
    """
    n, m = len(query), len(reference)
    if n == 0 or m == 0 or k < 1:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(1, m))
    rows, cols = [], []
    for start in range(0, n, step):
        stop = min(start + step, n)
        sims = query[start:stop] @ reference.T
        allowed = query_labels[start:stop, None] == reference_labels[None, :]
        if not same_class:
            allowed = ~allowed
        if same_set:
            allowed[np.arange(stop - start), np.arange(start, stop)] = False
        if groups is not None:
            allowed &= groups[start:stop, None] != groups[None, :]
        sims = np.where(allowed, sims, -np.inf)
        kk = min(k, m)
        # stable order: similarity descending, then index ascending
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        valid = np.isfinite(np.take_along_axis(sims, top, axis=1))
        r, c = np.nonzero(valid)
        rows.append(r + start)
        cols.append(top[r, c])
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)
