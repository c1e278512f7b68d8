"""The Ray engine on a real local Ray instance (2 CPUs): the same per-image outputs and the
same audit.json as the local engine, bad files skipped with the same reasons, a worker that
dies mid-run retried by Ray without losing or duplicating an image, and the shard cache."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from audit.config import load_config
from audit.data import load_dataset
from audit.engines import make_engine
from audit.engines.local import LocalEngine
from audit.engines.ray_data import RayEngine, _ImagePass
from audit.errors import UsageError
from audit.inference import Predictor
from audit.runner import DataSpec, run_audit
from model.loaded import load_model


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def heldout_with_bad_files(synthetic_sites, tmp_path_factory):
    """The heldout set plus a truncated JPEG, an empty PNG and a text file with an image name."""
    root = tmp_path_factory.mktemp("bad") / "heldout"
    shutil.copytree(synthetic_sites["heldout"], root)
    cls = sorted(p for p in root.iterdir() if p.is_dir())[0]
    good = sorted(cls.glob("*.png")) + sorted(cls.glob("*.jpg"))
    data = good[0].read_bytes()
    (cls / "zz_truncated.png").write_bytes(data[: len(data) // 2])
    (cls / "zz_empty.png").write_bytes(b"")
    (cls / "zz_text.jpg").write_text("not an image")
    return root


def _same_outputs(a, b) -> None:
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
    np.testing.assert_array_equal(a.phash, b.phash)
    assert list(a.properties) == list(b.properties)
    for key in a.properties:
        np.testing.assert_array_equal(a.properties[key], b.properties[key])  # NaN == NaN here


def _comparable(audit_json: dict) -> dict:
    """audit.json without what may differ between engines: timings and the engine record."""
    out = {k: v for k, v in audit_json.items() if k not in ("timings", "engine")}
    out["checks"] = {name: {k: v for k, v in check.items() if k != "seconds"}
                     for name, check in audit_json["checks"].items()}
    return out


def _dies_once(marker: str, after_index: int):
    """A worker class that kills its own process once, on its first batch from
    `after_index` on, while other batches are done or in flight."""

    class DiesOnce(_ImagePass):
        def __call__(self, batch):
            if int(batch["start"][0]) >= after_index:
                try:
                    os.remove(marker)  # one worker wins; the retry finds no marker
                except FileNotFoundError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    return DiesOnce


def test_same_audit_json_with_either_engine_though_a_worker_dies(
        ray_instance, tiny_model, synthetic_sites, heldout_with_bad_files, tmp_path):
    """One audit per engine on three sets (bad files in heldout); on Ray a worker kills
    itself mid-run: Ray restarts it and retries its batch, and every image comes back once."""
    cache = tmp_path / "cache"
    # The checks that read the per-image outputs (robustness and gap_factors predict anew
    # through the driver's model, whatever the engine).
    checks = '["performance", "calibration", "errors", "leakage", "shift", "selective"]'
    config = load_config(None, ["audit.explain=false", "audit.report=false",
                                f'audit.cache_dir="{cache}"', f"audit.checks={checks}",
                                "checks.leakage.n_boot=200"])
    specs = [DataSpec("train", "train", str(synthetic_sites["train"])),
             DataSpec("heldout", "heldout", str(heldout_with_bad_files)),
             DataSpec("shifted", "site_b", str(synthetic_sites["site_b"]))]
    marker = tmp_path / "kill-once"
    marker.write_text("")
    ray_engine = RayEngine(workers=2)
    ray_engine._worker_class = _dies_once(str(marker), after_index=128)
    results = {}
    for name, engine in (("local", "local"), ("ray", ray_engine)):
        with pytest.warns(UserWarning, match="skipped 3 unusable file"):
            run_audit(str(tiny_model), specs, config=config, out_dir=tmp_path / name,
                      engine=engine)
        results[name] = json.loads((tmp_path / name / "audit.json").read_text())
    assert not marker.exists()  # a worker did die mid-run
    local, ray_ = results["local"], results["ray"]
    assert local["engine"] == {"name": "local"}
    assert ray_["engine"]["name"] == "ray" and ray_["engine"]["workers"] == 2
    skipped = local["datasets"]["heldout"]["skipped"]
    assert sorted(os.path.basename(s["path"]) for s in skipped) == [
        "zz_empty.png", "zz_text.jpg", "zz_truncated.png"]
    assert ray_["datasets"]["heldout"]["skipped"] == skipped
    assert _comparable(ray_) == _comparable(local)
    for name in ("train", "heldout", "site_b"):
        a = np.load(tmp_path / "local" / "artifacts" / f"predictions_{name}.npz")
        b = np.load(tmp_path / "ray" / "artifacts" / f"predictions_{name}.npz")
        np.testing.assert_array_equal(a["logits"], b["logits"])

    # Per-image outputs: the Ray shards (every index once) equal the local cache, and a
    # second pass reads them without starting a worker, embeddings memory-mapped.
    import pyarrow.parquet as pq

    dataset = load_dataset(synthetic_sites["train"], name="train")
    predictor = Predictor(load_model(tiny_model), batch_size=64)
    cell = int(config["audit"]["cell_size_images"])
    local_out = LocalEngine().outputs({"train": dataset}, predictor=predictor, cache_dir=cache,
                                      cell_size_images=cell)["train"]
    ray_out = RayEngine(workers=2).outputs({"train": dataset}, predictor=predictor,
                                           cache_dir=cache, cell_size_images=cell)["train"]
    assert local_out.from_cache and ray_out.from_cache
    assert isinstance(ray_out.embeddings, np.memmap)
    _same_outputs(ray_out, local_out)
    folders = sorted(cache.glob("outputs-*.ray"))
    assert len(folders) == 3
    for folder in folders:
        indices = np.concatenate([pq.read_table(p, columns=["index"]).column("index").to_numpy()
                                  for p in sorted(folder.glob("part-*.parquet"))])
        n = json.loads((folder / "done.json").read_text())["n_images"]
        assert sorted(indices.tolist()) == list(range(n))


def test_ray_scan_gives_the_local_reasons(ray_instance, heldout_with_bad_files):
    paths = sorted(str(p) for p in heldout_with_bad_files.rglob("*.*") if p.is_file())
    assert RayEngine(workers=2).scan(paths) == LocalEngine().scan(paths)


def test_engine_options_are_checked():
    with pytest.raises(UsageError, match="--workers: only with --engine ray"):
        make_engine("local", workers=2)
    with pytest.raises(UsageError, match="--engine 'spark'"):
        make_engine("spark")
    with pytest.raises(UsageError, match="--ray-address 'localhost:6379'"):
        make_engine("ray", ray_address="localhost:6379")
    with pytest.raises(UsageError, match="--workers 0"):
        RayEngine(workers=0)


def test_cli_rejects_ray_options_with_the_local_engine(tmp_path, capsys):
    from audit.cli import main

    code = main(["run", "--model", str(tmp_path / "m.keras"), "--data", f"heldout={tmp_path}",
                 "--out", str(tmp_path / "o"), "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --workers: only with --engine ray (the local engine "
                                 "uses this machine's threads)"]
