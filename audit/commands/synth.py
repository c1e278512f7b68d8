"""`audit synth`: write a synthetic blood-smear dataset (class folders, manifest.csv, site.json)."""

from __future__ import annotations

import dataclasses
import json
import re
import time

from audit.errors import UsageError
from audit.synthetic import CLASSES, REFERENCE_SITE, SHIFTED_SITE, write_site

__all__ = ["add_parser", "run"]

PRESETS = {"reference": REFERENCE_SITE, "shifted": SHIFTED_SITE}

# SiteDomain fields settable one by one from the command line, with what they mean
DOMAIN_OPTIONS = {
    "stain_hue_shift": "degrees added to the stain hue (negative = bluer)",
    "stain_saturation": "multiplier on stain saturation",
    "brightness": "multiplier on intensity",
    "blur_sigma": "Gaussian blur sigma, in output pixels",
    "noise_std": "additive Gaussian noise std, 0-255 scale",
    "cell_scale": "multiplier on white-cell radius",
    "background_density": "multiplier on the number of red cells",
}
# library parameter names that have a command-line option, for turning ValueError into UsageError
OPTION_NAMES = {name: "--" + name.replace("_", "-")
                for name in (*DOMAIN_OPTIONS, "class_priors", "n_images", "size", "seed")}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth", help="write a synthetic white-blood-cell dataset",
        description="Render procedural Wright/Giemsa-style white-cell crops into "
                    "OUT_DIR/<class>/*.png with manifest.csv (path,label,group) and site.json. "
                    "Pick a site preset and override single stain/optics parameters to make a "
                    "controlled domain shift.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="dataset directory to create or replace")
    p.add_argument("--n-images", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--site", choices=sorted(PRESETS), default="reference",
                   help="domain preset the overrides start from (default reference)")
    for name, meaning in DOMAIN_OPTIONS.items():
        p.add_argument(OPTION_NAMES[name], dest=name, type=float, metavar="X",
                       help=f"{meaning} (preset: {getattr(REFERENCE_SITE, name):g} reference, "
                            f"{getattr(SHIFTED_SITE, name):g} shifted)")
    p.add_argument("--class-priors", metavar="CLASS=W,...",
                   help="class weights, e.g. neutrophil=0.5,lymphocyte=0.3 (unlisted classes get "
                        f"0); classes: {', '.join(CLASSES)}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR even if it holds something other than a synth dataset")
    p.set_defaults(handler=run)


def run(args) -> int:
    domain = _domain(args)
    started = time.perf_counter()
    try:
        manifest = write_site(args.out_dir, n_images=args.n_images, size=args.size, domain=domain,
                              seed=args.seed, site_name=args.site, overwrite=args.overwrite)
    except ValueError as exc:
        raise UsageError(_with_option_name(str(exc))) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.out_dir}: {exc.strerror or exc}") from None
    seconds = time.perf_counter() - started
    counts = json.loads((manifest.parent / "site.json").read_text())["class_counts"]
    print(f"wrote {args.n_images} images ({args.size}x{args.size}, site {args.site}, "
          f"seed {args.seed}) to {manifest.parent} in {seconds:.1f} s: "
          + ", ".join(f"{cls} {count}" for cls, count in counts.items()))
    return 0


def _domain(args):
    overrides = {name: getattr(args, name) for name in DOMAIN_OPTIONS
                 if getattr(args, name) is not None}
    if args.class_priors is not None:
        overrides["class_priors"] = _parse_priors(args.class_priors)
    try:
        return dataclasses.replace(PRESETS[args.site], **overrides)
    except ValueError as exc:
        raise UsageError(_with_option_name(str(exc))) from None


def _parse_priors(text: str) -> dict[str, float]:
    priors: dict[str, float] = {}
    for item in text.split(","):
        cls, _, weight = item.partition("=")
        cls = cls.strip()
        try:
            if not cls or cls in priors:
                raise ValueError
            priors[cls] = float(weight)  # no '=' gives float('') -> ValueError
        except ValueError:
            raise UsageError("--class-priors: expected CLASS=WEIGHT[,CLASS=WEIGHT...] with each "
                             f"class once, got {text!r}") from None
    return priors


def _with_option_name(message: str) -> str:
    """'blur_sigma must be ...' -> '--blur-sigma must be ...': name what the user typed."""
    match = re.match(r"[a-z_]+", message)
    if match and match.group() in OPTION_NAMES:
        return OPTION_NAMES[match.group()] + message[match.end():]
    return message
