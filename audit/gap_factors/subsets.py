"""The gap-factors check's forward passes: every subset of the fitted factors applied to a
subsample (from the run's pixel store) and predicted, depth first; and the example images."""

from __future__ import annotations

import numpy as np

from audit import seeds
from audit.data import Dataset
from audit.gap_factors.transforms import FactorSet, step
from audit.pixels import PixelStore, shrink
from audit.progress import progress

__all__ = ["subset_predictions", "example_images"]


def subset_predictions(dataset: Dataset, factors: FactorSet, predictor, *, pixels: PixelStore,
                       batch_size: int, seed: int,
                       base_predictions: np.ndarray | None = None,
                       desc: str = "gap factors") -> tuple[np.ndarray, int]:
    """(predicted class (2^k, N) int16 for every subset of the k factors, images predicted).

    Depth first over factors in order: each node applies one factor to its parent's batch, so a
    batch goes through 2^k - 1 transforms, not k 2^(k-1). Subsets differing only by identity
    factors share predictions; `base_predictions` (the cached outputs) stand for subset 0.
    """
    k = len(factors.factors)
    out = np.zeros((1 << k, len(dataset)), np.int16)
    n_forward = 0
    n_batches = -(-len(dataset) // batch_size)
    batches = pixels.batches(dataset, batch_size=batch_size)
    for images, indices in progress(batches, desc=desc, total=n_batches, unit="batch"):
        batch_seed = seeds.child_seed(seed, "batch", int(indices[0]))
        masks = None
        if factors.needs_masks and factors.segment_color is None:  # segmented as they are: the
            masks = pixels.masks([dataset.paths[i] for i in indices])  # store's masks
        elif factors.needs_masks:
            masks = factors.masks(images)
        stack = [(0, 0, images, masks)]
        while stack:
            j, subset, batch, batch_masks = stack.pop()
            if j == k:
                if subset == 0 and base_predictions is not None:
                    out[0, indices] = base_predictions[indices]
                else:
                    out[subset, indices] = predictor.outputs(batch)[0].argmax(axis=1)
                    n_forward += len(batch)
                continue
            stack.append((j + 1, subset, batch, batch_masks))
            factor = factors.factors[j]
            if not factor.identity:
                stack.append((j + 1, subset | 1 << j,
                              *step(factor, batch, batch_masks, seed=batch_seed)))
    for subset in range(1 << k):  # identity factors: copy from the subset without them
        for j, factor in enumerate(factors.factors):
            if factor.identity and subset >> j & 1:
                out[subset] = out[subset & ~(1 << j)]
                break
    return out, n_forward


def example_images(images: np.ndarray, factors: FactorSet, *, seed: int,
                   max_side: int = 96) -> dict[str, np.ndarray]:
    """{"before", each factor alone, "all"}: uint8 copies of `images` at <= `max_side` px."""
    masks = factors.masks(images) if factors.needs_masks else None
    shown = {"before": images}
    for factor in factors.factors:
        shown[factor.name] = factors.apply(images, [factor.name], masks=masks, seed=seed)
    shown["all"] = factors.apply(images, masks=masks, seed=seed)
    side = min(max_side, images.shape[1])
    return {name: shrink(batch, side) for name, batch in shown.items()}
