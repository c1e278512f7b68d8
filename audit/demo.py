"""`audit demo`: synthetic site A and a shifted site B, a small model trained on A, audited on both.

Everything is built-in and seeded, so the demo needs no download and gives the same audit on
the same machine. Colour and stain augmentation are off: the shifted site differs in stain
hue, blur and cell size, and the demo is there to show the audit finding such a shift.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from audit.progress import status

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    n_train: int = 1000
    n_heldout: int = 400
    n_shifted: int = 400
    image_size: int = 64
    alpha: float = 0.35
    epochs: int = 15
    seed: int = 0
    weights: str | None = None


def run_demo(out: str | os.PathLike, *, config: DemoConfig = DemoConfig()) -> dict:
    """Generate data, train, audit; returns paths and the audit's status."""
    from audit.config import load_config
    from audit.data import load_dataset
    from audit.runner import DataSpec, run_audit
    from audit.synthetic import REFERENCE_SITE, SHIFTED_SITE, write_site
    from model.augment import AugmentConfig
    from model.train import TrainConfig
    from model.train_and_save import fit_and_save

    out = Path(out)
    started = time.perf_counter()
    data = out / "data"
    steps = [("train", REFERENCE_SITE, config.n_train, config.seed),
             ("heldout", REFERENCE_SITE, config.n_heldout, config.seed + 1),
             ("site_b", SHIFTED_SITE, config.n_shifted, config.seed + 2)]
    for i, (name, domain, n, seed) in enumerate(steps, 1):
        status(f"[1/3] synthesising {name}: {n} images ({i}/{len(steps)})")
        write_site(data / name, n_images=n, size=config.image_size, domain=domain, seed=seed,
                   site_name=name, overwrite=True)

    status(f"[2/3] training MobileNetV2 (alpha {config.alpha}, {config.image_size} px) "
           f"on {config.n_train} images")
    train_config = TrainConfig(
        input_size=config.image_size, alpha=config.alpha, weights=config.weights,
        head_epochs=3 if config.weights else 0, finetune_epochs=config.epochs,
        finetune_from="block_13" if config.weights else "Conv1",
        finetune_learning_rate=1e-4 if config.weights else 1e-3, schedule="constant",
        patience=config.epochs, seed=config.seed,
        augment=AugmentConfig(color=False, stain=False),
    )
    model_path = out / "model.keras"
    train_set = load_dataset(data / "train", name="train")
    fit_and_save(train_set, model_path, config=train_config)

    status("[3/3] auditing on the held-out set and site_b")
    audit_config = load_config(None, [f"audit.seed={config.seed}", 'audit.cache_dir=""'])
    specs = [DataSpec("train", "train", str(data / "train")),
             DataSpec("heldout", "heldout", str(data / "heldout")),
             DataSpec("shifted", "site_b", str(data / "site_b"))]
    result = run_audit(model_path, specs, config=audit_config, out_dir=out / "audit",
                       command=["audit", "demo", "--out", str(out)])
    return {"model": model_path, "audit": out / "audit" / "audit.json",
            "report": out / "audit" / "report.html", "status": result.status.value,
            "seconds": time.perf_counter() - started, "result": result}
