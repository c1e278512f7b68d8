"""`audit train`: train the MobileNetV2 classifier on an image folder or manifest.

Every default is stated in `--help` with the reason for it, in a sentence; the figures behind
them are in bench/README.md ("Training recipes"), rerun by bench/train_recipes.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from audit.commands.common import add_data_options, fraction, load_label_map_option, positive_int
from model.config import RECIPES, AugmentConfig, TrainConfig
from model.views import VIEWS

__all__ = ["add_parser", "run"]

_T, _A = TrainConfig(), AugmentConfig()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the MobileNetV2 classifier",
        description="Train MobileNetV2 with transfer learning: a linear head fitted on frozen "
                    "ImageNet features, then fine-tuning of the top blocks with augmentation; "
                    "the better phase on validation is kept. Saves one .keras file carrying "
                    "its metadata and a split manifest beside it.",
    )
    p.add_argument("data", help="class-per-folder directory or CSV manifest (path,label[,group])")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="default",
                   help="named settings (default 'default'); options given explicitly override "
                        "them. " + " ".join(
                       f"'{name}': {r.description}." for name, r in RECIPES.items()))
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", help="separate validation folder or manifest")
    val.add_argument("--val-split", type=fraction, default=0.2,
                     help="validation fraction split from DATA, stratified by class (default "
                        "0.2: 60 images per class of 300 measure accuracy to +-3 points)")
    p.add_argument("--group-split", choices=("manifest", "near-duplicates", "discovered"),
                   nargs="?", const="manifest", default=None,
                   help="keep groups on one side of the split: the manifest's group column, "
                        "clusters of near-duplicate images (perceptual hash), or source groups "
                        "discovered by keypoint matching (copies of one cell under rotation, "
                        "flips, shift, shear, zoom; see `audit groups`)")
    p.add_argument("--weights", default="imagenet",
                   help="backbone weights: 'imagenet' (needs network), a local no-top "
                        ".weights.h5 file, or 'none' (default imagenet: every recipe here starts "
                        "from ImageNet features)")

    m = p.add_argument_group("model and schedule")
    m.add_argument("--input-size", type=positive_int, default=_T.input_size,
                   help=f"pixels (default {_T.input_size}: the size the ImageNet features were "
                        "trained at)")
    m.add_argument("--alpha", type=float, default=_T.alpha,
                   help=f"MobileNetV2 width (default {_T.alpha:g}: the width of the local "
                        "ImageNet weights)")
    m.add_argument("--batch-size", type=positive_int, default=_T.batch_size,
                   help=f"images per step (default {_T.batch_size}: fits 2 GB of memory at "
                        "224 px; the fine-tuned BatchNorm layers normalise with batch statistics, so much "
                        "smaller batches make them noisy)")
    m.add_argument("--head-epochs", type=int, default=None,
                   help=f"phase 1, frozen backbone (default {_T.head_epochs}): epochs over "
                        "cached features, which cost milliseconds each, so early stopping on "
                        "validation loss ends it at a converged head; 0 skips it")
    m.add_argument("--head-augment", action="store_true", default=None,
                   help="fit the head on augmented images through the frozen backbone instead "
                        "of cached features (the pre-0.2 behaviour: one forward pass per image "
                        "per epoch, and a head far from converged after 5 epochs)")
    m.add_argument("--head-lr", type=float, default=None,
                   help=f"head learning rate (default {_T.head_learning_rate:g}): Adam's usual "
                        "rate, for a head that starts from random weights")
    m.add_argument("--finetune-epochs", type=int, default=None,
                   help=f"phase 2, top blocks unfrozen (default {_T.finetune_epochs}): PBC "
                        "validation accuracy stops improving by then, and 1,500 images at 224 px "
                        "train in well under 15 minutes on 2 CPU cores")
    m.add_argument("--finetune-lr", type=float, default=None,
                   help=f"fine-tuning peak learning rate (default "
                        f"{_T.finetune_learning_rate:g}): a tenth of the head's, small enough "
                        "not to undo the pretrained features")
    m.add_argument("--schedule", choices=("cosine", "constant"), default=None,
                   help=f"fine-tuning learning-rate schedule (default {_T.schedule}): cosine "
                        "decay to 0 ends on small steps, so the last epochs settle instead of "
                        "jumping around a minimum")
    m.add_argument("--finetune-from", default=None,
                   help=f"first backbone layer (name prefix) to fine-tune (default "
                        f"{_T.finetune_from}): the last four blocks and the final 1x1 "
                        "convolution (38 layers); each block more adds backward passes, "
                        "which dominate a CPU epoch)")
    m.add_argument("--batchnorm", choices=("frozen", "adapt", "train"), default=None,
                   help=f"BatchNorm of the fine-tuned blocks (default {_T.batchnorm}): 'adapt' "
                        "normalises with batch statistics and moves its statistics with "
                        "momentum 0.9, so they follow the new images within an epoch; 'train' "
                        "is MobileNetV2's momentum 0.999, whose statistics lag behind for hundreds of "
                        "steps, so validation collapsed (issue 20); 'frozen' keeps ImageNet's "
                        "statistics, where the first Adam steps move the high-gain linear "
                        "bottlenecks so much that validation dips for an epoch")
    m.add_argument("--label-smoothing", type=float, default=None,
                   help=f"label smoothing (default {_T.label_smoothing:g}: plain cross-entropy "
                        "keeps the predicted probabilities calibrated for the audit)")
    m.add_argument("--imbalance", choices=("class_weight", "balanced_sampling", "none"),
                   default=None,
                   help=f"class-imbalance handling (default {_T.imbalance}): every class "
                        "counts the same in the loss without repeating images")
    m.add_argument("--patience", type=positive_int, default=None,
                   help=f"early-stopping patience in fine-tuning epochs (default "
                        f"{_T.patience}), on validation accuracy")

    a = p.add_argument_group("augmentation (training images only)")
    for name, why in (("flips", "flips and transposes: a cell has no orientation"),
                      ("affine", f"rotation +-{_A.rotation_deg:g} degrees, zoom "
                                 f"+-{_A.zoom:.0%}, shift +-{_A.shift:.0%}: framing varies"),
                      ("color", "brightness, contrast, saturation, hue: lamps and cameras "
                                "vary"),
                      ("stain", "HED stain jitter: staining varies from slide to slide")):
        a.add_argument(f"--no-{name}", action="store_true",
                       help=f"switch off {name} augmentation (on by default; {why})".replace(
                           "%", "%%"))
    a.add_argument("--zoom-in", type=_magnification, default=None, metavar="MAX",
                   help="scale augmentation: magnify training images by up to MAX (e.g. 2 when "
                        "another site's cells cover four times the area: the audit's cell_size "
                        f"drift); default {_A.zoom_in:g} (only the +-10%% zoom)")
    a.add_argument("--stain-sigma", type=float, default=None,
                   help=f"HED stain jitter: each stain's density scaled by 1 +- SIGMA and "
                        f"shifted by +- SIGMA (default {_A.stain_sigma:g}, Tellez et al.'s light "
                        "setting)")
    a.add_argument("--blur", type=float, default=None, metavar="SIGMA",
                   help=f"Gaussian blur of up to SIGMA pixels per image (default "
                        f"{_A.blur_sigma:g}: none; another camera's focus and resolution)")
    a.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help=f"re-encode each image as JPEG at a quality from Q to 100 (default "
                        f"{_A.jpeg_quality}: none)")
    p.add_argument("--views", choices=VIEWS, default=None,
                   help="test-time views saved in the model's input contract: dihedral8 makes "
                        "every prediction and audit the mean over the image's 8 rotations and "
                        "mirrors (+4.4 points on 8 PBC classes, 8 forward passes per image); "
                        "default single: one pass, the audit's cost")
    p.add_argument("--stain-normalize", choices=("none", "reinhard"), default=None,
                   help="stain normalisation at the input, saved inside the model (default "
                        "none: Reinhard lowered cross-lab accuracy in the case study)")

    t = p.add_argument_group("few-label adaptation to another site")
    t.add_argument("--finetune-on", metavar="TARGET",
                   help="labelled images of the target site (folder or manifest, same classes): "
                        "after training, fine-tune on a few of them per class, half of each "
                        "batch from the target, half from DATA; the images used and the rest "
                        "are written beside the model (M.target_train.csv, "
                        "M.target_heldout.csv): evaluate only on the held-out ones")
    t.add_argument("--n-per-class", type=positive_int, default=50,
                   help="target images per class to fine-tune on (default 50, the low end of "
                        "what the literature labels), at most half of a class so that every "
                        "class keeps images to evaluate on")
    t.add_argument("--target-epochs", type=positive_int, default=10,
                   help="epochs over the target images (default 10; no early stopping: no "
                        "target labels are left to stop on)")
    p.add_argument("--seed", type=int, default=_T.seed,
                   help="seed of the split, the augmentation and the initial head (default 0)")
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe's TrainConfig with every option given on the command line on top."""
    from audit.errors import UsageError
    from model.config import make_config

    zoom_in = args.zoom_in
    if args.no_affine and zoom_in is not None and zoom_in > 1.0:
        raise UsageError("--zoom-in needs the affine augmentation it is part of; drop --no-affine")
    train = {
        "input_size": args.input_size, "alpha": args.alpha, "weights": _weights(args.weights),
        "batch_size": args.batch_size, "head_epochs": args.head_epochs,
        "head_augment": args.head_augment, "head_learning_rate": args.head_lr,
        "finetune_epochs": args.finetune_epochs, "finetune_learning_rate": args.finetune_lr,
        "schedule": args.schedule, "finetune_from": args.finetune_from,
        "batchnorm": args.batchnorm, "label_smoothing": args.label_smoothing,
        "imbalance": args.imbalance, "patience": args.patience, "seed": args.seed,
        "stain_normalize": args.stain_normalize, "views": args.views,
    }
    augment = {"flips": False if args.no_flips else None,
               "affine": False if args.no_affine else None,
               "color": False if args.no_color else None,
               "stain": False if args.no_stain else None,
               "zoom_in": zoom_in, "stain_sigma": args.stain_sigma,
               "blur_sigma": args.blur, "jpeg_quality": args.jpeg_quality}
    config = make_config(args.recipe, train=train, augment=augment)
    if not config.augment.affine and config.augment.zoom_in > 1.0:
        # The recipe's scale augmentation goes with the affine family the user switched off.
        from dataclasses import replace

        config = replace(config, augment=replace(config.augment, zoom_in=1.0))
    return config


def run(args: argparse.Namespace) -> int:
    from audit.data import load_dataset
    from audit.errors import UsageError
    from audit.progress import status
    from model.train_and_save import fit_and_save

    out = Path(args.out)
    if out.suffix != ".keras":
        raise UsageError(f"--out '{out}' must end in .keras")
    config = config_from_args(args)
    label_map = load_label_map_option(args)
    from audit.atomic import check_writable

    check_writable(out)  # before the training, not after it
    started = time.perf_counter()
    data = load_dataset(args.data, name="train", label_map=label_map, strict=args.strict,
                        input_size=args.input_size)
    val = None
    if args.val_data:
        val = load_dataset(args.val_data, name="validation", label_map=label_map,
                           class_names=data.class_names, strict=args.strict)
    target = None
    if args.finetune_on:
        target = load_dataset(args.finetune_on, name="target", label_map=label_map,
                              class_names=data.class_names, strict=args.strict)
    status(f"training on {len(data)} images ({args.recipe} recipe), classes: "
           f"{', '.join(data.class_names)}")
    result = fit_and_save(data, out, config=config, val_set=val, val_fraction=args.val_split,
                          group_split=args.group_split, target=target,
                          n_per_class=args.n_per_class, target_epochs=args.target_epochs)
    one_view = "" if config.views == "single" else " on one view; predictions use 8"
    status(f"saved {out} (validation accuracy {result['val_accuracy']:.3f}{one_view}, "
           f"{time.perf_counter() - started:.0f} s)")
    return 0
