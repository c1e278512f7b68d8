"""The `audit` command: parse, dispatch to a subcommand module, turn errors into exit codes.

Exit codes: 0 success, 1 a check failed or the gate found a regression, 2 usage or input error.
Each subcommand lives in `audit/commands/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings

from audit.errors import UsageError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("synth", "train", "inspect", "run", "predict", "adapt", "report", "demo", "gate",
            "baseline", "groups")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too, but with a usage dump
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"audit.commands.{name}").add_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"cellaudit {version('cellaudit')}"
    except PackageNotFoundError:
        return "cellaudit (not installed)"


_NEEDS_TENSORFLOW = {"train", "inspect", "run", "predict", "adapt", "demo"}


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr muted: its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every `finally` (the atomic writers'
    clean-up of their staging folders) runs before the process ends."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ chatter out
    # SIGTERM unwinds like Ctrl-C while a command runs; the caller's handler comes back after
    # (main is also called from tests and notebooks).
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with _warnings_as_lines():
            return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_lines():
    """Every warning of this command as one `warning: ...` line on stderr, each distinct
    message once. Python's default filter shows a warning once per code location per
    process, so a second command in the same process (a notebook, a test) would hide a bad
    file the first one reported; the caller's warning settings come back after."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        # Python's own defaults (not a test runner's or a notebook's), then ours always.
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("always", module=r"(audit|model|reports)(\.|$)")
        warnings.showwarning = show
        yield


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command in _NEEDS_TENSORFLOW:
            _import_tensorflow_quietly()
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written (earlier outputs are unchanged)",
              file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: nothing was written (earlier outputs are unchanged)",
              file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
