"""`audit adapt`: align BatchNorm statistics to unlabelled images of a new site (AdaBN)."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.commands.common import MODEL_HELP, add_model_options, contract_options, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "adapt", help="adapt a model to a new site without labels (AdaBN)",
        description="Re-estimate the backbone's BatchNorm statistics on images of the target "
                    "site (labels are not used), aligned to the same statistics on images of "
                    "the source site, and save the adapted model with its metadata.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", required=True, help="target-site images: folder or manifest")
    p.add_argument("--source", help="source-site images (folder or manifest); default: the "
                                    "training manifest MODEL.train.csv beside the model. "
                                    "Needed for a pretrained backbone, whose BatchNorm "
                                    "statistics are ImageNet's, not the source site's")
    p.add_argument("--out", required=True, help="adapted model (.keras)")
    p.add_argument("--max-images", type=positive_int, default=512,
                   help="seeded sample of each of target and source, held in memory "
                        "(default 512)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from audit.data import load_unlabelled
    from audit.errors import UsageError
    from model.adapt import align_batchnorm
    from model.io import save_model
    from model.loaded import load_model

    if Path(args.out).suffix != ".keras":
        raise UsageError(f"--out '{args.out}' must end in .keras")
    loaded = load_model(args.model, contract_options(args))
    metadata = loaded.metadata
    target = load_unlabelled(args.data, name="target")  # labels, if any, are not used
    source = _source_set(args, metadata)
    record = align_batchnorm(loaded, target, source, batch_size=args.batch_size,
                             max_images=args.max_images, seed=args.seed)
    contract = loaded.contract
    metadata = {**metadata, "class_names": list(contract.class_names),
                "input_size": contract.input_size,
                "input_contract": {k: getattr(contract, k)
                                   for k in ("preprocess", "resize", "channel_order", "views")},
                "adaptation": [*metadata.get("adaptation", []), record]}
    metadata.pop("format", None)
    save_model(loaded.keras_model, args.out, metadata)
    against = (f", aligned to {record['source']['images']} source images"
               if "source" in record else "")
    print(f"adapted {record['batchnorm_layers']} BatchNorm layers on {record['images']} "
          f"images{against} -> {args.out}")
    return 0


def _source_set(args: argparse.Namespace, metadata: dict):
    from audit.data import load_unlabelled
    from audit.errors import UsageError

    source = args.source
    if source is None:
        beside = Path(args.model).with_name(Path(args.model).stem + ".train.csv")
        if beside.is_file():
            source = beside
        elif "architecture" in metadata and metadata["architecture"].get("weights") is None:
            return None  # BatchNorm learned the source statistics: classic AdaBN is exact
        else:
            raise UsageError(f"--source: '{args.model}' may have a pretrained backbone whose "
                             f"BatchNorm statistics are ImageNet's, and no '{beside.name}' "
                             "beside it; pass --source with images of the site it was trained "
                             "on")
    return load_unlabelled(source, name="source")
