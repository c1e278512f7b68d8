"""Fine-tuning on real PBC cells does not fall below the head it starts from (issue 20).

Before issue 20, validation accuracy fell from 87% after the head phase to 60% after the first
fine-tuning epoch (BatchNorm normalised with batch statistics in training and with ImageNet's
at validation). This trains the default recipe on a small real subset (200 + 200 PBC images,
160 px) and checks every fine-tuning epoch against the head phase on the same validation
images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from audit.data import load_dataset
from audit.labels import load_label_map
from model.config import make_config
from model.train import train_classifier

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get(
    "CELLAUDIT_WEIGHTS", REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"))
SIZE, PER_CLASS, EPOCHS = 160, 40, 4


def _pick(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        train += members[:PER_CLASS].tolist()
        val += members[PER_CLASS:2 * PER_CLASS].tolist()
    return np.sort(train), np.sort(val)


def test_no_finetuning_epoch_falls_below_the_head_by_more_than_noise(shared_data):
    pbc = load_dataset(shared_data / "pbc", check_files=False,
                       label_map=load_label_map(REPO / "examples" / "labelmaps" / "wbc5.toml"))
    train_idx, val_idx = _pick(pbc.labels, np.random.default_rng(0))
    config = make_config("default", train={"input_size": SIZE, "weights": str(WEIGHTS),
                                           "finetune_epochs": EPOCHS, "patience": EPOCHS})
    result = train_classifier(pbc, train_idx, pbc, val_idx, config=config, verbose=0)
    head, finetune, selected = result.phases
    assert (head["phase"], finetune["phase"]) == ("head", "finetune")
    assert finetune["epochs_run"] == EPOCHS
    p, n = head["val_accuracy"], len(val_idx)
    noise = 2.0 * np.sqrt(p * (1.0 - p) / n)   # two binomial standard errors
    # Every epoch, not only the kept one: the collapse was a first-epoch fall (with BatchNorm
    # frozen instead, this subset still falls to ~61% in the first epoch and recovers).
    curve = result.history["val_accuracy"][-EPOCHS:]
    assert min(curve) >= p - noise, (p, curve, noise)
    # Whatever fine-tuning did, the model returned is the better phase on validation.
    assert selected["val_accuracy"] >= p and result.val_accuracy == selected["val_accuracy"]
