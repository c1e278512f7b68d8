"""Explanation cost at 224 px against a bare batched forward pass measured in the same run.

Costs are CPU seconds of this process (`time.process_time`, all threads): on a shared machine
they vary far less with other jobs' load than wall-clock seconds, which are printed too.

    /work/venv/bin/python bench/bench_explain.py [--images 8] [--weights PATH|none]
                                                 [--gradient-explainer]

For each method: seconds per image, model-evaluation seconds (time inside the predictor's
calls) and the share spent outside them, and the ratio to the bare forward cost of the passes
the method needs (Grad-CAM: one image; SHAP: max_evals; LIME: num_samples). Targets: Grad-CAM
<= 4x one forward pass per image; SHAP and LIME <= 1.5x their forward passes. One-off costs
(TensorFlow tracing, shap's numba compilation) are measured on a warm-up call and printed
apart. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from model.views import VIEWS  # noqa: E402 - no TensorFlow import

DEFAULT_WEIGHTS = Path(os.environ.get("CELLAUDIT_WEIGHTS", REPO.parent / "shared" / "weights"
                                      / "mobilenet_v2_1.0_no_top.weights.h5"))


clock = time.process_time


class TimedPredictor:
    """Wraps a Predictor: counts the CPU seconds spent inside model calls."""

    def __init__(self, predictor):
        self.inner = predictor
        self.seconds = 0.0

    @property
    def n_images(self) -> int:
        return self.inner.n_images

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def probs(self, images):
        t0 = clock()
        try:
            return self.inner.probs(images)
        finally:
            self.seconds += clock() - t0


def bare_forward_seconds(predictor, images: np.ndarray, *, repeats: int = 3) -> float:
    """Best-of-`repeats` CPU seconds per image of a batched forward pass (after a warm-up)."""
    predictor.probs(images)
    best = np.inf
    for _ in range(repeats):
        t0 = clock()
        predictor.probs(images)
        best = min(best, (clock() - t0) / len(images))
    return best


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help="MobileNetV2 no-top weights file, or 'none'")
    parser.add_argument("--gradient-explainer", action="store_true",
                        help="also time shap.GradientExplainer (slow) for comparison")
    parser.add_argument("--views", default="single", choices=VIEWS,
                        help="the model's test-time views (the bare forward uses them too)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to time (default: [explain] methods)")
    args = parser.parse_args(argv)

    from audit.explain.base import make_explainer
    from audit.explain.config import EXPLAIN_DEFAULTS
    from audit.inference import Predictor
    from audit.synthetic import generate
    from model.build import build_classifier
    from model.loaded import ContractOptions, from_keras_model

    weights = None if args.weights == "none" or not Path(args.weights).is_file() else args.weights
    model = from_keras_model(
        build_classifier(5, input_size=args.size, weights=weights),
        ContractOptions(classes=tuple(f"class_{i}" for i in range(5)), views=args.views))
    images, _, _ = generate(args.images, size=args.size, seed=0)
    cfg = dict(EXPLAIN_DEFAULTS)
    big = int(cfg["batch_size"])
    predictor = Predictor(model, batch_size=big)
    targets = predictor.probs(images).argmax(axis=1)
    print(f"model: MobileNetV2 alpha 1.0, {args.size} px, weights "
          f"{'ImageNet (local file)' if weights else 'random'}, views {args.views}; "
          f"{args.images} images; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")

    # Bare forward cost per image at the batch sizes the methods use, re-measured right before
    # each method (the machine may be shared: the ratio compares like with like).
    small_batch = images[:min(len(images), int(cfg["gradcam_batch_size"]))]
    small_predictor = Predictor(model, batch_size=len(small_batch))
    big_batch = np.concatenate([images] * max(1, -(-big // len(images))))[:big]

    rows = []
    for name in (args.methods.split(",") if args.methods else cfg["methods"]):
        timed = TimedPredictor(Predictor(model, batch_size=big))
        explainer = make_explainer(name, model, cfg, seed=0, predictor=timed)
        t0 = time.perf_counter()
        explainer.explain(images[:1], targets[:1])  # warm-up: tracing, numba compilation
        one_off = time.perf_counter() - t0  # wall seconds
        fwd_small = bare_forward_seconds(small_predictor, small_batch)
        fwd_big = bare_forward_seconds(predictor, big_batch)
        timed.seconds, before = 0.0, timed.n_images
        t0, wall = clock(), time.perf_counter()
        explainer.explain(images, targets)
        total = (clock() - t0) / len(images)
        wall = (time.perf_counter() - wall) / len(images)
        passes = (timed.n_images - before) / len(images)
        if name == "gradcam":
            inside, needed = 0.0, fwd_small
            ratio, target = total / fwd_small, 4.0
        else:
            inside = timed.seconds / len(images)
            needed = passes * fwd_big
            ratio, target = total / needed, 1.5
        print(f"{name}: bare forward {1000 * fwd_small:.1f} CPU ms/image at batch "
              f"{len(small_batch)}, {1000 * fwd_big:.1f} at batch {big}; "
              f"load {os.getloadavg()[0]:.1f}")
        rows.append((name, total, passes, inside, needed, ratio, target, one_off, wall))

    print(f"\n{'method':8} {'cpu s/im':>8} {'fwd/img':>8} {'in model':>9} {'outside':>8} "
          f"{'bare need':>9} {'ratio':>6} {'target':>6} {'wall s/im':>9} {'one-off s':>9}")
    for name, total, passes, inside, needed, ratio, target, one_off, wall in rows:
        outside = 1 - inside / total if inside else float("nan")
        print(f"{name:8} {total:8.3f} {passes:8.0f} {inside:9.3f} {outside:8.1%} "
              f"{needed:9.3f} {ratio:5.2f}x {target:5.1f}x {wall:9.3f} {one_off:9.1f}"
              + ("" if ratio <= target else "  ABOVE TARGET"))
    print("(gradcam: ratio = seconds per image / one bare forward pass at the same batch size; "
          "shap, lime: ratio = seconds per image / bare forward cost of the passes they make; "
          "'outside' = share of time not spent in model calls)")
    steps = int(cfg["faithfulness_steps"])
    print(f"faithfulness: {2 * (steps + 1)} forward passes per image and method "
          f"(~{2 * (steps + 1) * bare_forward_seconds(predictor, big_batch):.2f} s at the "
          "bare cost)")
    if args.gradient_explainer:
        _gradient_explainer(model.keras_model, images[:2], targets[:2])
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    return 0


def _gradient_explainer(model, images: np.ndarray, targets: np.ndarray) -> None:
    """shap.GradientExplainer on the logit of class `targets[0]`, 20 samples, for comparison."""
    import keras
    import shap

    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    background = images.astype(np.float32)
    explainer = shap.GradientExplainer(logits, background)
    for label in ("first call", "second call"):
        t0 = time.perf_counter()
        explainer.shap_values(images.astype(np.float32), nsamples=20, ranked_outputs=1, rseed=0)
        print(f"shap.GradientExplainer ({label}, {len(images)} images, 20 samples, top class): "
              f"{(time.perf_counter() - t0) / len(images):.2f} s/image")


if __name__ == "__main__":
    sys.exit(main())
