"""Test-time views: the model sees each image in several orientations and its answers are averaged.

A blood-cell crop has no up, down, left or right: its class does not change under the eight
symmetries of the square (the dihedral group D4: four rotations, each with or without a
mirror). A model that averages its probabilities over the eight is usually more accurate than
on one view (on the PBC 8-class split, 92.3% -> 96.7% for the default recipe,
bench/train_recipes.py), at eight forward passes per image.

`views` is part of the input contract (`single` or `dihedral8`), so it is declared, recorded
in audit.json and applied in the model's one forward function like the pixel scaling: every
check, explainer and `audit predict` sees the averaged model. The forward pass calls the model
once per view (`map_views`); Grad-CAM stacks the views along the batch axis (`apply_views`).
Both lay them out view-major: all images in view 0, then view 1, ...

Each view is (transpose, flip rows, flip columns) applied in that order; `merge_views` undoes
them, so a per-view map (Grad-CAM) comes back in the original orientation.
"""

from __future__ import annotations

from itertools import product

__all__ = ["VIEWS", "DIHEDRAL8", "view_count", "apply_views", "split_views", "merge_views",
           "map_views", "mean_over_views"]

VIEWS = ("single", "dihedral8")
# (transpose, flip rows, flip columns); the first is the identity.
DIHEDRAL8: tuple[tuple[bool, bool, bool], ...] = tuple(product((False, True), repeat=3))
_TRANSFORMS = {"single": DIHEDRAL8[:1], "dihedral8": DIHEDRAL8}


def view_count(views: str) -> int:
    return len(_TRANSFORMS[views])


def _transform(x, transpose: bool, flip_rows: bool, flip_cols: bool):
    from keras import ops

    if transpose:
        x = ops.transpose(x, (0, 2, 1, 3))
    if flip_rows:
        x = ops.flip(x, axis=1)
    if flip_cols:
        x = ops.flip(x, axis=2)
    return x


def _undo(x, transpose: bool, flip_rows: bool, flip_cols: bool):
    from keras import ops

    if flip_cols:
        x = ops.flip(x, axis=2)
    if flip_rows:
        x = ops.flip(x, axis=1)
    if transpose:
        x = ops.transpose(x, (0, 2, 1, 3))
    return x


def apply_views(images, views: str):
    """(N, H, W, C) square images -> (V * N, H, W, C), view-major; unchanged for `single`."""
    return map_views(lambda view: view, images, views)


def map_views(fn, images, views: str):
    """`fn` (a model call) on each view of `images` separately, outputs (any nesting of
    tensors) concatenated view-major as `apply_views` stacks them.

    One call per view rather than one call on all views: in a traced forward pass the calls
    are independent, so TensorFlow runs them side by side, each at the size the model runs
    fastest at (about 35% faster at 224 px on a 2-core CPU than one call of 8 inputs;
    bench/bench_forward_batch.py --views)."""
    transforms = _TRANSFORMS[views]
    if len(transforms) == 1:
        return fn(images)
    from keras import ops, tree

    outputs = [fn(_transform(images, *t)) for t in transforms]
    return tree.map_structure(lambda *parts: ops.concatenate(parts, axis=0), *outputs)


def split_views(values, views: str):
    """(V * N, ...) -> (V, N, ...): the per-view rows of a view-major batch."""
    from keras import ops

    n_views = view_count(views)
    shape = ops.shape(values)
    return ops.reshape(values, (n_views, shape[0] // n_views, *shape[1:]))


def merge_views(maps, views: str):
    """(V * N, h, w, C) per-view maps -> (N, h, w, C): each turned back, then averaged."""
    from keras import ops

    transforms = _TRANSFORMS[views]
    if len(transforms) == 1:
        return maps
    per_view = split_views(maps, views)
    return ops.mean(ops.stack([_undo(per_view[i], *t) for i, t in enumerate(transforms)]),
                    axis=0)


def mean_over_views(logits, views: str):
    """Per-view logits (V * N, C) -> logits (N, C) of the averaged model: their softmax is
    the views' mean probability, and their logsumexp the views' mean logsumexp, so the
    energy score (-logsumexp) of the averaged model is the views' mean energy rather than a
    constant. Unchanged for a single view."""
    if views == "single":
        return logits
    import math

    from keras import ops

    per_view = split_views(logits, views)                                  # (V, N, C)
    log_mean_p = ops.logsumexp(ops.log_softmax(per_view, axis=-1), axis=0) \
        - math.log(view_count(views))
    return log_mean_p + ops.mean(ops.logsumexp(per_view, axis=-1, keepdims=True), axis=0)
