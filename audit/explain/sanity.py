"""Model-randomisation sanity check (Adebayo et al. 2018): a map that explains the model must
change when the model's top layers are re-initialised. A method whose maps stay the same is
showing the image (edges, the cell's outline), not what the model learned.

The copy re-initialises the last `n_layers` layers that hold weights, counted from the output
and descending into a nested backbone; 9 on MobileNetV2 = the `logits` Dense, `Conv_1` with
its BatchNorm and the three convolutions and BatchNorms of `block_16`. Kernels get fresh normal
values with the standard deviation of the trained ones (so activations keep their scale),
biases and BatchNorm shifts/means become 0, BatchNorm scales/variances 1. The trained model is
not touched.
"""

from __future__ import annotations

import keras
import numpy as np
from scipy import stats

__all__ = ["weighted_layers", "randomised_copy", "rank_correlations"]


def weighted_layers(model) -> list:
    """Layers holding weights, in graph order, with nested models' layers inlined."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += weighted_layers(layer)
        elif layer.weights:
            out.append(layer)
    return out


def _fresh(name: str, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    name = name.lower()
    if any(key in name for key in ("gamma", "moving_variance")):
        return np.ones_like(value)
    if any(key in name for key in ("beta", "bias", "moving_mean")):
        return np.zeros_like(value)
    scale = float(np.std(value)) or 0.05
    return rng.normal(0.0, scale, value.shape).astype(value.dtype)


def randomised_copy(model, *, n_layers: int, rng: np.random.Generator):
    """(copy of `model` with its last `n_layers` weighted layers re-initialised, their names)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layers = weighted_layers(copy)[::-1][:max(0, int(n_layers))]
    for layer in layers:
        for variable in layer.weights:
            variable.assign(_fresh(variable.path if hasattr(variable, "path") else variable.name,
                                   np.asarray(variable.numpy()), rng))
    return copy, [layer.name for layer in layers]


def rank_correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Spearman correlation per image pair.

    A constant map has no ranking: against a non-constant map the pair counts as 0 (nothing in
    common, e.g. Grad-CAM going all-zero after randomisation); two constant maps give NaN.
    """
    out = np.full(len(maps_a), np.nan)
    for i, (a, b) in enumerate(zip(maps_a, maps_b, strict=True)):
        a, b = np.ravel(a), np.ravel(b)
        varies_a, varies_b = np.ptp(a) > 0, np.ptp(b) > 0
        if varies_a and varies_b:
            out[i] = stats.spearmanr(a, b).statistic
        elif varies_a or varies_b:
            out[i] = 0.0
    return out
