"""Option types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse

from audit.errors import UsageError

__all__ = ["positive_int", "non_negative_float", "fraction", "add_data_options", "load_label_map_option",
           "add_model_options", "contract_options"]

MODEL_HELP = ("trained classifier: a .keras file, a legacy .h5 full model (tf.keras 2.x) or a "
              "TensorFlow SavedModel folder")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {value}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, received {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, received {value}")
    return value


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-map", metavar="FILE",
                        help="JSON or TOML label map: {map = {SOURCE = canonical}, drop = [...]}")
    parser.add_argument("--strict", action="store_true",
                        help="unreadable images are an error (exit 2) instead of a warning")


def load_label_map_option(args: argparse.Namespace):
    from audit.labels import load_label_map

    if not getattr(args, "label_map", None):
        return None
    try:
        return load_label_map(args.label_map)
    except UsageError as exc:
        raise UsageError(f"--label-map: {exc}") from exc


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """How the model takes an image (its input contract); see `audit inspect`."""
    from model.contract import PREPROCESS, RESIZE, VIEWS

    group = parser.add_argument_group(
        "model input contract",
        "How the model was fed in training. Models saved by `audit train` carry it; for others "
        "it comes from these options, a sidecar MODEL.json (`audit inspect --write`), or the "
        "model itself (input shape, a Rescaling layer at its start).")
    group.add_argument("--classes", metavar="A,B,C",
                       help="class names in the order of the model's outputs")
    group.add_argument("--classes-from", metavar="DIR",
                       help="class names = the sorted sub-folders of DIR (the order "
                            "image_dataset_from_directory and flow_from_directory use)")
    group.add_argument("--input-size", type=positive_int, metavar="PX",
                       help="input size when the model's input shape does not fix it")
    group.add_argument("--preprocess", choices=PREPROCESS,
                       help="pixel scaling: none (0-255), unit ([0, 1]), symmetric ([-1, 1], "
                            "mobilenet_v2), caffe or torch (ImageNet conventions)")
    group.add_argument("--resize", choices=RESIZE,
                       help="crop (centre square, then resize), stretch (whole image, as "
                            "Keras' directory loaders), pad (letterbox with black)")
    group.add_argument("--channel-order", choices=("RGB", "BGR", "rgb", "bgr"),
                       help="channel order the model was trained on (BGR: images read with "
                            "OpenCV)")
    group.add_argument("--views", choices=VIEWS,
                       help="test-time views: single (the image as it is) or dihedral8 (mean "
                            "probability over its 8 rotations and mirrors; 8 forward passes "
                            "per image)")


def contract_options(args: argparse.Namespace):
    """The declared contract options of `add_model_options`, as `ContractOptions`."""
    from model.contract import parse_classes
    from model.loaded import ContractOptions

    classes = parse_classes(args.classes) if getattr(args, "classes", None) else None
    return ContractOptions(classes=classes, classes_from=getattr(args, "classes_from", None),
                           input_size=getattr(args, "input_size", None),
                           preprocess=getattr(args, "preprocess", None),
                           resize=getattr(args, "resize", None),
                           channel_order=getattr(args, "channel_order", None),
                           views=getattr(args, "views", None))
