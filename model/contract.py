"""How a model sees an image: its input contract, declared, recorded and applied in one place.

A classifier is only right about images prepared the way it was trained on them. The contract
names every step between a file on disk and the model's input tensor:

    file -> RGB -> resize to the input size (`resize`) -> channel order (`channel_order`)
         -> pixel scaling (`preprocess`) -> model, once or on each test-time view (`views`)
         -> outputs (`output`: probabilities or logits)

Every part of CellAudit that decodes or feeds images (checks, explainers, `audit predict`,
`audit adapt`, `audit inspect`) does it through `audit.data` with `resize` and through the
model's forward function with `scale_images`: there is no second way.

`preprocess` follows the conventions of `keras.applications` (`imagenet_utils.preprocess_input`
modes), applied to pixels read in `channel_order`:

    none       0-255 as read (the model scales its own input, e.g. a Rescaling layer)
    unit       x / 255                                   -> [0, 1]
    symmetric  x / 127.5 - 1                             -> [-1, 1]  (mobilenet_v2, "tf" mode)
    caffe      channels reversed, ImageNet BGR mean subtracted, no scaling  ("caffe" mode)
    torch      x / 255, ImageNet mean subtracted, divided by its std  ("torch" mode)

`resize`: `crop` (centre square crop, then resize: CellAudit's own models), `stretch` (the
whole image resized to the input size, aspect ratio lost: what `image_dataset_from_directory`
and `flow_from_directory` do by default) or `pad` (resized to fit, then padded with black to
the input size: `tf.image.resize_with_pad`, Keras' `pad_to_aspect_ratio=True`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from audit.errors import UsageError
from model.views import VIEWS, view_count

__all__ = ["InputContract", "PREPROCESS", "RESIZE", "CHANNEL_ORDERS", "OUTPUTS", "VIEWS",
           "scale_images", "parse_classes", "CONTRACT_KEYS"]

PREPROCESS = ("none", "unit", "symmetric", "caffe", "torch")
RESIZE = ("crop", "stretch", "pad")
CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUTS = ("probabilities", "logits")
# Keys a sidecar file or a model's metadata may hold for the contract.
CONTRACT_KEYS = ("class_names", "input_size", "preprocess", "resize", "channel_order", "output",
                 "views")

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class InputContract:
    """The complete description of how a model takes an image and what it returns.

    `sources` says where each field came from ("metadata", "sidecar", "option", "model graph",
    "model input shape", "model outputs", "default"); it is recorded in audit.json so that a
    reviewer can see what was declared and what was detected.
    """

    class_names: tuple[str, ...]
    input_size: int
    preprocess: str = "none"
    resize: str = "crop"
    channel_order: str = "RGB"
    output: str = "probabilities"
    views: str = "single"
    sources: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_choice("preprocess", self.preprocess, PREPROCESS)
        _check_choice("resize", self.resize, RESIZE)
        _check_choice("channel-order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("output", self.output, OUTPUTS)
        _check_choice("views", self.views, VIEWS)
        names = list(self.class_names)
        if len(names) < 2:
            raise UsageError(f"--classes: a classifier needs at least 2 classes, received {names}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UsageError(f"--classes: class names must be unique, repeated: {duplicates}")
        if any(not isinstance(n, str) or not n.strip() for n in names):
            raise UsageError(f"--classes: class names must be non-empty text, received {names}")
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) \
                or self.input_size < 8:
            raise UsageError(f"--input-size must be a whole number of pixels >= 8, received "
                             f"{self.input_size!r}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def with_(self, **changes) -> InputContract:
        return replace(self, **changes)

    def describe(self) -> dict:
        """JSON-able record (audit.json `model.contract`, the sidecar, the model card)."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["sources"] = dict(self.sources)
        return data

    def summary(self) -> str:
        return (f"{self.input_size} px, resize {self.resize}, {self.channel_order}, "
                f"preprocess {self.preprocess}, outputs {self.output}, "
                f"{self.n_classes} classes"
                + ("" if self.views == "single" else f", mean of {view_count(self.views)} views ({self.views})"))


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{option}: unknown value {value!r}; expected one of "
                         f"{', '.join(choices)}")


def parse_classes(text: str) -> tuple[str, ...]:
    """`--classes a,b,c` -> ('a', 'b', 'c'), refusing empty and repeated names."""
    names = [part.strip() for part in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"--classes '{text}': empty class name; expected names separated by "
                         "commas, in the order of the model's outputs")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--classes '{text}': repeated class name(s) {duplicates}")
    return tuple(names)


def scale_images(images, *, preprocess: str, channel_order: str):
    """RGB pixels 0-255 (float tensor or array, (..., 3)) -> the model's input values.

    Written with `keras.ops` so one function serves NumPy callers and traced TensorFlow
    forward passes alike.
    """
    from keras import ops

    x = ops.cast(images, "float32")
    if channel_order == "BGR":
        x = x[..., ::-1]
    if preprocess == "none":
        return x
    if preprocess == "unit":
        return x / 255.0
    if preprocess == "symmetric":
        return x / 127.5 - 1.0
    if preprocess == "caffe":  # keras.applications: RGB -> BGR, then the BGR mean
        return x[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR)
    if preprocess == "torch":
        return (x / 255.0 - ops.convert_to_tensor(_TORCH_MEAN)) / ops.convert_to_tensor(_TORCH_STD)
    raise UsageError(f"--preprocess: unknown value {preprocess!r}; expected one of "
                     f"{', '.join(PREPROCESS)}")
