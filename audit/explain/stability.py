"""Are maps stable? Spearman rank correlation between the map of a clean image and the map of
a mildly corrupted copy (`audit.corruptions`), for the same target class. A map that changes
completely under a little noise or blur cannot be read as "what the model looks at".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.explain.sanity import rank_correlations

__all__ = ["stability_correlations"]


def stability_correlations(explainer, images: np.ndarray, targets: np.ndarray,
                           clean_maps: np.ndarray, *, corruptions: Sequence[str],
                           severity: int, seed: int) -> dict[str, np.ndarray]:
    """Per corruption name, the per-image Spearman correlation (N,) of clean vs corrupted maps."""
    from audit.corruptions import corrupt

    out = {}
    for name in corruptions:
        corrupted = corrupt(np.asarray(images, dtype=np.uint8), name, int(severity), seed=seed)
        out[name] = rank_correlations(clean_maps, explainer.explain(corrupted, targets))
    return out
