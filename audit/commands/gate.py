"""`audit gate`: compare an audit with a baseline audit and fail on regressions."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EPILOG = """\
rules (policy in TOML, see docs/gate.md and examples/gate.toml):
  abs-drop / rel-drop   a metric (accuracy, balanced_accuracy, macro_f1) fell too far
  recall-drop           a class's recall fell too far
  recall-floor          a class's recall is below its floor
  ece-max               the calibration error is above its ceiling
  without --policy: accuracy and balanced accuracy may drop at most 0.01 on every
  held-out and shifted set.

outputs: a table on stdout, a Markdown summary (--markdown, default gate-summary.md
beside the current audit) and JUnit XML with one test case per rule (--junit, default
gate-junit.xml beside the current audit).

exit codes: 0 every rule passed, 1 a regression (a rule failed, or a number it needs is
missing or NaN), 2 usage or input error, including audits that are not comparable
(other dataset fingerprints, roles or classes, a baseline dataset missing, an empty set).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gate", help="fail CI on accuracy regressions against a baseline audit",
        description="Compare the current audit.json with a baseline audit.json under a policy "
                    "of allowed drops, recall floors and an ECE ceiling.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--baseline", required=True, metavar="JSON", help="the accepted baseline audit")
    p.add_argument("--current", required=True, metavar="JSON", help="the audit to judge")
    p.add_argument("--policy", metavar="TOML", help="gate policy (default: built-in defaults)")
    p.add_argument("--allow-dataset-change", action="store_true",
                   help="compare what the audits share even if datasets or classes changed")
    p.add_argument("--markdown", metavar="FILE", help="Markdown summary for a pull-request comment")
    p.add_argument("--junit", metavar="FILE", help="JUnit XML, one test case per rule")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from audit.gating.files import gate_files

    return gate_files(args.baseline, args.current, policy=args.policy,
                      allow_dataset_change=args.allow_dataset_change,
                      markdown=args.markdown, junit=args.junit)
