"""`audit run`: audit a trained model on held-out and shifted test sets."""

from __future__ import annotations

import argparse
import sys

from audit.commands.common import (
    MODEL_HELP,
    add_data_options,
    add_model_options,
    contract_options,
    load_label_map_option,
    non_negative_float,
    positive_int,
)

__all__ = ["add_parser", "run"]

EPILOG = """\
datasets (--data, repeatable):
  train=PATH          optional: the training set, reference for leakage and drift
  heldout=PATH        required: the reference (validation or in-distribution test set)
  shifted:NAME=PATH   any number: another lab, scanner, stain or time
  PATH is a class-per-folder directory or a CSV manifest path,label[,group].

config (--config audit.toml, and --set KEY=VALUE over it); keys and defaults:
{config_help}
exit codes: 0 every check PASS or WARN, 1 a check FAILed or ERRORed, 2 usage or input error.
"""


def _config_help() -> str:
    from audit.config import default_config

    lines = []
    config = default_config()
    for section in ("audit", "explain"):
        lines.append(f"  [{section}]")
        lines += [f"    {k} = {v!r}" for k, v in config[section].items()]
    for name, defaults in config["checks"].items():
        lines.append(f"  [checks.{name}]")
        lines += [f"    {k} = {v!r}" for k, v in defaults.items()]
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="audit a trained model on held-out and shifted sets",
        description="Compute performance with confidence intervals, calibration, errors, "
                    "leakage, shift, robustness, selective prediction and attributions; write "
                    "OUTDIR/audit.json, OUTDIR/artifacts/ and OUTDIR/report.html.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", action="append", required=True, metavar="ROLE=PATH",
                   help="a dataset and its role (repeatable; see below)")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--config", metavar="TOML", help="thresholds and budgets (see below)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. checks.calibration.ece_warn=0.05")
    p.add_argument("--seed", type=int, help="overrides [audit] seed")
    p.add_argument("--batch-size", type=positive_int, help="overrides [audit] batch_size")
    p.add_argument("--checks", help="comma-separated subset of checks to run")
    p.add_argument("--no-explain", action="store_true", help="skip Grad-CAM/SHAP/LIME")
    p.add_argument("--no-report", action="store_true", help="write audit.json only")
    p.add_argument("--no-cache", action="store_true", help="recompute model outputs")
    p.add_argument("--gate-baseline", metavar="JSON", help="after the audit, gate against this")
    p.add_argument("--gate-policy", metavar="TOML", help="gate policy (see `audit gate`)")
    p.add_argument("--force", action="store_true",
                   help="audit even when the quick check finds the declared input contract "
                        "wrong (near-chance on the reference set while another is far better)")
    engine = p.add_argument_group("engine (where the per-image work runs; docs/scale.md)")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: threads on this machine (default); ray: a Ray Data "
                             "pipeline (pip install 'cellaudit[ray]'), same numbers")
    engine.add_argument("--ray-address", metavar="auto|ray://HOST:PORT",
                        help="join an existing Ray cluster (default: start a local instance)")
    engine.add_argument("--workers", type=positive_int, metavar="N",
                        help="model workers (default: the local instance's or cluster's CPUs)")
    engine.add_argument("--gpus-per-worker", type=non_negative_float, metavar="X",
                        help="GPUs reserved per worker (default 0)")
    add_data_options(p)
    add_model_options(p)
    p.set_defaults(handler=run)
    # The config reference imports every check: build it only when help is asked for.
    plain_help = p.format_help

    def format_help() -> str:
        p.epilog = EPILOG.format(config_help=_config_help())
        return plain_help()

    p.format_help = format_help


def run(args: argparse.Namespace) -> int:
    """The CLI is a thin layer over `audit.api.run`: same inputs, same audit.json."""
    from audit.api import run as run_api
    from audit.engines import make_engine
    from audit.runner import check_specs, parse_data_spec

    specs = [parse_data_spec(item) for item in args.data]
    check_specs(specs)
    by_role = {s.role: s.source for s in specs if s.role != "shifted"}
    declared = contract_options(args)
    engine = make_engine(args.engine, ray_address=args.ray_address, workers=args.workers,
                         gpus_per_worker=args.gpus_per_worker)
    try:
        result = run_api(
            args.model, heldout=by_role["heldout"], train=by_role.get("train"),
            shifted={s.name: s.source for s in specs if s.role == "shifted"} or None,
            out=args.out, config=args.config, overrides=list(args.set),
            classes=declared.classes, classes_from=declared.classes_from,
            input_size=declared.input_size, preprocess=declared.preprocess,
            resize=declared.resize, channel_order=declared.channel_order, views=declared.views,
            label_map=load_label_map_option(args), strict=args.strict, force=args.force,
            seed=args.seed, batch_size=args.batch_size, checks=args.checks,
            explain=False if args.no_explain else None,
            report=False if args.no_report else None, cache=False if args.no_cache else None,
            engine=engine,
            command=["audit", *sys.argv[1:]] if sys.argv[0].endswith("audit") else [])
    finally:
        engine.close()
    print(f"audit {result.status.value}: {args.out}/audit.json")
    for check in result.checks.values():
        print(f"  {check.status.value:5}  {check.name:12} {check.summary}")
    for i, finding in enumerate(result.findings[:5], 1):
        print(f"  finding {i}: {finding.text}")
    exit_code = 1 if result.status.value in ("FAIL", "ERROR") else 0
    if args.gate_baseline:
        from audit.gating.files import gate_files

        gate_code = gate_files(args.gate_baseline, f"{args.out}/audit.json", policy=args.gate_policy)
        exit_code = max(exit_code, gate_code)
    return exit_code
