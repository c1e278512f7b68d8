"""Tiny seeded fixtures shared by the tests.

`make_view`/`make_context` build an AuditContext from arrays, with no model and no images, so
each check can be tested on cases with hand-computed answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from audit.checks.base import AuditContext, DatasetView  # noqa: E402
from audit.data import Dataset  # noqa: E402
from audit.inference import DatasetOutputs, softmax  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared real-image data: $CELLAUDIT_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("CELLAUDIT_DATA", REPO.parent / "shared" / "data")).resolve()


def weights_path() -> Path:
    """The local ImageNet MobileNetV2 weights: $CELLAUDIT_WEIGHTS, else ../shared/weights."""
    return Path(os.environ.get(
        "CELLAUDIT_WEIGHTS",
        REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_no_top.weights.h5")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    assert root.is_dir(), f"real data not found at {root}; set CELLAUDIT_DATA"
    return root


def make_view(name: str, role: str, labels, logits, *, class_names=("a", "b"), embeddings=None,
              properties=None, phash=None, groups=None, paths=None) -> DatasetView:
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    n = len(labels)
    dataset = Dataset(
        name=name, root="/nonexistent",
        paths=tuple(paths) if paths is not None else tuple(f"/nonexistent/{name}/{i}.png"
                                                           for i in range(n)),
        labels=labels, class_names=tuple(class_names),
        groups=tuple(str(g) for g in groups) if groups is not None else None,
        fingerprint=f"test-{name}-{n}",
    )
    outputs = DatasetOutputs(
        logits=logits, probs=softmax(logits),
        embeddings=np.zeros((n, 4), np.float32) if embeddings is None else np.asarray(embeddings),
        properties=properties or {}, phash=np.zeros(n, np.uint64) if phash is None else phash,
    )
    return DatasetView(name=name, role=role, dataset=dataset, outputs=outputs)


def make_context(views, *, tmp_path: Path, seed: int = 0, overrides=(), predictor=None,
                 image_size: int = 32) -> AuditContext:
    from audit.config import load_config

    views = list(views)
    config = load_config(None, list(overrides))
    return AuditContext(views={v.name: v for v in views}, class_names=views[0].dataset.class_names,
                        config=config, seed=seed, artifacts_dir=tmp_path / "artifacts",
                        image_size=image_size, predictor=predictor)


def strip_volatile(audit: dict) -> dict:
    """audit.json without what varies between identical runs: timings (seconds, cache hits),
    the command line and the model's absolute path."""
    audit = {k: v for k, v in audit.items() if k not in ("timings", "command")}
    audit["model"] = {k: v for k, v in audit["model"].items() if k != "path"}
    audit["checks"] = {n: {k: v for k, v in c.items() if k != "seconds"}
                       for n, c in audit["checks"].items()}
    explanations = dict(audit.get("explanations") or {})
    explanations.pop("timing", None)
    if "methods" in explanations:
        explanations["methods"] = {m: {k: v for k, v in e.items() if k != "timing"}
                                   for m, e in explanations["methods"].items()}
    audit["explanations"] = explanations
    return audit


def logits_for(labels, predictions, n_classes, *, confidence=3.0, rng=None):
    """Logits whose argmax is `predictions` (margin `confidence`), for hand-made cases."""
    predictions = np.asarray(predictions)
    logits = np.zeros((len(predictions), n_classes))
    logits[np.arange(len(predictions)), predictions] = confidence
    if rng is not None:
        logits += rng.normal(0, 0.1, logits.shape)
    return logits


TINY_TRAIN = ["--weights", "none", "--input-size", "32", "--alpha", "0.35", "--head-epochs", "0",
              "--finetune-from", "Conv1", "--batch-size", "32", "--no-affine", "--no-stain"]


@pytest.fixture(scope="session")
def synthetic_sites(tmp_path_factory) -> dict[str, Path]:
    """Three tiny synthetic sets (32 px): train, heldout (same site) and a shifted site."""
    from audit.synthetic import REFERENCE_SITE, SHIFTED_SITE, write_site

    root = tmp_path_factory.mktemp("sites")
    sites = {"train": (REFERENCE_SITE, 200, 10), "heldout": (REFERENCE_SITE, 100, 11),
             "site_b": (SHIFTED_SITE, 100, 12)}
    for name, (domain, n, seed) in sites.items():
        write_site(root / name, n_images=n, size=32, domain=domain, seed=seed, site_name=name)
    return {name: root / name for name in sites}


@pytest.fixture(scope="session")
def tiny_model(synthetic_sites, tmp_path_factory) -> Path:
    """A tiny MobileNetV2 trained briefly on the synthetic train set (accuracy irrelevant)."""
    from audit.cli import main

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    assert main(["train", str(synthetic_sites["train"]), "--out", str(path),
                 "--finetune-epochs", "2", *TINY_TRAIN]) == 0
    return path


def load_real(folder: str, n: int, size: int = 224) -> np.ndarray:
    """The first `n` JPEGs of a folder of the shared real data, through audit.data.load_image."""
    from audit.data import read_images

    paths = sorted((data_root() / folder).glob("*.jpg"))[:n]
    assert len(paths) == n, f"expected {n} images in {data_root() / folder}"
    return read_images([str(p) for p in paths], size, resize="crop")


@pytest.fixture(scope="session")
def audit_out(tiny_model, synthetic_sites, tmp_path_factory) -> Path:
    """One real `audit run` of the tiny model on the three synthetic sets (no explanations, no
    report): the folder holding its audit.json. Shared by the CLI and contract tests."""
    from audit.cli import main

    out = tmp_path_factory.mktemp("audit") / "out"
    code = main(["run", "--model", str(tiny_model), "--data", f"train={synthetic_sites['train']}",
                 "--data", f"heldout={synthetic_sites['heldout']}",
                 "--data", f"shifted:site_b={synthetic_sites['site_b']}", "--out", str(out),
                 "--no-explain", "--no-report", "--set", "checks.robustness.max_images=16",
                 "--set", 'audit.cache_dir=""'])
    assert code in (0, 1)
    return out
