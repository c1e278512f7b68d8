"""Forward-pass speed by images per model call: where `[audit] forward_batch`'s default comes from.

    python bench/bench_forward_batch.py [--sizes 224,160,96,64] [--images 96] [--repeats 3]
        [--alpha 1.0] [--weights PATH] [--views single,dihedral8]

For each input size, one MobileNetV2 classifier (as `audit train` builds it) is called through
`audit.inference.Predictor` on the same synthetic images in calls of 1 to 64 images. Each call
size is timed `--repeats` times, interleaved with the others so that a change of machine load
hits them all; the best repeat counts. Printed per size: ms per image for each call size, the
ratio against the largest call (64 inputs: the old default) and the call size the default rule picks
(`audit.inference.resolve_forward_batch`, about 2^18 pixels per call), and the process's peak
resident memory after the size's runs.

With `--views single,dihedral8` each size is also timed with test-time views (one model call
per view, each holding the call's images; up to 64 inputs per call in all), and the cost of
the views is the ms per image at the default rule with views against without.

Not a test: numbers depend on the CPU (its caches above all) and its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_WEIGHTS,
    machine_line,
    peak_rss_mb,
    print_table,
    quiet_tensorflow,
)
from model.views import VIEWS  # noqa: E402 - no TensorFlow import

CALL_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,160,96,64", help="input sizes, comma-separated")
    parser.add_argument("--images", type=int, default=96, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file()
                        else None, help="ImageNet weights file (default: the shared one)")
    parser.add_argument("--views", default="single",
                        help=f"test-time views to time, comma-separated ({', '.join(VIEWS)})")
    args = parser.parse_args(argv)
    unknown = set(args.views.split(",")) - set(VIEWS)
    if unknown:
        parser.error(f"--views: unknown {', '.join(sorted(unknown))}; expected "
                     f"{', '.join(VIEWS)}")
    return args


def time_call_sizes(predictor, images, call_sizes, repeats: int) -> dict[int, float]:
    """Best ms per image over `repeats` interleaved passes of `images`, per call size."""
    for size in call_sizes:  # one warm-up call each: the graph is traced once, shapes vary
        predictor.outputs(images[:size])
    best = {size: float("inf") for size in call_sizes}
    for _ in range(repeats):
        for size in call_sizes:
            t0 = time.perf_counter()
            for start in range(0, len(images), size):
                predictor.outputs(images[start:start + size])
            best[size] = min(best[size], (time.perf_counter() - t0) / len(images) * 1e3)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow()
    from audit.inference import Predictor, resolve_forward_batch
    from audit.synthetic import generate
    from model.build import build_classifier
    from model.loaded import ContractOptions, from_keras_model
    from model.views import view_count

    print(f"bench_forward_batch: {machine_line()}")
    print(f"MobileNetV2 alpha {args.alpha}, {args.images} images per pass, best of "
          f"{args.repeats}; ratio = ms/image against the largest call timed (64 inputs)\n")
    rows, at_rule = [], {}
    for input_size in (int(s) for s in args.sizes.split(",")):
        model = build_classifier(5, input_size=input_size, alpha=args.alpha,
                                 weights=args.weights)
        images, _, _ = generate(args.images, size=input_size, seed=1)
        for views in args.views.split(","):
            n_views = view_count(views)
            picked = min(resolve_forward_batch(0, input_size, 64, views=views), args.images)
            calls = sorted({c for c in CALL_SIZES if c <= args.images and c * n_views <= 64}
                           | {picked})
            # batch_size = forward_batch = 64: calls are exactly the slices given
            loaded = from_keras_model(model, ContractOptions(
                classes=tuple(f"class_{i}" for i in range(5)), views=views))
            predictor = Predictor(loaded, batch_size=64, forward_batch=64)
            best = time_call_sizes(predictor, images, calls, args.repeats)
            fastest = min(best, key=best.get)
            base = best[max(calls)]
            at_rule[input_size, views] = best[picked]
            for call in calls:
                note = " ".join(n for n, hit in (("default rule", call == picked),
                                                 ("fastest", call == fastest)) if hit)
                rows.append([input_size, views, call, f"{best[call]:.2f}",
                             f"{best[call] / base:.2f}",
                             round(call * n_views * input_size ** 2 / 2 ** 10), note])
            print(f"{input_size} px, views {views}: the default rule picks {picked} "
                  f"({best[picked]:.2f} ms/image), fastest {fastest} "
                  f"({best[fastest]:.2f}), calls of {max(calls)} {base:.2f} ms/image; "
                  f"peak RSS so far {peak_rss_mb():.0f} MiB", flush=True)
            if views != "single" and (input_size, "single") in at_rule:
                print(f"  views {views} cost {best[picked] / at_rule[input_size, 'single']:.2f}x "
                      f"a single view per image, each at its default rule", flush=True)
    print()
    print_table(["input px", "views", "images/call", "ms/image", "vs largest", "kpixels/call",
                 "note"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
