"""Atomic output: write to a temporary sibling, then rename over the target.

A failed or interrupted run never leaves a half-written file and never overwrites a good one.
A target that cannot be written (its parent is a file, no permission, a read-only or full
disk) raises `OutputError`, one line naming the file and the reason, instead of a traceback.
Outputs follow the user's umask like any other file they create (a temporary folder is born
0700; the audit folder a reviewer must read is not left that way).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from audit.errors import UsageError

__all__ = ["atomic_path", "atomic_dir", "write_json", "write_text", "OutputError",
           "check_writable"]

# Errors that are about the disk, whichever file the library was writing when they struck.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


class OutputError(UsageError):
    """An output cannot be written: names the file and why."""

    def __init__(self, target: str | os.PathLike, exc: OSError | None = None, *,
                 reason: str | None = None):
        self.target = Path(target)
        self.reason = reason if reason is not None else _why(self.target, exc)
        super().__init__(f"cannot write '{target}': {self.reason}")


def _why(target: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (the previous output, if any, is unchanged)"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        for parent in [target, *target.parents]:
            if parent.exists() and not parent.is_dir():
                return f"'{parent}' is a file, not a folder"
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(target, exc) from None


def _about(exc: OSError, staging: str) -> bool:
    """Did this error come from writing into `staging`, or from the disk itself?"""
    if exc.errno in _DISK_ERRNOS:
        return True
    name = getattr(exc, "filename", None)
    return bool(name) and os.path.abspath(os.fspath(name)).startswith(os.path.abspath(staging))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`."""
    target = Path(target)
    _make_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix,
                                   dir=target.parent)
        os.close(fd)
        os.unlink(tmp)  # writers such as Keras want to create the file themselves
    except OSError as exc:
        raise OutputError(target, exc) from None
    try:
        try:
            yield Path(tmp)
        except OSError as exc:
            if _about(exc, tmp):
                raise OutputError(target, exc) from None
            raise
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(target, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it replaces `target`."""
    target = Path(target)
    _make_parent(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
    except OSError as exc:
        raise OutputError(target, exc) from None
    try:
        try:
            yield tmp
        except OSError as exc:
            if _about(exc, str(tmp)):
                raise OutputError(target, exc) from None
            raise
        except OutputError as exc:  # name the file where it was meant to land, not the staging
            if tmp in exc.target.parents:
                raise OutputError(target / exc.target.relative_to(tmp),
                                  reason=exc.reason) from None
            raise
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)  # the good output goes back where it was
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(target, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(target: str | os.PathLike) -> None:
    """Fail now, naming `target`, if it could not be written later: before hours of work, not
    after. Creates the parent folders, as the writers would."""
    target = Path(target)
    _make_parent(target)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe",
                                     dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(target, exc) from None


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike, data) -> Path:
    """JSON with NaN/inf refused: the audit contract is strict JSON."""
    return write_text(target, json.dumps(data, indent=2, allow_nan=False, sort_keys=False) + "\n")
