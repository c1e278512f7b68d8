"""`audit adapt`: re-estimate BatchNorm statistics on unlabelled images of a new site (AdaBN)."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.commands.common import positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "adapt", help="adapt a model to a new site without labels (AdaBN)",
        description="Re-estimate the backbone's BatchNorm statistics on images of the target "
                    "site (labels are not used) and save the adapted model with its metadata.",
    )
    p.add_argument("--model", required=True, help="trained model (.keras)")
    p.add_argument("--data", required=True, help="target-site images: folder or manifest")
    p.add_argument("--out", required=True, help="adapted model (.keras)")
    p.add_argument("--max-images", type=positive_int, help="seeded subsample of the target set")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from audit.data import load_unlabelled
    from audit.errors import UsageError
    from model.adapt import adapt_batchnorm
    from model.io import load_model, save_model

    if Path(args.out).suffix != ".keras":
        raise UsageError(f"--out '{args.out}' must end in .keras")
    model, metadata = load_model(args.model)
    dataset = load_unlabelled(args.data, name="target")  # labels, if any, are not used
    record = adapt_batchnorm(model, dataset, image_size=int(metadata["input_size"]),
                             batch_size=args.batch_size, max_images=args.max_images,
                             seed=args.seed)
    metadata = {**metadata, "adaptation": [*metadata.get("adaptation", []), record]}
    metadata.pop("format", None)
    save_model(model, args.out, metadata)
    print(f"adapted {record['batchnorm_layers']} BatchNorm layers on {record['images']} images "
          f"-> {args.out}")
    return 0
