"""`audit predict`: classify new images with the audit's calibration, referral threshold and
safety flags (see `audit.prediction`)."""

from __future__ import annotations

import argparse
import csv

from audit.commands.common import MODEL_HELP, add_model_options, contract_options, positive_int
from audit.errors import UsageError

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify new images, with calibrated probabilities and referral flags",
        description="Classify image files or folders in batches. Images that are not usable "
                    "cell images are referred to a human reviewer. With --audit, probabilities "
                    "are temperature-calibrated, and images below the audit's certified "
                    "referral threshold or unlike its reference images are referred too.",
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--audit", metavar="AUDIT_JSON", help="audit.json of this model")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_model_options(p)
    p.set_defaults(handler=run)


# A cell a spreadsheet would run as a formula (a file or class name starting with one of these)
# is written with a leading apostrophe: shown as text, never executed (OWASP CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def run(args: argparse.Namespace) -> int:
    from audit.atomic import atomic_path
    from audit.prediction import COLUMNS, Referral, audit_referral, collect_images, predict_rows
    from model.loaded import load_model

    if not args.out.endswith(".csv"):
        raise UsageError(f"--out '{args.out}' must end in .csv")
    from audit.atomic import check_writable

    check_writable(args.out)
    paths = collect_images(args.images)
    loaded = load_model(args.model, contract_options(args))
    referral = audit_referral(args.audit, loaded.sha256, loaded.contract) if args.audit else Referral()
    header = [*COLUMNS, *[f"p_{c}" for c in loaded.contract.class_names]]
    n_unreadable = n_referred = 0
    with atomic_path(args.out, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in predict_rows(loaded, paths, referral=referral, batch_size=args.batch_size):
            n_unreadable += row["status"] != "ok"
            n_referred += row["refer_to_human"] is True
            writer.writerow([_cell(row[key]) for key in header])
    threshold = referral.threshold
    print(f"wrote {args.out}: {len(paths) - n_unreadable} classified, {n_unreadable} unreadable, "
          f"{n_referred} referred to a human"
          + ("" if threshold is None else f" (referral threshold {threshold:.3f}, "
                                          f"T={referral.temperature:.2f})"))
    return 0
