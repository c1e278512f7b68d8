"""`audit groups`: find the source cell of augmented copies and write a group manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.commands.common import add_data_options, load_label_map_option, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "groups",
        help="group augmented copies of the same source cell; write path,label,group",
        description="Find which images are copies of one source cell (rotated, flipped, "
                    "shifted, sheared, zoomed, recoloured) by keypoint matching with geometric "
                    "verification, and write a CSV manifest path,label,group that `audit train "
                    "--group-split manifest`, `audit run` or any other tool can use.",
    )
    p.add_argument("data", help="class-per-folder directory or CSV manifest (path,label[,group])")
    p.add_argument("--out", required=True, help="output CSV manifest (path,label,group)")
    p.add_argument("--image-size", type=positive_int, default=224,
                   help="working size in pixels (default 224)")
    p.add_argument("--neighbours", type=positive_int, default=10,
                   help="candidate pairs per image (default 10)")
    p.add_argument("--max-pairs", type=positive_int, default=None,
                   help="budget of candidate pairs (default: neighbours x images)")
    p.add_argument("--min-inliers", type=positive_int, default=12,
                   help="the calibrated threshold is never below this (default 12)")
    p.add_argument("--across-classes", action="store_true",
                   help="look for copies across classes too (default: within each class, "
                        "since copies share their label)")
    p.add_argument("--seed", type=int, default=0)
    add_data_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from audit.data import load_dataset
    from audit.errors import UsageError
    from audit.groups import GroupConfig, discover_groups, write_groups_manifest
    from audit.progress import status

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out '{out}' must end in .csv")
    if args.image_size < 32:
        raise UsageError(f"--image-size must be at least 32 pixels, received {args.image_size}")
    data = load_dataset(args.data, name="data", label_map=load_label_map_option(args),
                        strict=args.strict)
    config = GroupConfig(image_size=args.image_size, neighbours=args.neighbours,
                         max_pairs=args.max_pairs, min_inliers=args.min_inliers,
                         within_class=not args.across_classes, seed=args.seed)
    found = discover_groups(data, config=config)
    write_groups_manifest(out, data, found.labels())
    sizes = found.size_distribution()
    null = found.null
    status(f"{found.n_groups} groups in {len(data)} images: {sizes['singletons']} single images, "
           f"median size {sizes['median']:g}, 90th percentile {sizes['p90']:g}, "
           f"largest {sizes['max']}")
    chance = ("" if null.rate_upper_95 is None else
              f"; at most {null.rate_upper_95:.2%} of {null.n_pairs} other-class pairs would "
              f"reach it (95% bound), largest {null.max}")
    status(f"threshold {found.threshold} inliers{chance}")
    if null.cross_class_copies:
        status(f"warning: {null.cross_class_copies} other-class pairs are copies of one another "
               "(the same image under two labels)")
    status(f"{found.pairs_examined} pairs verified; {found.graph.refused} weak links refused "
           f"between groups; wrote {out}")
    return 0
