"""Training recipes, measured: same-lab (PBC) and cross-lab (PBC -> BCCD crops), with intervals.

Reruns every figure of the "Training recipes" tables in bench/README.md and
docs/case-study.md. Runs `audit train` for each variant (a subprocess: wall and CPU time, peak
memory), predicts the held-out sets in a second subprocess, and compares variants image by
image on the same images (paired bootstrap). Hours on a 2-core CPU at 224 px; not a test.

    python bench/train_recipes.py --workdir /tmp/recipes \\
        [--steps split,diagnose,samelab,cross,fewlabel,pipeline] [--variants a,b] [--size 224]

Protocol (same-lab): the 2,400 PBC images (300 per class) are split once, stratified by
class with seed 0, into train 60% / validation 20% / test 20% (180 / 60 / 60 per class),
written to WORKDIR/split/pbc.{train,validation,test}.csv. Training sees train; early stopping
and the choice between phases see validation; accuracy is reported on test only. The 5-class
task is the same split through examples/labelmaps/wbc5.toml (900 / 300 / 300 images), the
8-class task through pbc8.toml (1,440 / 480 / 480). Cross-lab: models trained on the 5-class
split are tested on all 351 BCCD crops; the few-label recipe on the BCCD crops it did not
fine-tune on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine_line, quiet_tensorflow, run_measured  # noqa: E402

DATA = Path(os.environ.get("CELLAUDIT_DATA", REPO.parent / "shared" / "data")).resolve()
WEIGHTS = Path(os.environ.get("CELLAUDIT_WEIGHTS", REPO.parent / "shared" / "weights" /
                              "mobilenet_v2_1.0_no_top.weights.h5")).resolve()
LABEL_MAPS = {5: REPO / "examples" / "labelmaps" / "wbc5.toml",
              8: REPO / "examples" / "labelmaps" / "pbc8.toml"}
SPLIT_SEED = 0
N_BOOT = 2000


# --------------------------------------------------------------------------- protocol

def write_split(work: Path) -> dict[str, Path]:
    """train / validation / test manifests of the PBC folder (labels = folder names)."""
    from audit.data import load_dataset
    from model.split import split_dataset

    out = work / "split"
    paths = {name: out / f"pbc.{name}.csv" for name in ("train", "validation", "test")}
    if all(p.is_file() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    pbc = load_dataset(DATA / "pbc", name="pbc")
    rest, test = split_dataset(pbc, val_fraction=0.2, seed=SPLIT_SEED)
    rest_set = pbc.subset(rest)
    train, val = split_dataset(rest_set, val_fraction=0.25, seed=SPLIT_SEED)
    for name, (source, indices) in {"train": (rest_set, train), "validation": (rest_set, val),
                                    "test": (pbc, test)}.items():
        with paths[name].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            for i in indices:
                writer.writerow([source.paths[i], source.class_names[source.labels[i]]])
    return paths


# --------------------------------------------------------------------------- diagnosis

def diagnose_worker(work: Path, batchnorm: str, size: int, out: Path) -> None:
    """The pre-issue-20 recipe (5 head epochs on augmented images at 1e-3, then 5 fine-tuning
    epochs from block_13 at a constant 1e-4) with BatchNorm in training mode (what Keras 3 did
    to the nested backbone) or frozen; after every epoch, besides Keras' numbers: accuracy on
    300 un-augmented training images in inference mode, and how far the unfrozen BatchNorm
    layers' moving statistics have moved from ImageNet's."""
    import keras
    import numpy as np

    from audit.data import load_dataset
    from audit.labels import load_label_map
    from model.augment import AugmentConfig
    from model.build import backbone_of
    from model.pipeline import make_input_pipeline
    from model.train import TrainConfig, train_classifier

    split = write_split(work)
    label_map = load_label_map(LABEL_MAPS[5])
    train = load_dataset(split["train"], label_map=label_map)
    val = load_dataset(split["validation"], label_map=label_map, class_names=train.class_names)
    probe_idx = np.sort(np.random.default_rng(0).choice(len(train), 300, replace=False))
    probe = make_input_pipeline(train, probe_idx, image_size=size, batch_size=32, shuffle=False,
                                seed=0)
    records = []

    class Probe(keras.callbacks.Callback):
        reference = None

        def on_epoch_end(self, epoch, logs=None):
            backbone = backbone_of(self.model)
            names = [layer.name for layer in backbone.layers]
            start = next(i for i, n in enumerate(names) if n.startswith("block_13"))
            norms = [layer for layer in backbone.layers[start:]
                     if isinstance(layer, keras.layers.BatchNormalization)]
            stats = [(np.array(n.moving_mean), np.array(n.moving_variance)) for n in norms]
            if Probe.reference is None:
                Probe.reference = stats
            drift = float(np.mean([np.mean(np.abs(m - m0) / np.sqrt(v0 + 1e-3))
                                   for (m, _), (m0, v0) in zip(stats, Probe.reference,
                                                               strict=True)]))
            probs = self.model.predict(probe.map(lambda x, y: x), verbose=0)
            records.append({
                "phase": "finetune" if backbone.layers[-1].trainable else "head",
                "epoch": epoch + 1,
                "train_accuracy_fit": float(logs["accuracy"]),
                "train_accuracy_inference": float(np.mean(probs.argmax(1)
                                                          == train.labels[probe_idx])),
                "val_accuracy": float(logs["val_accuracy"]),
                "batchnorm_drift_sd": drift})
            print(json.dumps(records[-1]), flush=True)

    config = TrainConfig(input_size=size, weights=str(WEIGHTS), head_epochs=5, head_augment=True,
                         finetune_epochs=5, schedule="constant", batchnorm=batchnorm,
                         patience=5, augment=AugmentConfig())
    started = time.perf_counter()
    result = train_classifier(train, np.arange(len(train)), val, np.arange(len(val)),
                              config=config, verbose=0, callbacks=(Probe(),))
    out.write_text(json.dumps({"batchnorm": batchnorm, "epochs": records,
                               "phases": result.phases,
                               "seconds": round(time.perf_counter() - started, 1)}, indent=2))


def sensitivity_worker(work: Path, size: int, out: Path) -> None:
    """Why frozen BatchNorm still dips in the first fine-tuning epoch: from the converged head,
    a few Adam steps at a small learning rate, then the validation accuracy with each group of
    fine-tuned layers put back to its pretrained weights (and with only that group changed)."""
    import numpy as np

    from audit.data import load_dataset, read_images
    from audit.labels import load_label_map
    from model.build import backbone_of
    from model.config import make_config
    from model.pipeline import make_input_pipeline
    from model.train import _compile, _unfreeze_top, train_classifier

    split = write_split(work)
    label_map = load_label_map(LABEL_MAPS[5])
    train = load_dataset(split["train"], label_map=label_map)
    val = load_dataset(split["validation"], label_map=label_map, class_names=train.class_names)
    config = make_config("default", train={"input_size": size, "weights": str(WEIGHTS),
                                           "finetune_epochs": 0})
    model = train_classifier(train, np.arange(len(train)), val, np.arange(len(val)),
                             config=config, verbose=0).model
    images = read_images(list(val.paths), size).astype(np.float32)

    def accuracy() -> float:
        return float(np.mean(model.predict(images, batch_size=64, verbose=0).argmax(1)
                             == val.labels))

    record = {"head": accuracy(), "learning_rate": SENSITIVITY_LR, "steps": SENSITIVITY_STEPS}
    _unfreeze_top(backbone_of(model), config.finetune_from, batchnorm="frozen")
    _compile(model, SENSITIVITY_LR, config)
    weights = model.trainable_weights
    before = [np.array(w) for w in weights]
    batches = make_input_pipeline(train, np.arange(len(train)), image_size=size, batch_size=32,
                                  shuffle=True, seed=0, augment=config.augment, n_classes=5)
    for images_batch, labels in batches.take(SENSITIVITY_STEPS):
        model.train_on_batch(images_batch, labels)
    after = [np.array(w) for w in weights]
    record["after_steps"] = accuracy()
    record["largest_weight_change"] = max(float(np.abs(a - b).max())
                                          for a, b in zip(after, before, strict=True))

    def group(path: str) -> str:
        for key in ("project", "expand", "depthwise", "Conv_1", "logits"):
            if key in path:
                return key
        return "other"

    groups: dict[str, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault(group(w.path), []).append(i)
    record["revert"], record["only"] = {}, {}
    for name, members in groups.items():
        for i in members:
            weights[i].assign(before[i])
        record["revert"][name] = accuracy()
        for i, w in enumerate(weights):
            w.assign(after[i] if i in members else before[i])
        record["only"][name] = accuracy()
        for i, w in enumerate(weights):
            w.assign(after[i])
    print(json.dumps(record), flush=True)
    out.write_text(json.dumps(record, indent=2))


SENSITIVITY_LR, SENSITIVITY_STEPS = 1e-5, 5


def diagnose(work: Path, size: int, results: dict) -> None:
    out = work / "sensitivity.json"
    if not out.is_file():
        run = run_measured([sys.executable, __file__, "_sensitivity", "--workdir", str(work),
                            "--size", str(size), "--out", str(out)])
        if run.returncode:
            raise SystemExit(f"sensitivity failed ({run.returncode})")
    results.setdefault("diagnose", {})["sensitivity"] = json.loads(out.read_text())
    for batchnorm in ("train", "frozen"):
        out = work / f"diagnose_{batchnorm}.json"
        if not out.is_file():
            run = run_measured([sys.executable, __file__, "_diagnose", "--workdir", str(work),
                                "--batchnorm", batchnorm, "--size", str(size), "--out",
                                str(out)])
            if run.returncode:
                raise SystemExit(f"diagnose {batchnorm} failed ({run.returncode})")
        results.setdefault("diagnose", {})[batchnorm] = json.loads(out.read_text())
    print_diagnosis(results["diagnose"])


def print_diagnosis(diag: dict) -> None:
    from common import print_table

    rows = []
    for batchnorm, record in diag.items():
        if batchnorm == "sensitivity":
            print(f"sensitivity: {json.dumps(record)}")
            continue
        for e in record["epochs"]:
            rows.append([batchnorm, e["phase"], e["epoch"], f"{e['train_accuracy_fit']:.3f}",
                         f"{e['train_accuracy_inference']:.3f}", f"{e['val_accuracy']:.3f}",
                         f"{e['batchnorm_drift_sd']:.3f}"])
    print_table(["batchnorm", "phase", "epoch", "train acc (fit)", "train acc (inference)",
                 "val acc", "BN drift (SD)"], rows)


# --------------------------------------------------------------------------- variants

# The recipe before issue 20: 5 head epochs on augmented images, 5 fine-tuning epochs at a
# constant 1e-4, BatchNorm in training mode (what Keras 3 made of the nested backbone).
OLD = ["--head-augment", "--head-epochs", "5", "--head-lr", "1e-3", "--finetune-epochs", "5",
       "--finetune-lr", "1e-4", "--schedule", "constant", "--batchnorm", "train", "--patience",
       "3"]
# The case study's best cross-lab remedy (56.1% on BCCD): the old code path with its schedule.
CASE_STUDY = ["--head-augment", "--head-epochs", "4", "--head-lr", "1e-2", "--finetune-epochs",
              "2", "--finetune-lr", "1e-4", "--schedule", "constant", "--batchnorm", "train",
              "--patience", "3"]
NO_AUGMENT = ["--no-flips", "--no-affine", "--no-color", "--no-stain"]

# name: (classes, `audit train` options, evaluation: None or "adabn" / "tta" on another
# variant's model, what it tests). Evaluation-only variants reuse the named model.
VARIANTS: dict[str, dict] = {
    # same-lab, 5 classes
    "old_default": {"task": 5, "train": OLD, "about": "the defaults before issue 20"},
    "study_head": {"task": 5, "train": ["--finetune-epochs", "0"],
                   "about": "the study's recipe: linear head on frozen features only"},
    "default": {"task": 5, "train": [], "about": "the new default"},
    "default_bn_train": {"task": 5, "train": ["--batchnorm", "train"],
                         "about": "default, BatchNorm in training mode"},
    "default_bn_frozen": {"task": 5, "train": ["--batchnorm", "frozen"],
                          "about": "default, BatchNorm frozen at ImageNet statistics"},
    "default_lr3e-4": {"task": 5, "train": ["--finetune-lr", "3e-4"],
                       "about": "default, fine-tuning learning rate 3e-4"},
    "default_lr3e-5": {"task": 5, "train": ["--finetune-lr", "3e-5"],
                       "about": "default, fine-tuning learning rate 3e-5"},
    "default_constant_lr": {"task": 5, "train": ["--schedule", "constant"],
                            "about": "default, constant learning rate"},
    "default_no_augment": {"task": 5, "train": NO_AUGMENT,
                           "about": "default without augmentation"},
    "default_block_10": {"task": 5, "train": ["--finetune-from", "block_10"],
                         "about": "default, fine-tuning from block_10 (7 blocks)"},
    # same-lab, 8 classes
    "old_default_8": {"task": 8, "train": OLD, "about": "the defaults before issue 20"},
    "study_head_8": {"task": 8, "train": ["--finetune-epochs", "0"],
                     "about": "linear head on frozen features only"},
    "default_8": {"task": 8, "train": [], "about": "the new default"},
    "default_8+tta": {"task": 8, "model": "default_8", "eval": "tta",
                      "about": "default, test-time views (`--views dihedral8`: mean "
                               "probability over the 8 rotations and mirrors)"},
    "default_8_deep": {"task": 8, "train": ["--finetune-from", "block_10", "--finetune-epochs",
                                            "12", "--patience", "4"],
                       "about": "default, fine-tuning from block_10 (7 blocks) for 12 epochs"},
    "default_8_deep+tta": {"task": 8, "model": "default_8_deep", "eval": "tta",
                           "about": "deep fine-tuning, test-time views (`--views dihedral8`)"},
    "accurate_8": {"task": 8, "train": ["--recipe", "accurate"],
                   "about": "`--recipe accurate`: deep fine-tuning, test-time views recorded "
                            "in the model"},
    # cross-lab (trained on the 5-class split; tested on the BCCD crops)
    "case_study": {"task": 5, "train": CASE_STUDY,
                   "about": "the case study's best remedy (56.1% there, on 1,200 training "
                            "images): old code path, 4 head epochs on augmented images at "
                            "1e-2, 2 fine-tuning epochs, stain/colour augmentation"},
    "scale": {"task": 5, "train": ["--zoom-in", "2.5"],
              "about": "default + scale augmentation (magnification up to 2.5x)"},
    "scale_3": {"task": 5, "train": ["--zoom-in", "3"],
                "about": "default + scale augmentation (magnification up to 3x)"},
    "stain_strong": {"task": 5, "train": ["--stain-sigma", "0.1"],
                     "about": "default + stronger HED stain jitter (sigma 0.1)"},
    "blur_jpeg": {"task": 5, "train": ["--blur", "2", "--jpeg-quality", "50"],
                  "about": "default + blur (sigma up to 2 px) and JPEG (quality 50-100)"},
    "cross_site_finetune": {"task": 5, "train": ["--recipe", "cross-site-finetune"],
                            "about": "first cross-site recipe tried: fine-tuning 8 epochs under "
                                     "strong scale, stain, colour, blur and JPEG augmentation"},
    "cross_site": {"task": 5, "train": ["--recipe", "cross-site"],
                   "about": "the cross-site recipe: head on augmented images, no fine-tuning"},
    "cross_site_strong": {"task": 5, "train": ["--recipe", "cross-site", "--stain-sigma", "0.1",
                                               "--blur", "2", "--jpeg-quality", "50"],
                          "about": "cross-site + stronger stain jitter, blur and JPEG"},
    "cross_site_scale": {"task": 5, "train": ["--recipe", "cross-site", "--zoom-in", "2"],
                         "about": "cross-site + scale augmentation (magnification up to 2x)"},
    "default+adabn": {"task": 5, "model": "default", "eval": "adabn",
                      "about": "default, aligned AdaBN to the BCCD crops at test time"},
    "cross_site+adabn": {"task": 5, "model": "cross_site", "eval": "adabn",
                         "about": "cross-site, aligned AdaBN to the BCCD crops at test time"},
    "default+tta": {"task": 5, "model": "default", "eval": "tta",
                    "about": "default, test-time views (`--views dihedral8`)"},
    "cross_site+tta": {"task": 5, "model": "cross_site", "eval": "tta",
                       "about": "cross-site, test-time views (`--views dihedral8`)"},
    # few-label: fine-tuned on up to 50 BCCD crops per class, tested on the other crops
    "fewlabel_cross_site": {"task": 5, "train": ["--recipe", "cross-site"], "fewlabel": 50,
                            "about": "cross-site + fine-tuning on <= 50 labelled BCCD crops "
                                     "per class"},
    "fewlabel_default": {"task": 5, "train": [], "fewlabel": 50,
                         "about": "default + fine-tuning on <= 50 labelled BCCD crops per "
                                  "class"},
}
SAMELAB = ["old_default", "study_head", "default", "default_bn_train", "default_bn_frozen",
           "default_lr3e-4",
           "default_lr3e-5", "default_constant_lr", "default_no_augment", "default_block_10",
           "old_default_8", "study_head_8", "default_8", "default_8+tta", "default_8_deep",
           "default_8_deep+tta", "accurate_8"]
CROSS = ["case_study", "old_default", "study_head", "default", "default_bn_train",
         "default_bn_frozen", "scale", "scale_3", "stain_strong", "blur_jpeg",
         "cross_site_finetune", "cross_site", "cross_site_strong", "cross_site_scale",
         "default+adabn", "cross_site+adabn", "default+tta", "cross_site+tta"]
FEWLABEL = ["fewlabel_cross_site", "fewlabel_default"]
ZERO_LABEL = {"fewlabel_cross_site": "cross_site", "fewlabel_default": "default"}


def train_variant(work: Path, name: str, size: int) -> dict:
    """`audit train` for one variant (skipped when its model exists); wall/CPU time, peak."""
    spec = VARIANTS[name]
    model = work / "models" / f"{name}.keras"
    record_path = model.with_suffix(".train.json")
    if record_path.is_file() and model.is_file():
        return json.loads(record_path.read_text())
    model.parent.mkdir(parents=True, exist_ok=True)
    split = write_split(work)
    cmd = [sys.executable, "-m", "audit.cli", "train", str(split["train"]), "--val-data",
           str(split["validation"]), "--out", str(model), "--weights", str(WEIGHTS),
           "--input-size", str(size), "--label-map", str(LABEL_MAPS[spec["task"]]),
           *spec["train"]]
    if spec.get("fewlabel"):
        cmd += ["--finetune-on", str(DATA / "bccd_cropped"), "--n-per-class",
                str(spec["fewlabel"])]
    print(f"[{time.strftime('%H:%M:%S')}] train {name}: {' '.join(cmd[3:])}", flush=True)
    load_before = os.getloadavg()
    run = run_measured(cmd)
    if run.returncode:
        raise SystemExit(f"train {name} failed ({run.returncode})")
    record = {"command": "audit " + " ".join(cmd[3:]), "wall_seconds": round(run.seconds, 1),
              "cpu_seconds": round(run.cpu_seconds, 1),
              "peak_rss_gb": round(run.peak_rss_mb / 1024, 2),
              "load_average_before": [round(v, 1) for v in load_before],
              "load_average_after": [round(v, 1) for v in os.getloadavg()],
              "metadata": read_metadata(model)}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def read_metadata(model: Path) -> dict:
    from model.io import read_metadata as read

    meta = read(model)
    return {k: meta.get(k) for k in ("validation_accuracy", "phases", "training_seconds",
                                     "split", "target_finetuning", "hyperparameters")}


def evaluate_variant(work: Path, name: str, size: int) -> Path:
    """Predictions of a variant's model on its test sets (a subprocess), cached as .npz."""
    spec = VARIANTS[name]
    model = work / "models" / f"{spec.get('model', name)}.keras"
    out = work / "predictions" / f"{name}.npz"
    if out.is_file() and out.stat().st_mtime > model.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    split = write_split(work)
    sets = [f"test={split['test']}"]
    if spec["task"] == 5:
        bccd = (model.with_name(f"{name}.target_heldout.csv") if spec.get("fewlabel")
                else DATA / "bccd_cropped")
        sets.append(f"bccd={bccd}")
    cmd = [sys.executable, __file__, "_evaluate", "--workdir", str(work), "--model", str(model),
           "--label-map", str(LABEL_MAPS[spec["task"]]), "--out", str(out), "--size", str(size),
           "--sets", *sets]
    if spec.get("eval"):
        cmd += ["--transform", spec["eval"], "--source", str(split["train"])]
    print(f"[{time.strftime('%H:%M:%S')}] evaluate {name}", flush=True)
    run = run_measured(cmd)
    if run.returncode:
        raise SystemExit(f"evaluate {name} failed ({run.returncode})")
    return out


def evaluate_worker(model_path: Path, sets: list[str], label_map_path: Path, out: Path,
                    size: int, transform: str | None, source: Path | None) -> None:
    import numpy as np

    from audit.data import iter_batches, load_dataset
    from audit.inference import Predictor
    from audit.labels import load_label_map
    from model.loaded import ContractOptions, load_model

    # Test-time views through the product's own forward pass: as `audit run --views dihedral8`.
    loaded = load_model(model_path, ContractOptions(views="dihedral8" if transform == "tta"
                                                    else None))
    label_map = load_label_map(label_map_path)
    classes = list(loaded.contract.class_names)
    datasets = {}
    for spec in sets:
        set_name, path = spec.split("=", 1)
        datasets[set_name] = load_dataset(path, name=set_name, label_map=label_map,
                                          class_names=classes)
    seconds = {}
    if transform == "adabn":
        from model.adapt import align_batchnorm

        started = time.perf_counter()
        source_set = load_dataset(source, label_map=label_map, class_names=classes)
        align_batchnorm(loaded, datasets["bccd"], source_set)
        seconds["adabn"] = time.perf_counter() - started
    predictor = Predictor(loaded, batch_size=64)

    def predict(images):
        return predictor.probs(images)

    arrays = {"class_names": np.array(classes)}
    for set_name, dataset in datasets.items():
        started = time.perf_counter()
        probs = np.concatenate([predict(images) for images, _ in
                                iter_batches(dataset, image_size=size, resize=loaded.contract.resize,
                                             batch_size=64)])
        seconds[set_name] = time.perf_counter() - started
        arrays[f"{set_name}_probs"] = probs.astype(np.float32)
        arrays[f"{set_name}_labels"] = dataset.labels
        arrays[f"{set_name}_paths"] = np.array(dataset.paths)
    arrays["seconds"] = np.array(json.dumps(seconds))
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)


# --------------------------------------------------------------------------- metrics

def scores(npz: Path, set_name: str) -> dict:
    """Accuracy and balanced accuracy with seeded 95% bootstrap intervals; per-class recall."""
    import numpy as np

    from audit.stats import bootstrap_ci

    with np.load(npz) as z:
        probs, labels = z[f"{set_name}_probs"], z[f"{set_name}_labels"]
        classes = z["class_names"].tolist()
    hits = probs.argmax(1) == labels
    present = np.unique(labels)

    def balanced(idx):
        return float(np.mean([hits[idx][labels[idx] == c].mean() for c in present
                              if np.any(labels[idx] == c)]))

    rng = np.random.default_rng(0)
    return {"n": int(len(labels)),
            "accuracy": bootstrap_ci(lambda i: hits[i].mean(), len(hits), n_boot=N_BOOT,
                                     rng=rng),
            "balanced_accuracy": bootstrap_ci(balanced, len(hits), n_boot=N_BOOT, rng=rng),
            "recall": {classes[c]: float(hits[labels == c].mean()) for c in present}}


def paired(npz_a: Path, npz_b: Path, set_name: str) -> dict:
    """B minus A on the same images (matched by path), accuracy and balanced accuracy, with a
    paired bootstrap: both models are scored on each resample."""
    import numpy as np

    from audit.stats import bootstrap_indices, interval

    def load(npz):
        with np.load(npz) as z:
            hits = z[f"{set_name}_probs"].argmax(1) == z[f"{set_name}_labels"]
            return dict(zip(z[f"{set_name}_paths"].tolist(),
                            zip(hits.tolist(), z[f"{set_name}_labels"].tolist(), strict=True),
                            strict=True))

    a, b = load(npz_a), load(npz_b)
    paths = sorted(set(a) & set(b))
    hits_a = np.array([a[p][0] for p in paths], float)
    hits_b = np.array([b[p][0] for p in paths], float)
    labels = np.array([a[p][1] for p in paths])
    present = np.unique(labels)

    def balanced(hits, idx):
        return np.mean([hits[idx][labels[idx] == c].mean() for c in present
                        if np.any(labels[idx] == c)])

    def stats(idx):
        return (hits_b[idx].mean() - hits_a[idx].mean(),
                balanced(hits_b, idx) - balanced(hits_a, idx))

    full = stats(np.arange(len(paths)))
    out = {"n": len(paths), "a_accuracy": float(hits_a.mean()),
           "b_accuracy": float(hits_b.mean())}
    samples = np.array([stats(idx) for idx in bootstrap_indices(
        len(paths), n_boot=N_BOOT, rng=np.random.default_rng(0))])
    for k, key in enumerate(("accuracy", "balanced_accuracy")):
        low, high = interval(samples[:, k])
        out[key] = {"value": float(full[k]), "low": low, "high": high}
    return out


def collect(work: Path, names: list[str], size: int, results: dict, *, baseline: str,
            section: str) -> None:
    for name in names:
        spec = VARIANTS[name]
        record = train_variant(work, spec.get("model", name), size)
        npz = evaluate_variant(work, name, size)
        entry = {"about": spec["about"], "task": spec["task"], "train": record,
                 "test": scores(npz, "test")}
        if spec["task"] == 5:
            entry["bccd"] = scores(npz, "bccd")
        # Compared with the baseline of the same task (the 8-class one is named "<base>_8").
        task_baseline = baseline if spec["task"] == VARIANTS[baseline]["task"] else \
            f"{baseline}_{spec['task']}"
        base = work / "predictions" / f"{task_baseline}.npz"
        if name != task_baseline and base.is_file():
            entry["test_vs_baseline"] = paired(base, npz, "test")
            if spec["task"] == 5:
                entry["bccd_vs_baseline"] = paired(base, npz, "bccd")
        if spec.get("fewlabel"):
            # The same recipe without target labels, on the same held-out target images.
            zero = ZERO_LABEL[name]
            train_variant(work, zero, size)
            entry["bccd_vs_zero_label"] = paired(evaluate_variant(work, zero, size), npz,
                                                 "bccd")
            entry["zero_label"] = zero
        results.setdefault(section, {})[name] = entry
        results_path = work / "results.json"
        existing = json.loads(results_path.read_text()) if results_path.is_file() else {}
        existing.setdefault(section, {})[name] = entry
        results_path.write_text(json.dumps(existing, indent=2))


# --------------------------------------------------------------------------- speed

def speed(work: Path, size: int, results: dict) -> None:
    """The default recipe on the 1,500 images of the issue (PBC, 5 classes, 20% validation
    split off), as a user runs it: wall and CPU time."""
    model = work / "models" / "speed_default_1500.keras"
    model.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "audit.cli", "train", str(DATA / "pbc"), "--out", str(model),
           "--weights", str(WEIGHTS), "--input-size", str(size), "--label-map",
           str(LABEL_MAPS[5])]
    print(f"[{time.strftime('%H:%M:%S')}] speed: {' '.join(cmd[3:])}", flush=True)
    load_before = os.getloadavg()
    run = run_measured(cmd)
    if run.returncode:
        raise SystemExit(f"speed run failed ({run.returncode})")
    results["speed"] = {"command": "audit " + " ".join(cmd[3:]),
                        "wall_seconds": round(run.seconds, 1),
                        "cpu_seconds": round(run.cpu_seconds, 1),
                        "peak_rss_gb": round(run.peak_rss_mb / 1024, 2),
                        "load_average_before": [round(v, 1) for v in load_before],
                        "load_average_after": [round(v, 1) for v in os.getloadavg()],
                        "metadata": read_metadata(model)}


def pipeline_worker(work: Path, size: int, out: Path) -> None:
    """Images/s of the input pipeline alone (decode + augment, default and cross-site) and of
    the fine-tuning step alone (pre-decoded batches), in one process, one after the other."""
    import numpy as np
    import tensorflow as tf

    from audit.data import load_dataset, read_images
    from audit.labels import load_label_map
    from model.build import backbone_of, build_classifier
    from model.config import make_config
    from model.pipeline import make_input_pipeline
    from model.train import _compile, _unfreeze_top, seed_everything

    seed_everything(0)
    split = write_split(work)
    train = load_dataset(split["train"], label_map=load_label_map(LABEL_MAPS[5]))
    idx = np.arange(len(train))
    record = {}
    for recipe in ("default", "cross-site"):
        config = make_config(recipe, train={"input_size": size})
        for label, augment in (("decode only", None), ("decode + augment", config.augment)):
            if label == "decode only" and recipe != "default":
                continue
            ds = make_input_pipeline(train, idx, image_size=size, batch_size=32, shuffle=True,
                                     seed=0, augment=augment, n_classes=5)
            started, count = time.perf_counter(), 0
            for images, _ in ds:
                count += int(images.shape[0])
            key = label if augment is None else f"{label} ({recipe})"
            record[key] = round(count / (time.perf_counter() - started), 1)
            print(key, record[key], flush=True)
    config = make_config("default", train={"input_size": size, "weights": str(WEIGHTS)})
    images = read_images(list(train.paths[:32]), size, resize="crop").astype(np.float32)
    labels = np.eye(5, dtype=np.float32)[train.labels[:32]]
    batch = tf.data.Dataset.from_tensors((images, labels)).repeat(12)
    # The default's fine-tuning step (top blocks trained) and the cross-site recipe's head step
    # (frozen backbone: forward pass and the head's update), each on pre-decoded batches.
    for label, unfreeze in (("fine-tuning step (default)", True),
                            ("head step on images (cross-site)", False)):
        model = build_classifier(5, input_size=size, weights=config.weights)
        backbone_of(model).trainable = False
        if unfreeze:
            _unfreeze_top(backbone_of(model), config.finetune_from, batchnorm=config.batchnorm)
        _compile(model, 1e-4, config)
        model.fit(batch.take(2), epochs=1, verbose=0)   # trace and warm up
        started = time.perf_counter()
        model.fit(batch.take(10), epochs=1, verbose=0)
        record[f"{label}, pre-decoded batches"] = round(320 / (time.perf_counter() - started), 1)
    print(record, flush=True)
    out.write_text(json.dumps(record, indent=2))


def pipeline(work: Path, size: int, results: dict) -> None:
    out = work / "pipeline.json"
    load_before = os.getloadavg()
    run = run_measured([sys.executable, __file__, "_pipeline", "--workdir", str(work),
                        "--size", str(size), "--out", str(out)])
    if run.returncode:
        raise SystemExit(f"pipeline failed ({run.returncode})")
    results["pipeline"] = {"images_per_second": json.loads(out.read_text()),
                           "load_average_before": [round(v, 1) for v in load_before],
                           "load_average_after": [round(v, 1) for v in os.getloadavg()]}


# --------------------------------------------------------------------------- tables

def _pct(ci: dict) -> str:
    return f"{100 * ci['value']:.1f}% ({100 * ci['low']:.1f}-{100 * ci['high']:.1f})"


def _points(ci: dict | None) -> str:
    if not ci:
        return ""
    return (f"{100 * ci['value']:+.1f} ({100 * ci['low']:+.1f} to {100 * ci['high']:+.1f})")


def _minutes(record: dict) -> str:
    return f"{record['wall_seconds'] / 60:.1f} / {record['cpu_seconds'] / 60:.1f}"


def print_tables(results: dict) -> None:
    for section, title in (("samelab", "Same-lab: PBC test split"),
                           ("cross", "Cross-lab: PBC -> BCCD crops (351)"),
                           ("fewlabel", "Few-label: BCCD crops not used for fine-tuning")):
        entries = results.get(section)
        if not entries:
            continue
        print(f"\n### {title}\n")
        if section == "samelab":
            print("| variant | classes | validation | test accuracy | test balanced | vs "
                  "baseline, paired (points) | train min wall / CPU |")
            print("|---|---|---|---|---|---|---|")
            for name, e in entries.items():
                meta = e["train"]["metadata"]
                print(f"| {name}: {e['about']} | {e['task']} | "
                      f"{100 * (meta['validation_accuracy'] or 0):.1f}% | "
                      f"{_pct(e['test']['accuracy'])} | "
                      f"{_pct(e['test']['balanced_accuracy'])} | "
                      f"{_points((e.get('test_vs_baseline') or {}).get('accuracy'))} | "
                      f"{_minutes(e['train'])} |")
        else:
            key = "bccd"
            print("| variant | PBC test | BCCD accuracy | BCCD balanced | accuracy vs baseline, "
                  "paired | balanced vs baseline, paired | BCCD recall baso/eos/lym/mono/neut"
                  " | train min wall / CPU |")
            print("|---|---|---|---|---|---|---|---|")
            for name, e in entries.items():
                vs = e.get("bccd_vs_baseline") or {}
                recall = " / ".join(f"{100 * v:.0f}" for v in e[key]["recall"].values())
                print(f"| {name}: {e['about']} | {_pct(e['test']['accuracy'])} | "
                      f"{_pct(e[key]['accuracy'])} | {_pct(e[key]['balanced_accuracy'])} | "
                      f"{_points(vs.get('accuracy'))} | {_points(vs.get('balanced_accuracy'))} "
                      f"| {recall} | {_minutes(e['train'])} |")
                if "bccd_vs_zero_label" in e:
                    z = e["bccd_vs_zero_label"]
                    print(f"|  vs {e['zero_label']} on the same {z['n']} crops "
                          f"({100 * z['a_accuracy']:.1f}% without labels) | | | | "
                          f"{_points(z['accuracy'])} | {_points(z['balanced_accuracy'])} | | |")
    if "speed" in results:
        sp = results["speed"]
        print(f"\nspeed: {sp['command']}: {sp['wall_seconds']:.0f} s wall, "
              f"{sp['cpu_seconds']:.0f} s CPU, peak {sp['peak_rss_gb']} GB, load "
              f"{sp['load_average_before']} -> {sp['load_average_after']}")
    if "pipeline" in results:
        print(f"\npipeline images/s: {results['pipeline']}")


# --------------------------------------------------------------------------- main

def main() -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run",
                        choices=("run", "tables", "_diagnose", "_sensitivity", "_evaluate",
                                 "_pipeline"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", default="split,diagnose,samelab,cross,fewlabel,speed,"
                                           "pipeline")
    parser.add_argument("--variants", help="only these variants (comma-separated)")
    parser.add_argument("--size", type=int, default=224)
    # internal (worker subprocesses)
    parser.add_argument("--batchnorm", default="train")
    parser.add_argument("--out")
    parser.add_argument("--model")
    parser.add_argument("--label-map")
    parser.add_argument("--sets", nargs="*")
    parser.add_argument("--transform")
    parser.add_argument("--source")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.command == "_diagnose":
        diagnose_worker(work, args.batchnorm, args.size, Path(args.out))
        return 0
    if args.command == "_sensitivity":
        sensitivity_worker(work, args.size, Path(args.out))
        return 0
    if args.command == "_evaluate":
        evaluate_worker(Path(args.model), args.sets, Path(args.label_map), Path(args.out),
                        args.size, args.transform, Path(args.source) if args.source else None)
        return 0
    if args.command == "_pipeline":
        pipeline_worker(work, args.size, Path(args.out))
        return 0
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.command == "tables":
        print_tables(results)
        return 0
    print(machine_line(), flush=True)
    only = set(args.variants.split(",")) if args.variants else None
    sections = {"samelab": (SAMELAB, "study_head"), "cross": (CROSS, "case_study"),
                "fewlabel": (FEWLABEL, "case_study")}
    for step in args.steps.split(","):
        if step == "split":
            results["split"] = {k: str(v) for k, v in write_split(work).items()}
        elif step == "diagnose":
            diagnose(work, args.size, results)
        elif step in sections:
            names, baseline = sections[step]
            names = [n for n in names if only is None or n in only]
            # The baseline first (when selected): variants are compared with it image by
            # image, as soon as its predictions exist (a rerun fills in the comparisons).
            names = sorted(names, key=lambda n: n != baseline)
            collect(work, names, args.size, results, baseline=baseline, section=step)
            results = {**json.loads(results_path.read_text()), **{
                k: v for k, v in results.items() if k not in sections}}
        elif step == "speed":
            speed(work, args.size, results)
        elif step == "pipeline":
            pipeline(work, args.size, results)
        else:
            raise SystemExit(f"unknown step '{step}'")
        existing = json.loads(results_path.read_text()) if results_path.is_file() else {}
        existing.update({k: v for k, v in results.items() if k not in sections})
        results_path.write_text(json.dumps(existing, indent=2))
        results = existing
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
