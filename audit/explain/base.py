"""The interface every attribution method implements, its registry, and helpers they share.

An explainer answers one question for each image: which pixels made the model give `target`?

    maps = Explainer(model, seed=0).explain(images_uint8 (N, H, W, 3), targets (N,))
    maps.shape == (N, H, W), float32, finite, at the input resolution

Maps are normalised the same way for every method so they can be compared and overlaid with
one colour scale: each map is divided by its largest absolute value, so a non-negative method
(`signed = False`, Grad-CAM) lies in [0, 1] and a signed method (SHAP, LIME: negative = the
pixels speak against `target`) in [-1, 1]. An all-zero map stays zero. Rank-based scores
(deletion/insertion order, Spearman correlations) do not depend on this scaling.

Model calls are batched: gradient methods run one tape per batch, perturbation methods call
`predict` (an `audit.inference.Predictor`, which counts the images it sees) on large batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np

__all__ = ["Explainer", "EXPLAINERS", "register_explainer", "make_explainer", "normalise_maps",
           "check_inputs", "seeded_global_numpy", "PredictFn"]

PredictFn = Callable[[np.ndarray], np.ndarray]  # images (N, H, W, 3) -> probabilities (N, C)


class Explainer:
    """Base class: subclasses set `name`, `signed`, `description` and implement `_explain`."""

    name: ClassVar[str] = ""
    signed: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, model, *, seed: int = 0, batch_size: int = 64, predictor=None):
        from audit.inference import Predictor

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, received {batch_size}")
        self.model = model
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.predictor = predictor if predictor is not None else Predictor(
            model, batch_size=batch_size)

    @classmethod
    def from_config(cls, model, options, *, seed: int, predictor=None) -> Explainer:
        """Build from the `[explain]` options (audit.explain.config.ExplainOptions);
        subclasses map their fields."""
        return cls(model, seed=seed, predictor=predictor)

    @property
    def forward_passes(self) -> int:
        """Images pushed through the model by `predict` so far (gradient passes not included)."""
        return int(self.predictor.n_images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Batched class probabilities (N, C) float64."""
        return self.predictor.probs(images)

    def explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Normalised maps float32 (N, H, W) of the evidence for class `targets[i]` in image i."""
        images, targets = check_inputs(images, targets)
        if len(images) == 0:
            return np.zeros(images.shape[:3], np.float32)
        maps = np.asarray(self._explain(images, targets), dtype=np.float32)
        if maps.shape != images.shape[:3]:
            raise RuntimeError(f"{self.name}: produced maps of shape {maps.shape}, expected "
                               f"{images.shape[:3]}")
        return normalise_maps(maps)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict:
        """JSON-able description of the method and its settings (for the report)."""
        return {"signed": self.signed, "description": self.description}


EXPLAINERS: dict[str, type[Explainer]] = {}


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    if not cls.name or cls.name in EXPLAINERS:
        raise ValueError(f"explainer name {cls.name!r} is empty or already registered")
    EXPLAINERS[cls.name] = cls
    return cls


def make_explainer(name: str, model, config, *, seed: int, predictor=None) -> Explainer:
    """The registered explainer `name`, configured from the `[explain]` table (a dict) or
    its ExplainOptions."""
    from audit.explain import load_builtin_explainers
    from audit.explain.config import explain_options

    registry = load_builtin_explainers()
    if name not in registry:
        raise ValueError(f"unknown explanation method '{name}'; known: {sorted(registry)}")
    return registry[name].from_config(model, explain_options(config), seed=seed,
                                      predictor=predictor)


def check_inputs(images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), received {images.shape}")
    if len(targets) != len(images):
        raise ValueError(f"received {len(images)} images but {len(targets)} targets")
    return images, targets


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its largest absolute value (all-zero maps stay zero); NaN/inf -> 0."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = np.abs(maps).reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return maps / scale[:, None, None]


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for libraries that draw from it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)
