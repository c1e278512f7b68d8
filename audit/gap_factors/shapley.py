"""The game the gap-factors check plays: accuracy of every subset of factors applied (priors by
reweighting, not as a transform), and each factor's Shapley value of it. Pure arrays."""

from __future__ import annotations

from math import factorial

import numpy as np

__all__ = ["DIRECTIONS", "shapley_matrix", "reweighted_accuracy", "accuracy_table", "gap_factor_values",
           "subset_label"]

DIRECTIONS = ("undo", "reproduce")  # shifted -> reference, reference -> shifted

def shapley_matrix(n_players: int) -> np.ndarray:
    """W (n, 2^n) with Shapley values = W @ v for a game v indexed by bitmask (bit i = player i):
    phi_i = sum over S without i of |S|! (n - |S| - 1)! / n! (v(S + i) - v(S))."""
    size = 1 << n_players
    bits = np.array([bin(s).count("1") for s in range(size)])
    weight = [factorial(k) * factorial(n_players - k - 1) / factorial(n_players)
              for k in range(n_players)]
    matrix = np.zeros((n_players, size))
    for i in range(n_players):
        without = np.array([s for s in range(size) if not s >> i & 1], dtype=int)
        w = np.array([weight[bits[s]] for s in without])
        matrix[i, without | 1 << i] += w
        matrix[i, without] -= w
    return matrix


def reweighted_accuracy(correct: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                        n_classes: int) -> np.ndarray:
    """Accuracy of each row of `correct` (M, n); with `weights` (C,), per-class accuracy weighted
    by them, renormalised over the classes present (an absent class has no accuracy)."""
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    if weights is None:
        return correct.mean(axis=1)
    onehot = np.eye(n_classes)[np.asarray(labels)]
    counts = onehot.sum(axis=0)
    w = np.where(counts > 0, np.asarray(weights, float), 0.0)
    if w.sum() <= 0:
        return correct.mean(axis=1)
    return (correct @ onehot / np.maximum(counts, 1)) @ (w / w.sum())


def accuracy_table(correct: np.ndarray, labels: np.ndarray, *, other_priors: np.ndarray | None,
                   n_classes: int) -> np.ndarray:
    """Accuracy per subset: rows of `correct` (2^k image subsets), then, with `other_priors`,
    the same reweighted to them (subset index + 2^k: the priors bit is the highest)."""
    plain = reweighted_accuracy(correct, labels, None, n_classes)
    if other_priors is None:
        return plain
    return np.concatenate([plain, reweighted_accuracy(correct, labels, other_priors, n_classes)])


def _priors(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes) / max(len(labels), 1)


def gap_factor_values(ref_correct: np.ndarray, shifted_correct: np.ndarray,
                       ref_labels: np.ndarray, shifted_labels: np.ndarray, *, n_classes: int,
                       priors: bool, directions=DIRECTIONS) -> dict:
    """{"gap", "<direction>": game values v (2^players,)} from per-subset correctness.

    `ref_correct` (2^k or 1, n_ref) and `shifted_correct` (2^k or 1, n_shifted): row 0 is the
    untransformed set, row s the set transformed by the image factors in bitmask s (toward the
    other set). undo: v(S) = acc(shifted after S) - acc(shifted); reproduce: v(S) = acc(ref) -
    acc(ref after S). With `priors`, the highest bit reweights to the other set's classes.
    """
    ref_labels, shifted_labels = np.asarray(ref_labels), np.asarray(shifted_labels)
    p_ref, p_sh = _priors(ref_labels, n_classes), _priors(shifted_labels, n_classes)
    out = {"gap": float(np.mean(ref_correct[0]) - np.mean(shifted_correct[0]))}
    if "undo" in directions:
        table = accuracy_table(shifted_correct, shifted_labels, n_classes=n_classes,
                               other_priors=p_ref if priors else None)
        out["undo"] = table - table[0]
    if "reproduce" in directions:
        table = accuracy_table(ref_correct, ref_labels, n_classes=n_classes,
                               other_priors=p_sh if priors else None)
        out["reproduce"] = table[0] - table
    return out


def subset_label(subset: int, names: list[str]) -> str:
    return "+".join(n for i, n in enumerate(names) if subset >> i & 1) or "none"
