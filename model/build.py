"""The MobileNetV2 white-blood-cell classifier.

The model takes raw RGB pixels (0-255, as `audit.data.load_image` returns them) and does its
own preprocessing, so no caller can forget or repeat it. Layer names are stable:

    image -> preprocess (scale to [-1, 1]) -> backbone (MobileNetV2, nested; its output is the
    last convolutional feature map, `out_relu`) -> pool -> dropout -> logits -> probs
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from audit.errors import UsageError

__all__ = ["build_classifier", "BACKBONE", "LOGITS", "PROBS", "EMBEDDING", "backbone_of"]

BACKBONE = "backbone"
EMBEDDING = "pool"
LOGITS = "logits"
PROBS = "probs"
_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def build_classifier(
    num_classes: int,
    *,
    input_size: int = 224,
    alpha: float = 1.0,
    weights: str | os.PathLike | None = "imagenet",
    dropout: float = 0.2,
    stain_target: dict | None = None,
    name: str = "cellaudit_mobilenetv2",
) -> keras.Model:
    """MobileNetV2 backbone with a global-pool, dropout, linear head; outputs probabilities.

    `weights`: "imagenet" (downloads, needs network), a path to a no-top MobileNetV2 weights
    file for the same `alpha` (for air-gapped sites), or None for random initialisation.
    `stain_target` ({"mean": [L, a, b], "std": [...]}) adds Reinhard stain normalisation as
    the first layer ('stain_normalize'), so the saved model normalises its own input.
    """
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, received {num_classes}")
    if alpha not in _ALPHAS:
        raise UsageError(f"alpha must be one of {_ALPHAS}, received {alpha}")
    if input_size < 32:
        raise UsageError(f"input_size must be >= 32 pixels, received {input_size}")
    if weights is not None and weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"weights file '{weights}' does not exist; expected a MobileNetV2 "
                             "no-top .weights.h5 file, 'imagenet' or None")
        weights = str(path)

    backbone = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3),
        alpha=alpha,
        include_top=False,
        weights=None,
    )
    if weights is not None:
        try:
            backbone.load_weights(weights) if weights != "imagenet" else _load_imagenet(backbone, alpha)
        except (ValueError, OSError) as exc:
            raise UsageError(f"cannot load weights '{weights}' into MobileNetV2(alpha={alpha}): "
                             f"{str(exc).splitlines()[0]}") from exc
    else:
        # From scratch, Keras' BatchNorm momentum of 0.999 needs thousands of steps before the
        # moving statistics used at inference match training; 0.9 converges in tens.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    backbone.name = BACKBONE  # type: ignore[misc]

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if stain_target is not None:
        from model.layers import ReinhardNormalization

        x = ReinhardNormalization(stain_target["mean"], stain_target["std"],
                                  name="stain_normalize")(x)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    # With pretrained weights, training=False keeps BatchNorm in inference mode even when the
    # backbone is unfrozen: small fine-tuning batches would otherwise wreck the ImageNet
    # statistics. From scratch there are no statistics to keep, so BatchNorm learns them.
    x = backbone(x, training=False) if weights is not None else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name=EMBEDDING)(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS)(x)
    probs = keras.layers.Activation("softmax", name=PROBS, dtype="float32")(logits)
    return keras.Model(inputs, probs, name=name)


def _load_imagenet(backbone: keras.Model, alpha: float) -> None:
    reference = keras.applications.MobileNetV2(
        input_shape=backbone.input_shape[1:], alpha=alpha, include_top=False, weights="imagenet"
    )
    backbone.set_weights(reference.get_weights())


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested MobileNetV2 of a model `build_classifier` made, else None."""
    try:
        layer = model.get_layer(BACKBONE)
    except ValueError:
        return None
    return layer if isinstance(layer, keras.Model) else None
