"""`audit demo`: the whole product on built-in synthetic data, in minutes on a laptop CPU."""

from __future__ import annotations

import argparse

from audit.commands.common import positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="train a small model on synthetic cells and audit it end to end",
        description="Generate a synthetic reference site and a shifted second site, train a "
                    "small MobileNetV2 on the first, audit it against both and write "
                    "OUT/audit/report.html.",
    )
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--n-train", type=positive_int, default=1000)
    p.add_argument("--weights", help="optional local MobileNetV2 no-top weights (alpha 1.0)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from audit.demo import DemoConfig, run_demo
    from audit.errors import UsageError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "audit").exists() \
            and not (out / "data").exists():
        raise UsageError(f"--out '{out}' is a non-empty folder that is not a demo output")
    config = DemoConfig(seed=args.seed, epochs=args.epochs, n_train=args.n_train,
                        weights=str(Path(args.weights).resolve()) if args.weights else None,
                        alpha=1.0 if args.weights else 0.35)
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights '{args.weights}' is not a file")
    result = run_demo(out, config=config)
    audit = result["result"]
    print(f"demo finished in {result['seconds']:.0f} s: audit {result['status']}")
    for name, info in audit.checks.items():
        print(f"  {info.status.value:5}  {name:12} {info.summary}")
    for i, finding in enumerate(audit.findings[:3], 1):
        print(f"  finding {i}: {finding.text}")
    print(f"report: {result['report']}")
    return 0
