"""Option types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse

from audit.errors import UsageError

__all__ = ["positive_int", "fraction", "add_data_options", "load_label_map_option"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {value}")
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
