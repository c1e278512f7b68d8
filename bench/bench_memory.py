"""Peak resident memory of streaming a large image set: loading, prediction and training.

    /work/venv/bin/python bench/bench_memory.py [--n-images 20000] [--size 224]
        [--data MANIFEST_OR_DIR] [--steps load,predict,train] [--train-phase finetune|head]
        [--limit-predict N] [--limit-train N] [--workdir DIR] [--keep] [--quick]

Target (issue): 20,000 images at 224 px never sit in memory at once; peak resident memory
while training or predicting on such a set stays under 3 GB (3.0e9 bytes).

Without --data, a synthetic set is written (in parallel shards, `audit.synthetic.write_site`)
to a temporary folder outside the repository and deleted afterwards unless --keep. Each step
runs in its own Python process, so one step's peak cannot hide in another's, and is measured
from outside (`os.wait4` ru_maxrss, and a sampled RSS of the process tree):

- idle:    imports, TensorFlow start-up and building the model: the floor under the others;
- load:    `audit.data.load_dataset` (which decodes every file once to check it) and one full
           `iter_batches` pass at the input size;
- predict: `audit.inference.compute_outputs` (Predictor forward passes plus image properties and
           perceptual hashes), as `audit run` does per dataset;
- train:   one epoch of `model.train.train_classifier` on the tf.data pipeline: by default the
           fine-tuning phase (top blocks from block_13 unfrozen, batch 32), or --train-phase head.

For scale: one eager `model(x, training=True)` call on 256 images at 224 px took 23 GB, while
fine-tuning through the generator-fed tf.data pipeline at batch 32 stayed near 2.5 GB.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_WEIGHTS,
    REPO,
    Timer,
    machine_line,
    print_table,
    quiet_tensorflow,
    run_measured,
)

STEPS = ("idle", "load", "predict", "train")
TARGET_BYTES = 3.0e9
_MIB = 1024.0 ** 2


# ---- the data set ----------------------------------------------------------------------------

def _write_shard(out_dir: str, n_images: int, size: int, seed: int, name: str) -> str:
    from audit.synthetic import write_site

    return str(write_site(out_dir, n_images=n_images, size=size, seed=seed, site_name=name))


def write_synthetic_set(root: Path, *, n_images: int, size: int, workers: int) -> Path:
    """`workers` synthetic shards under `root`, joined by one manifest; returns its path.

    Each shard is a `write_site` folder (its own seed); root/manifest.csv lists every image with
    a path relative to root, so `load_dataset(root/manifest.csv)` sees one set.
    """
    root.mkdir(parents=True, exist_ok=True)
    counts = [n_images // workers + (1 if k < n_images % workers else 0) for k in range(workers)]
    jobs = [(str(root / f"shard_{k}"), n, size, 100 + k, f"shard{k}")
            for k, n in enumerate(counts) if n > 0]
    with ProcessPoolExecutor(max_workers=len(jobs)) as pool:
        manifests = list(pool.map(_write_shard, *zip(*jobs, strict=True)))
    rows = []
    for manifest in manifests:
        shard = Path(manifest).parent.name
        with open(manifest, newline="") as fh:
            rows += [(f"{shard}/{r['path']}", r["label"], r["group"]) for r in csv.DictReader(fh)]
    combined = root / "manifest.csv"
    with open(combined, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "group"))
        writer.writerows(rows)
    return combined


# ---- worker side: one step in this process, one JSON line on stdout ---------------------------

def _load(source: str, limit: int):
    from audit.data import load_dataset

    dataset = load_dataset(source)
    return dataset.subset(range(min(limit, len(dataset)))) if limit else dataset


def _model(args):
    from model.build import build_classifier

    weights = None if args.weights == "none" else args.weights
    return build_classifier(5, input_size=args.size, alpha=args.alpha, weights=weights)


def _worker(args) -> dict:
    started = time.perf_counter()
    if args.worker == "idle":
        import tensorflow  # noqa: F401

        _model(args)
        return {"images": 0, "seconds": time.perf_counter() - started}
    if args.worker == "load":
        from audit.data import iter_batches

        with Timer() as t_load:
            dataset = _load(args.data, 0)
        n, checksum = 0, 0
        with Timer() as t_pass:
            for images, _ in iter_batches(dataset, image_size=args.size, resize="crop",
                                          batch_size=args.batch_size):
                n += len(images)
                checksum += int(images[:, ::32, ::32].sum())  # touch the pixels
        return {"images": n, "seconds": t_pass.seconds, "load_seconds": t_load.seconds,
                "checksum": checksum}
    if args.worker == "predict":
        from audit.inference import Predictor, compute_outputs

        dataset = _load(args.data, args.limit_predict)
        predictor = Predictor(_model(args), batch_size=args.batch_size)
        with Timer() as t:
            outputs = compute_outputs(dataset, predictor=predictor, cache_dir=None)
        return {"images": len(outputs.logits), "seconds": t.seconds,
                "forward_passes": predictor.n_images}
    if args.worker == "train":
        import numpy as np

        from model.train import TrainConfig, train_classifier

        dataset = _load(args.data, 0)
        n_train = min(args.limit_train or len(dataset), len(dataset) - args.val_images)
        train_idx = np.arange(n_train)
        val_idx = np.arange(len(dataset) - args.val_images, len(dataset))
        head = args.train_phase == "head"
        config = TrainConfig(input_size=args.size, alpha=args.alpha,
                             weights=None if args.weights == "none" else args.weights,
                             batch_size=args.train_batch_size, head_epochs=1 if head else 0,
                             finetune_epochs=0 if head else 1, seed=0)
        result = train_classifier(dataset, train_idx, dataset, val_idx, config=config, verbose=0)
        return {"images": n_train, "val_images": len(val_idx),
                "seconds": result.phases[0]["seconds"], "phase": result.phases[0]}
    raise ValueError(f"unknown step {args.worker!r}")


# ---- parent side ------------------------------------------------------------------------------

def _worker_cmd(step: str, args, data: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", step, "--data", data,
           "--size", str(args.size), "--alpha", str(args.alpha), "--weights", args.weights,
           "--batch-size", str(args.batch_size), "--train-batch-size", str(args.train_batch_size),
           "--train-phase", args.train_phase, "--val-images", str(args.val_images)]
    if args.limit_predict:
        cmd += ["--limit-predict", str(args.limit_predict)]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    return cmd


def _describe(step: str, args, n_total: int) -> str:
    if step == "idle":
        return "imports + TensorFlow + build model"
    if step == "load":
        return f"load_dataset + iter_batches, batch {args.batch_size}"
    if step == "predict":
        n = min(args.limit_predict or n_total, n_total)
        return f"compute_outputs on {n} images, batch {args.batch_size}"
    n = min(args.limit_train or n_total, n_total - args.val_images)
    return (f"1 {args.train_phase} epoch on {n} images (+{args.val_images} val), "
            f"batch {args.train_batch_size}")


def main(argv=None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=20_000,
                        help="synthetic set size (default 20000); ignored with --data")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--data", help="an existing set (folder or manifest.csv) instead")
    parser.add_argument("--steps", default="idle,load,predict,train",
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="prediction / loading batch (audit default 64)")
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--train-phase", choices=("finetune", "head"), default="finetune")
    parser.add_argument("--val-images", type=int, default=256,
                        help="validation images for the training step (taken from the end)")
    parser.add_argument("--limit-predict", type=int, default=0,
                        help="predict only the first N images (0 = all)")
    parser.add_argument("--limit-train", type=int, default=0,
                        help="train on only the first N images (0 = all but the validation)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file()
                        else "none", help="MobileNetV2 no-top weights file, or 'none'")
    parser.add_argument("--synth-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", help="where to write the synthetic set (default: a temp "
                        "folder outside the repository)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic set")
    parser.add_argument("--generate-only", action="store_true",
                        help="write the synthetic set, print its manifest path and stop")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 600 images at 96 px, 256 predicted, 256 trained")
    parser.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    if args.quick:
        args.n_images, args.size = min(args.n_images, 600), 96
        args.limit_predict, args.limit_train, args.val_images = 256, 256, 64
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; known: {', '.join(STEPS)}")

    print(f"bench_memory: {machine_line()}")
    workdir = None
    if args.data:
        data = args.data
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cellaudit-bench-memory-"))
        if REPO in workdir.resolve().parents:
            parser.error("--workdir must be outside the repository")
        with Timer() as t:
            data = str(write_synthetic_set(workdir / "set", n_images=args.n_images,
                                           size=args.size, workers=max(1, args.synth_workers)))
        print(f"wrote {args.n_images} synthetic images at {args.size} px to {data} in "
              f"{t.seconds:.0f} s ({args.n_images / t.seconds:.1f} images/s, "
              f"{args.synth_workers} workers)")
        if args.generate_only:
            return 0
    try:
        return _measure(args, steps, data)
    finally:
        if workdir is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir is not None:
            print(f"kept {workdir}")


def _measure(args, steps: list[str], data: str) -> int:
    from audit.data import load_dataset

    n_total = len(load_dataset(data, check_files=False))
    print(f"set: {data} ({n_total} images), {args.size} px; weights "
          f"{'random' if args.weights == 'none' else Path(args.weights).name}; target peak RSS "
          f"< {TARGET_BYTES / 1e9:.1f} GB per step")
    rows, failed = [], 0
    for step in steps:
        run = run_measured(_worker_cmd(step, args, data), env=dict(os.environ))
        if run.returncode != 0:
            print(f"step {step} failed with exit code {run.returncode}", file=sys.stderr)
            failed += 1
            continue
        report = json.loads(run.stdout.strip().splitlines()[-1])
        peak_bytes = run.peak_rss_mb * _MIB
        rate = report["images"] / report["seconds"] if report["images"] else None
        verdict = "" if step == "idle" else ("ok" if peak_bytes < TARGET_BYTES else "ABOVE")
        rows.append((step, _describe(step, args, n_total), f"{peak_bytes / 1e9:.2f}",
                     f"{run.sampled_peak_mb * _MIB / 1e9:.2f}",
                     f"{rate:.1f}" if rate else "-", f"{report['seconds']:.0f}",
                     f"{run.seconds:.0f}", verdict))
        print(f"  {step}: {json.dumps(report)}", flush=True)
    print()
    print_table(("step", "what", "peak GB", "sampled GB", "images/s", "step s", "wall s",
                 "< 3 GB"), rows)
    print("(peak GB: the step process's lifetime peak RSS from wait4, decimal GB; sampled GB: "
          "RSS of its process tree sampled every 0.1 s; images/s over the step's own work, "
          "excluding start-up; wall s includes Python/TensorFlow start-up)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
