"""Which images to explain: a few correct and misclassified images of every class, plus the
model's most confident mistakes, the same images for every method so maps can be compared.

Targets are the predicted classes: an explanation shows what the model looked at to decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Selection", "select_images", "REASONS"]

REASONS = ("correct", "error", "confident_error")


@dataclass(frozen=True)
class Selection:
    """Indices into a dataset, with why each image was picked (one of REASONS)."""

    indices: np.ndarray  # (K,) int64, in selection order
    reasons: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.indices)


def select_images(labels: np.ndarray, probs: np.ndarray, *, correct_per_class: int,
                  errors_per_class: int, most_confident_errors: int,
                  rng: np.random.Generator) -> Selection:
    """Per class (by true label) `correct_per_class` correct and `errors_per_class` misclassified
    images drawn at random, then the `most_confident_errors` most confident errors not already
    picked. Classes absent from the set, or without errors, simply contribute fewer images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    predictions = probs.argmax(axis=1)
    correct = predictions == labels
    picked: list[int] = []
    reasons: list[str] = []
    for cls in range(probs.shape[1]):
        for is_correct, count, reason in ((True, correct_per_class, "correct"),
                                          (False, errors_per_class, "error")):
            pool = np.flatnonzero((labels == cls) & (correct == is_correct))
            take = min(int(count), len(pool))
            if take > 0:
                chosen = np.sort(rng.choice(pool, size=take, replace=False))
                picked += chosen.tolist()
                reasons += [reason] * take
    errors = np.flatnonzero(~correct)
    confidence = probs[errors, predictions[errors]]
    already = set(picked)
    # Most confident first; ties broken by index so the order is stable.
    for i in errors[np.lexsort((errors, -confidence))]:
        if sum(r == "confident_error" for r in reasons) >= most_confident_errors:
            break
        if int(i) not in already:
            picked.append(int(i))
            reasons.append("confident_error")
    return Selection(np.asarray(picked, dtype=np.int64), tuple(reasons))
