"""`audit run` without explainers against bare batched forward passes measured in the same run.

    /work/venv/bin/python bench/bench_audit.py [--size 224] [--n-images 500] [--n-train N]
        [--max-robustness-images 256] [--model PATH] [--data ROLE=PATH ...] [--set KEY=VALUE]
        [--batch-size 64] [--quick] [--profile FILE] [--no-breakdown] [--workdir DIR] [--keep]

Target (issue): the audit takes at most 1.3x a bare batched forward pass over the same number
of images (every dataset plus every corrupted copy), datasets streamed, never held whole.

Steps: (1) a model (--model, else MobileNetV2 from `model.build` saved with minimal metadata)
and datasets (--data as for `audit run`, else synthetic train/heldout/shifted sets written to a
temp folder); (2) `run_audit` with explain, report and the output cache off, timed per step
from `result.timings`; (3) the forward passes it made, counted (sum of set sizes + every
check's `n_forward_passes`) and, unless --no-breakdown, by wrapping `Predictor.outputs`;
(4) the bare baselines over that many passes:

- pure compute: `Predictor.outputs` (the audit's own batched graph forward) on one pre-decoded
  batch, repeated; half before the audit and half after, so machine load hits both alike;
- decode + predict: every set streamed with `iter_batches` and predicted, then the robustness
  subset decoded once and re-predicted for the remaining (corrupted-copy) passes;
- keras `model.predict` on the pre-decoded batch (a sample of batches; its rate x passes).

The breakdown wraps the functions the time goes to (model calls, waiting for decoded batches,
image properties and the white-cell mask inside them, perceptual hashes, corruptions, file
scans and digests, artifacts) and prints where the audit's time beyond the bare forward goes.
Not a test: numbers depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_WEIGHTS,
    REPO,
    Timer,
    machine_line,
    peak_rss_mb,
    print_table,
    quiet_tensorflow,
    reset_peak_rss,
    rss_mb,
)

# Issue 16's targets: the synthetic default setup, and a real-data (--data) setup.
TARGET_RATIO = {"default": 1.15, "data": 1.25}
OFF_MAIN = "(off the main thread)"


# ---- setup ------------------------------------------------------------------------------------

def make_model(path: Path, *, size: int, alpha: float, weights: str | None) -> Path:
    from audit.synthetic import CLASSES
    from model.build import build_classifier
    from model.io import save_model

    model = build_classifier(len(CLASSES), input_size=size, alpha=alpha, weights=weights)
    return save_model(model, path, {"class_names": list(CLASSES), "input_size": size})


def make_datasets(root: Path, *, size: int, n_images: int, n_train: int) -> list[str]:
    """Synthetic train (if n_train), heldout (reference site) and shifted (other site) sets."""
    from audit.synthetic import REFERENCE_SITE, SHIFTED_SITE, write_site

    plan = [("heldout", "heldout", REFERENCE_SITE, n_images, 2),
            ("shifted:site_b", "site_b", SHIFTED_SITE, n_images, 3)]
    if n_train:
        plan.insert(0, ("train", "train", REFERENCE_SITE, n_train, 1))
    specs = []
    for role, name, domain, n, seed in plan:
        write_site(root / name, n_images=n, size=size, domain=domain, seed=seed, site_name=name)
        specs.append(f"{role}={root / name}")
    return specs


# ---- breakdown: wrap the functions the audit's time goes to ------------------------------------

class Breakdown:
    """Seconds and calls per labelled function, split by audit phase ('predict' or 'checks')."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.images: dict[str, int] = defaultdict(int)
        self.phase = "runner"
        self._threads = threading.local()  # the wrapped calls open on each thread
        self._undo: list[tuple[object, str, object]] = []

    def _set(self, owner, attr: str, value) -> None:
        self._undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def _everywhere(self, module_name: str, attr: str, wrapper_factory) -> None:
        """Replace function `module.attr` in its module and wherever it was imported by name;
        a module or function that does not exist (yet) in this version is skipped."""
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            return
        original = getattr(module, attr, None)
        if original is None:
            return
        wrapper = wrapper_factory(original)
        for mod in list(sys.modules.values()):
            name = getattr(mod, "__name__", "") or ""
            if (name.split(".")[0] in ("audit", "model")
                    and getattr(mod, attr, None) is original):
                self._set(mod, attr, wrapper)

    @property
    def _active(self) -> list[str]:
        if not hasattr(self._threads, "active"):
            self._threads.active = []
        return self._threads.active

    def _record(self, label: str, seconds: float, n_images: int | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            # A worker thread's chunk (audit.parallel.map_chunks): it overlaps the main
            # thread's time (and the other workers'), so it is not part of its sum.
            label = f"{label} {OFF_MAIN}"
        key = f"{label} [{self.phase}]"
        self.seconds[key] += seconds
        self.calls[key] += 1
        if n_images is not None:
            self.images[key] += n_images

    def timed(self, label: str):
        """Wrap a function; a call made inside another wrapped call is recorded as nested
        ('  label (in outer)'), so top-level rows never overlap."""
        def factory(original):
            def wrapper(*args, **kwargs):
                key = label if not self._active else f"  {label} (in {self._active[-1]})"
                self._active.append(label)
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._active.pop()
                    self._record(key, time.perf_counter() - t0, _n_images(args))
            return wrapper
        return factory

    def waited(self, label: str):
        """For generators: the time the consumer waits in next() (decoding not yet overlapped)."""
        def factory(original):
            def wrapper(*args, **kwargs):
                iterator = iter(original(*args, **kwargs))
                while True:
                    t0 = time.perf_counter()
                    try:
                        item = next(iterator)
                    except StopIteration:
                        self._record(label, time.perf_counter() - t0)
                        return
                    self._record(label, time.perf_counter() - t0)
                    yield item
            return wrapper
        return factory

    def phased(self, phase):
        """Calls of the wrapped function run in `phase` (a string, or a function of the call's
        arguments giving one)."""
        def factory(original):
            def wrapper(*args, **kwargs):
                previous = self.phase
                self.phase = phase(*args) if callable(phase) else phase
                try:
                    return original(*args, **kwargs)
                finally:
                    self.phase = previous
            return wrapper
        return factory

    def install(self) -> None:
        import audit.checks.base as base
        import audit.inference as predict

        base.load_builtin_checks()
        model_call = self.timed("model forward")
        self._set(predict.Predictor, "outputs", model_call(predict.Predictor.outputs))
        self._set(base.AuditContext, "save_artifact",
                  self.timed("save artifacts (npz)")(base.AuditContext.save_artifact))
        try:  # the run's pixel store (absent before issue 16's store; the baseline has none)
            from audit.pixels import PixelStore
        except ModuleNotFoundError:
            PixelStore = None
        if PixelStore is not None:
            self._set(PixelStore, "images",
                      self.timed("pixel store: decode what it lacks")(PixelStore.images))
        for module, attr, wrapper in (
            ("audit.inference", "compute_outputs", self.phased("predict")),
            ("audit.runner", "_run_check", self.phased(lambda check, *_: f"check.{check.name}")),
            ("audit.data", "iter_batches", self.waited("wait for decoded batch")),
            ("audit.data", "scan_files", self.timed("file check (decode all)")),
            ("audit.imaging", "image_properties", self.timed("image_properties")),
            ("audit.imaging", "white_cell_mask", self.timed("white_cell_mask")),  # before 5296d3d
            ("audit.cell_mask", "white_cell_mask", self.timed("white_cell_mask")),
            ("audit.leakage.duplicates", "dihedral_hashes", self.timed("dihedral_hashes")),
            ("audit.imaging", "perceptual_hash", self.timed("perceptual_hash")),
            ("audit.leakage.duplicates", "file_digests", self.timed("file digests (sha256)")),
            ("audit.corruptions", "corrupt", self.timed("corrupt")),
            ("audit.checks.gap_factors", "_fit_sample", self.timed("fit sample (decode+mask)")),
            ("audit.factors", "fit_factors", self.timed("fit_factors")),  # before issue 16
            ("audit.factors", "step", self.timed("factor transform (step)")),
            ("audit.gap_factors.fitting", "fit_factors", self.timed("fit_factors")),
            ("audit.gap_factors.transforms", "step", self.timed("factor transform (step)")),
            ("audit.thumbnails", "save_thumbnails", self.timed("save_thumbnails")),
            ("model.io", "load_model", self.timed("load model")),
            ("model.io", "model_hash", self.timed("model hash (sha256)")),
            ("audit.runner", "write_json", self.timed("write audit.json")),
        ):
            self._everywhere(module, attr, wrapper)

    def restore(self) -> None:
        while self._undo:
            owner, attr, original = self._undo.pop()
            setattr(owner, attr, original)

    def forward_images(self) -> int:
        return sum(n for k, n in self.images.items() if "model forward" in k)


def _n_images(args) -> int | None:
    """Images in the first image-batch argument (N, H, W, 3), if any."""
    return next((len(a) for a in args if getattr(a, "ndim", 0) == 4), None)


# ---- bare baselines ---------------------------------------------------------------------------

def bare_compute(predictor, batch, n_passes: int) -> Timer:
    """`n_passes` forward passes of the pre-decoded `batch` (a partial last batch), timed."""
    with Timer() as timer:
        left = n_passes
        while left > 0:
            predictor.outputs(batch[:left])
            left -= min(left, len(batch))
    return timer


def keras_predict_rate(model, batch, n_batches: int) -> float:
    """Seconds per image of keras `model.predict` over `n_batches` copies of `batch`."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensors(batch.astype("float32"))
    model.predict(data, verbose=0)  # warm-up: builds the predict function
    with Timer() as timer:
        model.predict(data.repeat(n_batches), verbose=0)
    return timer.seconds / (n_batches * len(batch))


def decode_and_predict(predictor, datasets, robustness_subset, *, image_size: int,
                       batch_size: int, n_passes: int) -> Timer:
    """Stream and predict every set, then re-predict the decoded robustness subset until
    `n_passes` forward passes are made (the audit decodes that subset once too), timed."""
    from audit.data import iter_batches

    with Timer() as timer:
        done = 0
        for dataset in datasets:
            for images, _ in iter_batches(dataset, image_size=image_size, resize=predictor.resize,
                                          batch_size=batch_size):
                predictor.outputs(images)
                done += len(images)
        decoded = []
        if robustness_subset is not None and len(robustness_subset):
            decoded = [images for images, _ in iter_batches(
                robustness_subset, image_size=image_size, resize=predictor.resize,
                batch_size=batch_size)]
        while decoded and done < n_passes:
            for images in decoded:
                chunk = images[:n_passes - done]
                predictor.outputs(chunk)
                done += len(chunk)
                if done >= n_passes:
                    break
    return timer


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input size (synthetic model/data)")
    parser.add_argument("--n-images", type=int, default=500,
                        help="images per synthetic heldout and shifted set (default 500)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="synthetic train set size (default --n-images; 0 = no train set)")
    parser.add_argument("--max-robustness-images", type=int, default=None,
                        help="checks.robustness.max_images (default: the check's default)")
    parser.add_argument("--model", help="a trained .keras model with CellAudit metadata")
    parser.add_argument("--label-map", help="label map for --data, as for `audit run`")
    parser.add_argument("--data", action="append", default=[], metavar="ROLE=PATH",
                        help="datasets as for `audit run` (repeatable); default synthetic")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override as for `audit run --set`")
    parser.add_argument("--batch-size", type=int, default=None, help="[audit] batch_size")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file()
                        else "none", help="MobileNetV2 no-top weights file, or 'none'")
    parser.add_argument("--predict-sample", type=int, default=8,
                        help="batches timed with keras model.predict (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 96 px, 64 images per set, 16 robustness images")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the audit under cProfile, save stats to FILE, print the top "
                             "functions (slows Python-heavy code: ratios are then inflated)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="do not wrap functions to attribute the audit's time")
    parser.add_argument("--workdir", help="folder for model, data and audit output "
                        "(default: a temp folder outside the repository)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.n_images = 96, min(args.n_images, 64)
        args.max_robustness_images = args.max_robustness_images or 16
    if args.n_train is None:
        args.n_train = args.n_images
    return args


def main(argv=None) -> int:
    quiet_tensorflow()
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cellaudit-bench-audit-"))
    if REPO == workdir.resolve() or REPO in workdir.resolve().parents:
        raise SystemExit("--workdir must be outside the repository")
    try:
        return run(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, workdir: Path) -> int:
    from audit.config import load_config
    from audit.data import load_dataset, read_images
    from audit.inference import Predictor
    from audit.labels import load_label_map
    from audit.runner import parse_data_spec, run_audit
    from model.io import read_metadata
    from model.loaded import load_model

    print(f"bench_audit: {machine_line()}")
    workdir.mkdir(parents=True, exist_ok=True)
    with Timer() as t_setup:
        if args.model:
            model_path = Path(args.model)
        else:
            weights = None if args.weights == "none" else args.weights
            model_path = make_model(workdir / "model.keras", size=args.size, alpha=args.alpha,
                                    weights=weights)
        size = int(read_metadata(model_path)["input_size"])
        texts = args.data or make_datasets(workdir / "data", size=size, n_images=args.n_images,
                                           n_train=args.n_train)
    specs = [parse_data_spec(t) for t in texts]
    print(f"setup {t_setup.seconds:.0f} s: model {model_path} ({size} px); data "
          + ", ".join(texts))

    config = load_config(overrides=args.set)
    config["audit"].update(explain=False, report=False, cache_dir="")
    if args.batch_size:
        config["audit"]["batch_size"] = args.batch_size
    if args.max_robustness_images is not None and "robustness" in config["checks"]:
        config["checks"]["robustness"]["max_images"] = args.max_robustness_images
    batch_size = int(config["audit"]["batch_size"])

    # Bare predictor on the same model file, loaded the way the audit loads it.
    model = load_model(model_path)
    class_names = model.contract.class_names
    label_map = load_label_map(args.label_map) if args.label_map else None
    sets = {s.name: load_dataset(s.source, name=s.name, class_names=class_names,
                                 label_map=label_map, check_files=False) for s in specs}
    heldout = sets[next(s.name for s in specs if s.role == "heldout")]
    batch = read_images(list(heldout.paths[:batch_size]), size, resize=model.contract.resize)
    if len(batch) < batch_size:  # tiny heldout: tile it to a full batch
        batch = batch[[i % len(batch) for i in range(batch_size)]]
    bare = Predictor(model, batch_size=batch_size,
                     forward_batch=int(config["audit"]["forward_batch"]))
    with Timer() as t_first:
        bare.outputs(batch)  # traces the graph function: a one-off the audit pays as well
    with Timer() as t_second:
        bare.outputs(batch)
    expected = _expected_passes(config, sets, heldout)
    print(f"bare forward at batch {batch_size} in model calls of {bare.forward_batch} "
          f"([audit] forward_batch as the audit): first call {t_first.seconds:.2f} s (tracing), "
          f"then {1000 * t_second.seconds / batch_size:.1f} ms/image; expected forward passes "
          f"{expected}")

    rss_before = rss_mb() or 0.0
    before = expected // 2
    half_a = bare_compute(bare, batch, before)
    predict_rate_a = keras_predict_rate(model.keras_model, batch,
                                        max(1, args.predict_sample // 2))

    breakdown = None if args.no_breakdown else Breakdown()
    if breakdown:
        breakdown.install()
    profiler = cProfile.Profile() if args.profile else None
    reset_peak_rss()
    rss_start = rss_mb() or 0.0
    try:
        with Timer() as audit:
            if profiler:
                profiler.enable()
            result = run_audit(model_path, specs, config=config, out_dir=workdir / "audit_out",
                               label_map=label_map, command=["bench_audit"])
            if profiler:
                profiler.disable()
    finally:
        if breakdown:
            breakdown.restore()
    audit_peak = peak_rss_mb()

    # Forward passes the audit made: every set once, plus what checks report.
    set_passes = sum(len(d) for d in sets.values())
    check_passes = {name: int(r.metrics.get("n_forward_passes") or 0)
                    for name, r in result.checks.items()
                    if isinstance(r.metrics, dict) and r.metrics.get("n_forward_passes")}
    n_passes = set_passes + sum(check_passes.values())

    reset_peak_rss()
    after = max(n_passes - before, 0)
    half_b = bare_compute(bare, batch, after)
    predict_rate_b = keras_predict_rate(model.keras_model, batch, max(1, args.predict_sample
                                                          - args.predict_sample // 2))
    robust_subset = None
    if "robustness" in result.checks and result.checks["robustness"].metrics:
        n_robust = int(result.checks["robustness"].metrics.get("n_images", 0))
        robust_subset = heldout.subset(range(min(n_robust, len(heldout))))
    streamed = decode_and_predict(bare, list(sets.values()), robust_subset, image_size=size,
                                  batch_size=batch_size, n_passes=n_passes)
    bare_peak = peak_rss_mb()

    # Priced per pass, in case the audit made fewer passes than the half run before it.
    scale = n_passes / max(before + after, 1)
    pure_wall = (half_a.seconds + half_b.seconds) * scale
    pure_cpu = (half_a.cpu_seconds + half_b.cpu_seconds) * scale
    predict_seconds = n_passes * (predict_rate_a + predict_rate_b) / 2
    _print_steps(result, audit.seconds)
    counted = breakdown.forward_images() if breakdown else None
    print(f"\nforward passes: sets {set_passes} + "
          + " + ".join(f"{k} {v}" for k, v in check_passes.items()) + f" = {n_passes}"
          + (f" (counted at Predictor.outputs: {counted})" if counted is not None else ""))
    print(f"\naudit: wall {audit.seconds:.1f} s, CPU {audit.cpu_seconds:.1f} s "
          f"(timings.total {result.timings.get('total', 0):.1f} s); bare baselines over the "
          f"same {n_passes} passes:")
    rows = [
        ("pure compute: Predictor, pre-decoded batch", f"{pure_wall:.1f}", f"{pure_cpu:.1f}",
         f"{1000 * pure_wall / n_passes:.1f}", f"{audit.seconds / pure_wall:.2f}x",
         f"{audit.cpu_seconds / pure_cpu:.2f}x",
         f"{before} passes before the audit at {_ms(half_a, before)}, "
         f"{after} after at {_ms(half_b, after)}"),
        ("decode + predict: iter_batches + Predictor", f"{streamed.seconds:.1f}",
         f"{streamed.cpu_seconds:.1f}", f"{1000 * streamed.seconds / n_passes:.1f}",
         f"{audit.seconds / streamed.seconds:.2f}x",
         f"{audit.cpu_seconds / streamed.cpu_seconds:.2f}x", "after the audit"),
        ("keras model.predict, pre-decoded", f"{predict_seconds:.1f}", "",
         f"{1000 * predict_seconds / n_passes:.1f}", f"{audit.seconds / predict_seconds:.2f}x",
         "", f"rate over {args.predict_sample} batches x passes"),
    ]
    print_table(("baseline", "wall s", "CPU s", "ms/pass", "audit/bare wall",
                 "audit/bare CPU", "note"), rows)
    headline = audit.seconds / pure_wall
    one_offs = (breakdown.seconds.get("load model [runner]", 0.0) if breakdown else 0.0) \
        + max(t_first.seconds - t_second.seconds, 0.0)
    target = TARGET_RATIO["data" if args.data else "default"]
    print(f"\nratio audit / bare forward (wall, pure compute) = {headline:.2f}x, target <= "
          f"{target}x: {'OK' if headline <= target else 'ABOVE TARGET'}")
    if breakdown:
        inside = sum(v for k, v in breakdown.seconds.items() if k.startswith("model forward"))
        outside = audit.seconds - inside
        print(f"  with the audit's model calls at the bare rate (bare + the {outside:.1f} s the "
              f"audit spent outside model calls): {(pure_wall + outside) / pure_wall:.2f}x; "
              f"its model calls ran at {1000 * inside / max(counted or 1, 1):.1f} ms/pass, the "
              f"bare at {1000 * pure_wall / n_passes:.1f}")
    print(f"  CPU time (all threads of this process; robust to other processes' load, but "
          f"single-threaded work counts once, multi-threaded TensorFlow on every core): "
          f"{audit.cpu_seconds / pure_cpu:.2f}x")
    if one_offs:
        print(f"  without one-off costs (model file load + one graph trace, {one_offs:.1f} s): "
              f"{(audit.seconds - one_offs) / pure_wall:.2f}x")
    if breakdown:
        _print_breakdown(breakdown, result, audit.seconds, pure_wall / n_passes)
    decoded_mb = sum(len(d) for d in sets.values()) * size * size * 3 / 2 ** 20
    print(f"\npeak RSS: audit {audit_peak:.0f} MiB (RSS at its start {rss_start:.0f} MiB, "
          f"{audit_peak - rss_start:+.0f} MiB during); bare baselines {bare_peak:.0f} MiB; "
          f"process before the audit {rss_before:.0f} MiB. All sets decoded at once would be "
          f"{decoded_mb:.0f} MiB of uint8 pixels.")
    if profiler:
        _print_profile(profiler, args.profile)
    return 0


def _ms(timer: Timer, n: int) -> str:
    return f"{1000 * timer.seconds / max(n, 1):.1f} ms/pass"


def _expected_passes(config, sets, heldout) -> int:
    n = sum(len(d) for d in sets.values())
    robust = config["checks"].get("robustness")
    if robust is not None and (not config["audit"]["checks"]
                               or "robustness" in config["audit"]["checks"]):
        from audit.corruptions import CORRUPTIONS

        k = len(robust["corruptions"] or CORRUPTIONS)
        n += k * len(set(robust["severities"])) * min(int(robust["max_images"]), len(heldout))
    return n


def _print_steps(result, audit_wall: float) -> None:
    rows = [(k, f"{v:.1f}", f"{v / audit_wall:.0%}") for k, v in result.timings.items()
            if not k.startswith(("cache_hit", "pixels.")) and k != "total"]
    rows.append(("total (timings)", f"{result.timings.get('total', 0):.1f}", ""))
    rows.append(("wall (incl. writing audit.json)", f"{audit_wall:.1f}", "100%"))
    print("\naudit steps (result.timings):")
    print_table(("step", "seconds", "share"), rows)
    pixels = {k.split(".", 1)[1]: v for k, v in result.timings.items()
              if k.startswith("pixels.")}
    if pixels:  # what the checks, explanations and thumbnails decoded after the per-image pass
        print(f"pixel store: {pixels['requested']:.0f} images asked for, "
              f"{pixels['decoded']:.0f} decoded, {pixels['masks']:.0f} masks computed, "
              f"{pixels['held']:.0f} held ({pixels['held_mb']:.0f} MB)")


def _print_breakdown(breakdown: Breakdown, result, audit_wall: float,
                     bare_per_pass: float) -> None:
    print("\nwhere the audit's time goes (wrapped functions; indented rows are part of the row "
          "above; [phase]: predict = compute_outputs, check.X = that check, runner = the rest; "
          f"rows marked {OFF_MAIN} ran on another thread, overlapping the main thread's rows, "
          "and are not part of 'other'):")
    timings = result.timings
    phase_total = {"predict": timings.get("predict", 0.0)}
    phase_total.update({k: v for k, v in timings.items() if k.startswith("check.")})
    phase_total = {"runner": audit_wall - sum(phase_total.values()), **phase_total}
    rows = []
    for phase, total in phase_total.items():
        keys = sorted((k for k in breakdown.seconds if k.endswith(f"[{phase}]")), key=_order)
        if total < 0.05 and not keys:
            continue
        rows.append((f"[{phase}] total", f"{total:.1f}", f"{total / audit_wall:.0%}", "", ""))
        for key in keys:
            seconds, n = breakdown.seconds[key], breakdown.images.get(key)
            per_image = f"{n} images, {1000 * seconds / n:.1f} ms/image" if n else ""
            if n and "model forward" in key:
                per_image += f" (bare {1000 * bare_per_pass:.1f})"
            rows.append(("  " + key.rsplit(" [", 1)[0], f"{seconds:.1f}",
                         f"{seconds / audit_wall:.0%}", breakdown.calls[key], per_image))
        # Rows without indentation never nest in one another: the rest is unattributed.
        other = total - sum(breakdown.seconds[k] for k in keys
                            if not k.startswith(" ") and OFF_MAIN not in k)
        if keys:
            rows.append(("  other (not in a wrapped function)", f"{other:.1f}",
                         f"{other / audit_wall:.0%}", "", ""))
    print_table(("phase / function", "seconds", "share", "calls", "per image"), rows)


def _order(key: str) -> tuple[int, int]:
    label = key.rsplit(" [", 1)[0]
    names = ("load model", "file check", "model hash", "wait for decoded", "model forward",
             "image_properties", "white_cell_mask", "dihedral_hashes", "perceptual_hash",
             "corrupt", "fit sample", "fit_factors", "factor transform", "file digests",
             "save_thumbnails", "save artifacts", "write audit.json")
    index = next((i for i, n in enumerate(names) if label.strip().startswith(n)), len(names))
    if label.startswith(" "):  # nested: right after its parent
        parent = label.rsplit("(in ", 1)[-1].rstrip(")")
        return next((i for i, n in enumerate(names) if parent.startswith(n)), index), 1
    return index, 0


def _print_profile(profiler: cProfile.Profile, path: str) -> None:
    profiler.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(25)
    print(f"\ncProfile (saved to {path}; top 25 by own time):")
    print(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
