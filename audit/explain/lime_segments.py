"""LIME (Ribeiro et al. 2016) through `lime.lime_image`: a weighted linear model of the target
probability over superpixels switched on and off.

Superpixels come from SLIC with fixed parameters (`n_segments`, compactness 10, sigma 1):
deterministic, and the same for every run of the audit. A switched-off superpixel takes its
own mean colour (LIME's default `hide_color=None`). Each pixel of the map gets the weight of its
superpixel in the linear model; signed (negative = against the class).

The sampling is seeded (`random_state` of the explainer and `random_seed` of the call). The
library perturbs one sample at a time in a Python loop with a progress bar, and by default
calls the model on batches of 10; `_BatchedLime` keeps its random draws and semantics but builds
all perturbed images of a model batch with one vectorised indexing step, and the model is
called on `batch_size` images at a time.
"""

from __future__ import annotations

import numpy as np
from lime import lime_image
from skimage.segmentation import slic

from audit.explain.base import Explainer, register_explainer
from audit.explain.config import ExplainOptions

__all__ = ["Lime", "segment_image"]


def segment_image(image: np.ndarray, *, n_segments: int) -> np.ndarray:
    """SLIC superpixels (H, W) int labels 0..K-1 with fixed parameters (deterministic)."""
    image = np.asarray(image, dtype=np.float64) / 255.0
    labels = slic(image, n_segments=n_segments, compactness=10.0, sigma=1.0, start_label=0,
                  channel_axis=-1)
    _, dense = np.unique(labels, return_inverse=True)  # contiguous 0..K-1
    return dense.reshape(labels.shape)


class _BatchedLime(lime_image.LimeImageExplainer):
    """LimeImageExplainer whose neighbourhood images are built one model batch at a time."""

    def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples,
                    batch_size=10):
        n_features = np.unique(segments).shape[0]
        data = self.random_state.randint(0, 2, num_samples * n_features).reshape(
            (num_samples, n_features))
        data[0, :] = 1
        labels = []
        for start in range(0, num_samples, batch_size):
            rows = data[start:start + batch_size].astype(bool)
            keep = rows[:, segments]  # (B, H, W): the pixel's superpixel is switched on
            batch = np.where(keep[..., None], image[None], fudged_image[None])
            labels.append(np.asarray(classifier_fn(batch)))
        return data, np.concatenate(labels)


@register_explainer
class Lime(Explainer):
    name = "lime"
    signed = True
    description = ("LIME: weights of a local linear model of the target probability over SLIC "
                   "superpixels switched off to their mean colour; signed, one value per "
                   "superpixel.")

    def __init__(self, model, *, seed: int = 0, batch_size: int = 64, num_samples: int = 300,
                 n_segments: int = 50, predictor=None):
        super().__init__(model, seed=seed, batch_size=batch_size, predictor=predictor)
        if num_samples < 10:
            raise ValueError(f"num_samples must be >= 10, received {num_samples}")
        self.num_samples = int(num_samples)
        self.n_segments = int(n_segments)

    @classmethod
    def from_config(cls, model, options: ExplainOptions, *, seed: int, predictor=None) -> Lime:
        return cls(model, seed=seed, batch_size=options.lime_batch_size,
                   num_samples=options.lime_num_samples,
                   n_segments=options.lime_segments, predictor=predictor)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = np.empty(images.shape[:3], np.float32)
        for i, (image, target) in enumerate(zip(images, targets, strict=True)):
            segments = segment_image(image, n_segments=self.n_segments)
            explainer = _BatchedLime(random_state=self.seed, feature_selection="none")
            explanation = explainer.explain_instance(
                image.astype(np.float32), self.predict, labels=(int(target),), top_labels=None,
                num_samples=self.num_samples, batch_size=self.batch_size,
                segmentation_fn=lambda _image, segments=segments: segments,
                random_seed=self.seed)
            weights = np.zeros(int(segments.max()) + 1)
            for segment, weight in explanation.local_exp[int(target)]:
                weights[segment] = weight
            maps[i] = weights[explanation.segments]
        return maps

    def info(self) -> dict:
        return {**super().info(), "score": "probability", "num_samples": self.num_samples,
                "segments": f"SLIC, about {self.n_segments} superpixels"}
