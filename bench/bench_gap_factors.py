"""Attribution check cost against the forward passes it makes, measured in the same run.

    /work/venv/bin/python bench/bench_gap_factors.py [--images 48] [--size 224] [--alpha 1.0]
                                                     [--factors color,scale,...] [--batch-size 32]

Two synthetic sites (the reference and `audit.synthetic.SHIFTED_SITE`, which differs in stain,
blur, cell scale, background density and class mix) are written at `--size` px; a random-weight
MobileNetV2 (weights do not change the cost) is run once per set for the cached outputs, then
the gap-factors check runs with `max_images=--images`. Reported: the check's seconds, the
seconds inside the model's calls (its forward passes), the share of time spent fitting the
transforms, and the ratio check / forward. Target: <= 3x. Not a test: numbers depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


class TimedPredictor:
    """Wraps a Predictor: the seconds and images spent inside model calls."""

    def __init__(self, predictor):
        self.inner = predictor
        self.seconds = 0.0
        self.batch_size = predictor.batch_size

    @property
    def n_images(self) -> int:
        return self.inner.n_images

    def outputs(self, images):
        t0 = time.perf_counter()
        try:
            return self.inner.outputs(images)
        finally:
            self.seconds += time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images per set (max_images)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--factors", default="color,scale,sharpness,resolution,background,priors")
    args = parser.parse_args(argv)

    from conftest import make_context

    import audit.checks.gap_factors as gap_factors
    from audit.checks.base import DatasetView
    from audit.data import load_dataset
    from audit.inference import Predictor, compute_outputs
    from audit.synthetic import CLASSES, REFERENCE_SITE, SHIFTED_SITE, write_site
    from model.build import build_classifier

    root = Path(tempfile.mkdtemp(prefix="bench_gap_factors_"))
    model = build_classifier(5, input_size=args.size, alpha=args.alpha, weights=None)
    predictor = Predictor(model, batch_size=64)
    views = []
    t0 = time.perf_counter()
    for name, domain, seed in (("heldout", REFERENCE_SITE, 1), ("site_b", SHIFTED_SITE, 2)):
        write_site(root / name, n_images=args.images, size=args.size, domain=domain, seed=seed,
                   site_name=name)
        dataset = load_dataset(root / name, name=name, class_names=CLASSES)
        outputs = compute_outputs(dataset, predictor=predictor, cache_dir=None)
        views.append(DatasetView(name, "heldout" if name == "heldout" else "shifted", dataset,
                                 outputs))
    setup = time.perf_counter() - t0
    predictor.outputs(np.zeros((args.batch_size, args.size, args.size, 3), np.uint8))  # trace

    timed = TimedPredictor(predictor)
    fit_seconds = [0.0]
    real_fit = gap_factors.fit_factors

    def timed_fit(*a, **k):
        t = time.perf_counter()
        try:
            return real_fit(*a, **k)
        finally:
            fit_seconds[0] += time.perf_counter() - t

    gap_factors.fit_factors = timed_fit
    factors = "[" + ", ".join(f'"{f}"' for f in args.factors.split(",")) + "]"
    ctx = make_context(views, tmp_path=root / "out", predictor=timed, image_size=args.size,
                       overrides=[f"checks.gap_factors.factors={factors}",
                                  f"checks.gap_factors.max_images={args.images}",
                                  f"checks.gap_factors.batch_size={args.batch_size}"])
    t0 = time.perf_counter()
    result = gap_factors.GapFactorsCheck().run(ctx)
    total = time.perf_counter() - t0
    gap_factors.fit_factors = real_fit

    n_forward = result.metrics["n_forward_passes"]
    print(f"setup (write sites, cached outputs): {setup:.1f} s")
    print(f"images per set {args.images} at {args.size} px, alpha {args.alpha}; "
          f"factors {args.factors}")
    print(f"forward passes: {n_forward} images, {timed.seconds:.1f} s "
          f"({1000 * timed.seconds / max(n_forward, 1):.1f} ms/image)")
    print(f"fitting the transforms: {fit_seconds[0]:.1f} s")
    print(f"check total: {total:.1f} s; other (decode, masks, transforms, bootstrap): "
          f"{total - timed.seconds - fit_seconds[0]:.1f} s")
    print(f"ratio check / forward passes: {total / max(timed.seconds, 1e-9):.2f} (target <= 3)")
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
