"""Progress display: a bar on a terminal or in a Jupyter notebook, silent otherwise (CI logs,
pipes, headless notebook runs)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "status"]

T = TypeVar("T")


def _interactive() -> bool:
    """A terminal, or a Jupyter kernel (tqdm.auto then draws a notebook bar)."""
    return sys.stderr.isatty() or _in_jupyter()


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar when stderr is a terminal."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=not _interactive(),
                     leave=False, dynamic_ncols=True))


def status(message: str) -> None:
    """One line of what is happening, on stderr (kept even when not a TTY, it is cheap)."""
    print(message, file=sys.stderr, flush=True)
