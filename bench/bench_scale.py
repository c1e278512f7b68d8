"""Throughput and driver memory of the per-image pass against the number of images, for the
local engine and the Ray engine with 1 and 2 workers.

    python bench/bench_scale.py                                   # 1k, 10k, 50k
    python bench/bench_scale.py --sizes 1000,10000 --json bench/results/scale.json

One synthetic set of the largest size is written once (64 px smear crops, `audit.synthetic`);
smaller sizes are the first N rows of its manifest. The model is a MobileNetV2 (alpha 0.35,
64 px input, random weights: the speed of a forward pass does not depend on the weights).
Every run is a fresh subprocess that does what `audit run` does for one set: check every file
(`engine.scan`, what load_dataset skips) and compute the per-image outputs into a fresh cache
(`engine.outputs`). A Ray run starts its own local Ray instance with as many CPUs as workers.

Reported per run: wall time (start-up included), steady throughput (images after the first
returned batch over the time since it), the driver's peak resident memory (VmHWM) and the
peak of its anonymous memory (heap, sampled; memory-mapped embeddings are file pages the
kernel can drop, so they count in VmHWM but not here), both minus what the driver held once
the model was loaded. Only the driver process is measured: Ray workers are separate
processes (their memory is per worker and does not grow with N).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, print_table, quiet_tensorflow  # noqa: E402

quiet_tensorflow()
CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


class AnonPeak:
    """Samples RssAnon of this process every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_mb("RssAnon"))
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("RssAnon"))


def prepare(work: Path, n_max: int, sizes: list[int]) -> tuple[Path, dict[int, Path]]:
    from audit.synthetic import write_site
    from model.build import build_classifier

    site = work / f"site-{n_max}"
    if not (site / "manifest.csv").is_file():
        print(f"writing {n_max} synthetic images to {site} ...", flush=True)
        write_site(site, n_images=n_max, size=64, seed=7, site_name="scale", overwrite=True)
    rows = list(csv.reader((site / "manifest.csv").open()))
    manifests = {}
    for n in sizes:
        path = site / f"first-{n}.csv"
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows([rows[0], *rows[1:n + 1]])
        manifests[n] = path
    model = work / "model-64.keras"
    if not model.is_file():
        build_classifier(len(CLASSES), input_size=64, alpha=0.35, weights=None).save(model)
    return model, manifests


def one_run(engine_name: str, workers: int, model: str, manifest: str) -> dict:
    """The measured run (in its own process): scan + per-image outputs of one set."""
    from audit.data import load_dataset
    from audit.engines import make_engine
    from audit.inference import Predictor
    from model.loaded import ContractOptions, load_model

    loaded = load_model(model, ContractOptions(classes=CLASSES))
    predictor = Predictor(loaded, batch_size=64)
    engine = make_engine(engine_name, workers=workers if engine_name == "ray" else None)
    first = {}
    if engine_name == "ray":  # when the first outputs reach the driver
        from audit.engines.shards import ShardWriter

        add = ShardWriter.add

        def timed_add(self, batch):
            t = time.perf_counter()
            first.setdefault("t", t)
            out = add(self, batch)
            first["write_s"] = first.get("write_s", 0.0) + time.perf_counter() - t
            return out
        ShardWriter.add = timed_add
    else:
        import audit.inference as pr

        per_image = pr.per_image_outputs

        def timed(*args, **kwargs):
            out = per_image(*args, **kwargs)
            first.setdefault("t", time.perf_counter())
            return out
        pr.per_image_outputs = timed
    base_rss, base_anon = _status_mb("VmRSS"), _status_mb("RssAnon")
    with tempfile.TemporaryDirectory() as cache, AnonPeak() as anon:
        t0 = time.perf_counter()
        dataset = load_dataset(manifest, name="scale", class_names=CLASSES, scan=engine.scan)
        t_scan = time.perf_counter() - t0
        t1 = time.perf_counter()
        outputs = engine.outputs({"scale": dataset}, predictor=predictor, cache_dir=cache,
                                 cell_size_images=256)["scale"]
        t_end = time.perf_counter()
        n = len(outputs.logits)
    engine.close()
    n_after_first = n - predictor.batch_size
    steady = n_after_first / (t_end - first["t"]) if t_end > first["t"] else float("nan")
    return {"engine": engine_name, "workers": workers, "n": n,
            "scan_s": round(t_scan, 2), "pass_s": round(t_end - t1, 2),
            "total_s": round(t_end - t0, 2),
            "images_per_s": round(n / (t_end - t0), 1),
            "steady_images_per_s": round(steady, 1),
            "driver_peak_rss_mb": round(_status_mb("VmHWM") - base_rss, 1),
            "driver_peak_anon_mb": round(anon.peak - base_anon, 1),
            # Ray: the driver's time writing what came back (shards, memory map) per image
            "driver_write_ms_per_image": round(1000 * first["write_s"] / n, 3)
            if "write_s" in first else None}


def driver_write_rate(dim: int, n_blocks: int = 300, batch: int = 64) -> dict:
    """How fast the Ray engine's driver absorbs returned batches of real shape (`dim`-d
    embeddings, 5 classes, 8 hashes, 6 properties): the images per second at which one
    driver becomes the bottleneck, whatever the number of workers."""
    from audit.engines.shards import ShardWriter

    rng = np.random.default_rng(0)
    blocks = [{"index": np.arange(b * batch, (b + 1) * batch),
               "logits": rng.normal(size=(batch, 5)),
               "embeddings": rng.random((batch, dim), dtype=np.float32),
               "phash": rng.integers(0, 2**63, (batch, 8), dtype=np.uint64),
               **{f"prop_{k}": rng.random(batch) for k in range(6)}} for b in range(n_blocks)]
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(Path(tmp), n_blocks * batch)
        t0 = time.perf_counter()
        for block in blocks:
            writer.add(block)
        writer.close()
        seconds = time.perf_counter() - t0
    n = n_blocks * batch
    return {"dim": dim, "images": n, "ms_per_image": round(1000 * seconds / n, 3),
            "driver_images_per_s": round(n / seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cellaudit-scale"))
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--one", nargs=4, metavar=("ENGINE", "WORKERS", "MODEL", "MANIFEST"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--driver-write", type=int, metavar="DIM",
                        help="only measure the driver's write rate for DIM-d embeddings")
    args = parser.parse_args()
    if args.driver_write:
        print(machine_line())
        print(json.dumps(driver_write_rate(args.driver_write)))
        return 0
    if args.one:
        engine, workers, model, manifest = args.one
        print(json.dumps(one_run(engine, int(workers), model, manifest)), flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, manifests = prepare(work, max(sizes), sizes)
    print(machine_line(), flush=True)
    runs = []
    for n in sizes:
        for engine in args.engines.split(","):
            for w in ([int(x) for x in args.workers.split(",")] if engine == "ray" else [2]):
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", engine, str(w), str(model),
                     str(manifests[n])], capture_output=True, text=True, check=False)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
                if proc.returncode != 0 or not lines:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(lines[-1])
                if engine == "local":
                    row["workers"] = "threads"
                runs.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(runs, indent=1))
    columns = ["engine", "workers", "n", "scan_s", "pass_s", "total_s", "images_per_s",
               "steady_images_per_s", "driver_peak_rss_mb", "driver_peak_anon_mb",
               "driver_write_ms_per_image"]
    print_table(columns, [[r.get(k) for k in columns] for r in runs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
