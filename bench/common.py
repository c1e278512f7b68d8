"""Shared helpers for the benchmark scripts: peak memory, timers, measured subprocesses, tables.

Peak resident memory is read three ways, because each answers a different question:

- `peak_rss_mb()`: the kernel's high-water mark of this process (VmHWM, else getrusage), which
  `reset_peak_rss()` can rewind so a phase of a long script gets its own peak;
- `PeakSampler`: a thread sampling VmRSS of a process and all its descendants (summed) every
  few milliseconds, for work split over subprocesses;
- `run_measured()`: a subprocess's own lifetime peak from `os.wait4` (ru_maxrss), exact and
  independent of sampling, plus the sampled peak of its process tree.

Not part of the package: nothing here is imported by `audit` or `model`.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "REPO",
    "DEFAULT_WEIGHTS",
    "rss_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "tree_rss_mb",
    "PeakSampler",
    "Timer",
    "MeasuredRun",
    "run_measured",
    "print_table",
    "machine_line",
    "quiet_tensorflow",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = Path(os.environ.get(
    "CELLAUDIT_WEIGHTS", REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"))
_KIB = 1024.0


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _status_field(pid: int | str, field: str) -> float | None:
    """A `Vm*` field of /proc/PID/status in MiB, or None (process gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / _KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Current resident memory of one process, MiB."""
    return _status_field(pid, "VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or the last `reset_peak_rss()`, MiB."""
    hwm = _status_field("self", "VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB  # KiB on Linux


def reset_peak_rss() -> bool:
    """Rewind this process's VmHWM to its current RSS (Linux >= 4.0); False if not possible.

    getrusage's ru_maxrss is not rewound; `peak_rss_mb()` reads VmHWM, which is.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 is the parent id; the command name (field 2) may hold spaces, so split after ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_rss_mb(pid: int, *, include_children: bool = True) -> float | None:
    """Summed VmRSS of `pid` and (optionally) all its descendants, MiB; None if `pid` is gone."""
    own = rss_mb(pid)
    if own is None or not include_children:
        return own
    children, total = _children_map(), own
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        total += rss_mb(child) or 0.0
        stack.extend(children.get(child, []))
    return total


class PeakSampler:
    """Context manager: samples the process-tree RSS of `pid` (default: this process) in a thread.

        with PeakSampler() as sampler:
            work()
        sampler.peak_mb

    Sampling misses spikes shorter than `interval`; the kernel's VmHWM / ru_maxrss do not, but
    only count one process. Descendant scanning walks /proc, so keep `interval` >= 0.02 s.
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.05,
                 include_children: bool = True):
        self.pid = pid if pid is not None else os.getpid()
        self.interval = interval
        self.include_children = include_children
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            value = tree_rss_mb(self.pid, include_children=self.include_children)
            if value is not None:
                self.peak_mb = max(self.peak_mb, value)
                self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakSampler:
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (wall clock) and `t.cpu_seconds` (CPU time of
    this process, all threads: unlike wall time, barely moved by other processes' load)."""

    def __init__(self):
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._t0 = self._c0 = 0.0

    def __enter__(self) -> Timer:
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0


@dataclass(frozen=True)
class MeasuredRun:
    returncode: int
    seconds: float          # wall clock, including interpreter and library start-up
    cpu_seconds: float      # user + system CPU time of the child (wait4 rusage)
    peak_rss_mb: float      # the child's own lifetime peak (ru_maxrss from wait4)
    sampled_peak_mb: float  # sampled peak of the child's process tree (children included)
    stdout: str


def run_measured(cmd: Sequence[str], *, env: dict | None = None, interval: float = 0.1
                 ) -> MeasuredRun:
    """Run `cmd`, stderr passed through, stdout captured; measure wall time and peak memory."""
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, env=env)
        with PeakSampler(proc.pid, interval=interval) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it, tell Popen
        out.seek(0)
        stdout = out.read()
    return MeasuredRun(returncode=proc.returncode, seconds=seconds,
                       cpu_seconds=usage.ru_utime + usage.ru_stime,
                       peak_rss_mb=usage.ru_maxrss / _KIB, sampled_peak_mb=sampler.peak_mb,
                       stdout=stdout)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
                file=None) -> None:
    """A plain left/right aligned text table: strings left, numbers right (pre-format floats)."""
    file = file or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(r[i]) for r in cells[1:] if r[i]) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(row, widths, numeric, strict=True)).rstrip()

    print(line(cells[0]), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells[1:]:
        print(line(row), file=file)


def _looks_numeric(text: str) -> bool:
    match = re.match(r"[+~-]?\d", text.strip())
    return match is not None


def machine_line() -> str:
    """CPU count, load average and Python version: the context every number depends on."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, load average {load} (1/5/15 min), "
            f"Python {platform.python_version()}, {platform.machine()}")
