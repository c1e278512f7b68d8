"""`audit train`: train the MobileNetV2 classifier on an image folder or manifest."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from audit.commands.common import add_data_options, fraction, load_label_map_option, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the MobileNetV2 classifier",
        description="Train MobileNetV2 with transfer learning (frozen backbone, then fine-tuning "
                    "of the top blocks), augmentation and class-imbalance handling; saves one "
                    ".keras file carrying its metadata and a split manifest beside it.",
    )
    p.add_argument("data", help="class-per-folder directory or CSV manifest (path,label[,group])")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", help="separate validation folder or manifest")
    val.add_argument("--val-split", type=fraction, default=0.2,
                     help="validation fraction split from DATA (default 0.2)")
    p.add_argument("--group-split", choices=("manifest", "near-duplicates", "discovered"),
                   nargs="?", const="manifest", default=None,
                   help="keep groups on one side of the split: the manifest's group column, "
                        "clusters of near-duplicate images (perceptual hash), or source groups "
                        "discovered by keypoint matching (copies of one cell under rotation, "
                        "flips, shift, shear, zoom; see `audit groups`)")
    p.add_argument("--weights", default="imagenet",
                   help="backbone weights: 'imagenet' (needs network), a local no-top "
                        ".weights.h5 file, or 'none' (default imagenet)")
    p.add_argument("--input-size", type=positive_int, default=224, help="pixels (default 224)")
    p.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width (default 1.0)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--head-epochs", type=int, default=5, help="phase 1, frozen backbone")
    p.add_argument("--finetune-epochs", type=int, default=5, help="phase 2, top blocks unfrozen")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-from", default="block_13",
                   help="first backbone layer (name prefix) to fine-tune (default block_13)")
    p.add_argument("--imbalance", choices=("class_weight", "balanced_sampling", "none"),
                   default="class_weight")
    p.add_argument("--patience", type=positive_int, default=3, help="early-stopping patience")
    for name in ("flips", "affine", "color", "stain"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch off {name} augmentation")
    p.add_argument("--zoom-in", type=_magnification, default=1.0, metavar="MAX",
                   help="scale augmentation: magnify training images by up to MAX (e.g. 2 when "
                        "another site's cells cover four times the area: the audit's cell_size "
                        "drift); default 1, only the +-10%% zoom")
    p.add_argument("--stain-normalize", choices=("none", "reinhard"), default="none",
                   help="stain normalisation at the input, saved inside the model")
    p.add_argument("--seed", type=int, default=0)
    add_data_options(p)
    p.set_defaults(handler=run)


def _magnification(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 1.0 <= number <= 4.0:
        raise argparse.ArgumentTypeError(f"expected a magnification from 1 to 4, received '{value}'")
    return number


def _weights(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value == "imagenet":
        return value
    if not Path(value).is_file():
        from audit.errors import UsageError

        raise UsageError(f"--weights '{value}' is not a file; expected 'imagenet', 'none' or a "
                         "MobileNetV2 no-top .weights.h5 file")
    return str(Path(value).resolve())


def run(args: argparse.Namespace) -> int:
    from audit.data import load_dataset
    from audit.progress import status
    from model.augment import AugmentConfig
    from model.fit import fit_and_save
    from model.train import TrainConfig

    out = Path(args.out)
    if out.suffix != ".keras":
        from audit.errors import UsageError

        raise UsageError(f"--out '{out}' must end in .keras")
    if args.zoom_in > 1.0 and args.no_affine:
        from audit.errors import UsageError

        raise UsageError("--zoom-in needs the affine augmentation it is part of; drop --no-affine")
    label_map = load_label_map_option(args)
    augment = AugmentConfig(flips=not args.no_flips, affine=not args.no_affine,
                            color=not args.no_color, stain=not args.no_stain,
                            zoom_in=args.zoom_in)
    config = TrainConfig(
        input_size=args.input_size, alpha=args.alpha, weights=_weights(args.weights),
        batch_size=args.batch_size, head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs, head_learning_rate=args.head_lr,
        finetune_learning_rate=args.finetune_lr, finetune_from=args.finetune_from,
        imbalance=args.imbalance, patience=args.patience, seed=args.seed, augment=augment,
        stain_normalize=args.stain_normalize,
    )
    from audit.atomic import check_writable

    check_writable(out)  # before the training, not after it
    started = time.perf_counter()
    data = load_dataset(args.data, name="train", label_map=label_map, strict=args.strict,
                        input_size=args.input_size)
    val = None
    if args.val_data:
        val = load_dataset(args.val_data, name="validation", label_map=label_map,
                           class_names=data.class_names, strict=args.strict)
    status(f"training on {len(data)} images, classes: {', '.join(data.class_names)}")
    result = fit_and_save(data, out, config=config, val_set=val, val_fraction=args.val_split,
                          group_split=args.group_split)
    status(f"saved {out} (validation accuracy {result['val_accuracy']:.3f}, "
           f"{time.perf_counter() - started:.0f} s)")
    return 0
