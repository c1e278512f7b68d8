"""Real-data case study: reproduce the 89% / 44% gap, explain it, and measure the remedies.

Runs `audit` commands on ../shared/data (CELLAUDIT_DATA) with the ImageNet weights in
../shared/weights (CELLAUDIT_WEIGHTS) and collects the figures into WORKDIR/results.json.
Takes tens of minutes to hours on a 2-core CPU; not part of the test run.

    python bench/case_study.py --workdir /tmp/case [--steps kaggle,pbc8,cross] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLAUDIT_DATA", REPO.parent / "shared" / "data")).resolve()
WEIGHTS = Path(os.environ.get("CELLAUDIT_WEIGHTS", REPO.parent / "shared" / "weights" /
                              "mobilenet_v2_1.0_no_top.weights.h5")).resolve()
WBC5 = REPO / "examples" / "labelmaps" / "wbc5.toml"
AUDIT = [sys.executable, "-m", "audit.cli"]


def run(step: str, args: list[str], log: Path, results: dict) -> dict:
    """Run one audit command under /usr/bin/time; record wall seconds and peak RSS."""
    started = time.perf_counter()
    cmd = ["/usr/bin/time", "-v", *AUDIT, *args]
    with log.open("a") as fh:
        fh.write(f"\n$ audit {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    text = log.read_text()
    peak_kb = 0
    for line in text.splitlines()[::-1]:
        if "Maximum resident set size" in line:
            peak_kb = int(line.split(":")[1])
            break
    record = {"command": "audit " + " ".join(args), "exit_code": proc.returncode,
              "seconds": round(time.perf_counter() - started, 1),
              "peak_rss_gb": round(peak_kb / 1024 / 1024, 2)}
    results.setdefault("steps", {})[step] = record
    print(f"{step}: exit {proc.returncode}, {record['seconds']} s, peak {record['peak_rss_gb']} GB",
          flush=True)
    return record


def metric(audit_json: Path, dataset: str) -> dict:
    data = json.loads(audit_json.read_text())
    perf = data["checks"]["performance"]["metrics"]["datasets"][dataset]
    return {"accuracy": perf["accuracy"], "balanced_accuracy": perf["balanced_accuracy"],
            "per_class_recall": {c: v["recall"]["value"] for c, v in perf["per_class"].items()}}


def paired_difference(audit_a: Path, audit_b: Path, dataset: str, *, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """Accuracy of audit B minus audit A on the same images (matched by path), with a paired
    bootstrap interval: remedies are compared on identical images, so the difference is far
    tighter than the two separate intervals suggest."""
    import numpy as np

    from audit.stats import bootstrap_ci

    def correct(audit: Path) -> dict:
        with np.load(audit / "artifacts" / f"predictions_{dataset}.npz") as z:
            hits = z["logits"].argmax(axis=1) == z["labels"]
            return dict(zip(z["paths"].tolist(), hits.tolist(), strict=True))

    a, b = correct(audit_a), correct(audit_b)
    paths = sorted(set(a) & set(b))
    diff = np.array([b[p] for p in paths], float) - np.array([a[p] for p in paths], float)
    ci = bootstrap_ci(lambda i: diff[i].mean(), len(diff), n_boot=n_boot,
                      rng=np.random.default_rng(seed))
    return {"difference": ci["value"], "low": ci["low"], "high": ci["high"], "n": len(paths)}


def train_args(data: Path, out: Path, size: int, *extra: str) -> list[str]:
    return ["train", str(data), "--out", str(out), "--weights", str(WEIGHTS), "--input-size",
            str(size), "--label-map", str(WBC5), *extra]


# Budgets for a 2-core CPU; explanations only where the case study shows them.
AUDIT_BUDGET = ["--set", "checks.robustness.max_images=64", "--no-explain"]
EXPLAINED = ["--set", "checks.robustness.max_images=64"]
# Remedy comparisons need accuracy with intervals and what still drives the drop, not the
# leakage, robustness and explanation evidence the baseline audit already shows.
REMEDY_BUDGET = ["--checks", "performance,calibration,shift,gap_factors", "--no-explain"]
# The study's two epochs were over the full Kaggle TRAIN (~10,000 augmented images, ~600 steps
# at batch 32); our copy holds 2,000, so 2 epochs are only 100 steps and leave the linear head
# far from converged (validation 46% at lr 1e-3, 61% at 1e-2). Ten epochs at 1e-2 match the
# study's number of steps; a logistic regression fitted to convergence on the same frozen
# features gives validation 80-84%, test 53-55%.
STUDY_HEAD = ["--head-augment", "--head-epochs", "10", "--finetune-epochs", "0", "--head-lr",
              "1e-2", "--no-color", "--no-stain"]


KAGGLE_SPLITS = {"random": [], "grouped": ["--group-split", "near-duplicates"],
                 # source groups found by keypoint matching (audit.groups), issue 17
                 "discovered": ["--group-split", "discovered"]}


def split_info(model: Path) -> dict:
    """The split block of a saved model's metadata (group counts, discovery summary)."""
    out = subprocess.run(
        [sys.executable, "-c", "import json; from model.io import read_metadata; "
         f"print(json.dumps(read_metadata('{model}').get('split')))"],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def kaggle(work: Path, size: int, log: Path, results: dict, variants=tuple(KAGGLE_SPLITS)
           ) -> None:
    """The original study (random 80/20 split), then a split on near-duplicate clusters."""
    train, test = DATA / "kaggle_bloodcells" / "TRAIN", DATA / "kaggle_bloodcells" / "TEST"
    for variant in variants:
        split = KAGGLE_SPLITS[variant]
        model = work / f"kaggle_{variant}.keras"
        run(f"kaggle_{variant}_train", train_args(train, model, size, *STUDY_HEAD, *split),
            log, results)
        out = work / f"audit_kaggle_{variant}"
        run(f"kaggle_{variant}_audit",
            ["run", "--model", str(model), "--data", f"train={work / f'kaggle_{variant}.train.csv'}",
             "--data", f"heldout={work / f'kaggle_{variant}.validation.csv'}",
             "--data", f"shifted:test={test}", "--label-map", str(WBC5), "--out", str(out),
             *(EXPLAINED if variant == "random" else AUDIT_BUDGET)], log, results)
        results[f"kaggle_{variant}"] = {"validation": metric(out / "audit.json", "heldout"),
                                        "test": metric(out / "audit.json", "test"),
                                        "split": split_info(model)}


def kaggle_source(work: Path, size: int, log: Path, results: dict) -> None:
    """Group-aware split on the source-image ids in the kaggle file names (`_<id>_<n>.jpeg`).

    Within TRAIN the prefix numbers per class add up to 274 of the 277 originals the data
    README states, so class + prefix is the source smear crop: the ground truth that the
    near-duplicate clusters approximate.
    """
    train, test = DATA / "kaggle_bloodcells" / "TRAIN", DATA / "kaggle_bloodcells" / "TEST"
    manifest = work / "kaggle_train_source_groups.csv"
    with manifest.open("w") as fh:
        fh.write("path,label,group\n")
        for path in sorted(train.glob("*/*.jpeg")):
            source = path.name.split("_")[1]
            fh.write(f"{path},{path.parent.name},{path.parent.name}-{source}\n")
    model = work / "kaggle_source.keras"
    run("kaggle_source_train", train_args(manifest, model, size, *STUDY_HEAD,
                                          "--group-split", "manifest"), log, results)
    out = work / "audit_kaggle_source"
    run("kaggle_source_audit",
        ["run", "--model", str(model), "--data", f"train={work / 'kaggle_source.train.csv'}",
         "--data", f"heldout={work / 'kaggle_source.validation.csv'}",
         "--data", f"shifted:test={test}", "--label-map", str(WBC5), "--out", str(out),
         *AUDIT_BUDGET], log, results)
    results["kaggle_source"] = {"validation": metric(out / "audit.json", "heldout"),
                                "test": metric(out / "audit.json", "test")}


def kaggle_verified(work: Path, size: int, log: Path, results: dict) -> None:
    """The random-split study model audited with verified source copies (issue 17): the
    share of validation and TEST with a keypoint-verified copy in training, accuracy with and
    without one, the discovered groups, and where that puts the leakage finding in the ranking.
    Reuses kaggle_random.keras when the kaggle step made it, else trains it the same way."""
    model = work / "kaggle_random.keras"
    train, test = DATA / "kaggle_bloodcells" / "TRAIN", DATA / "kaggle_bloodcells" / "TEST"
    if not model.exists():
        run("kaggle_random_train", train_args(train, model, size, *STUDY_HEAD), log, results)
    out = work / "audit_kaggle_verified"
    run("kaggle_verified_audit",
        ["run", "--model", str(model), "--data", f"train={work / 'kaggle_random.train.csv'}",
         "--data", f"heldout={work / 'kaggle_random.validation.csv'}",
         "--data", f"shifted:test={test}", "--label-map", str(WBC5), "--out", str(out),
         *AUDIT_BUDGET, "--set", "checks.leakage.source_groups=true"], log, results)
    audit = json.loads((out / "audit.json").read_text())
    leak = audit["checks"]["leakage"]["metrics"]
    per_set = {}
    for name, entry in leak["datasets"].items():
        sources = entry.get("sources") or {}
        verified = (entry.get("against", {}).get("train") or {}).get("verified") or {}
        per_set[name] = {
            "n_images": sources.get("n_images"), "examined": sources.get("examined"),
            "n_groups": sources.get("n_groups"), "sizes": sources.get("sizes"),
            "few_cells": sources.get("few_cells"),
            "verified_share": verified.get("share"),
            "with_copy": (verified.get("accuracy") or {}).get("with_copy"),
            "without_copy": (verified.get("accuracy") or {}).get("without_copy")}
    results["kaggle_verified"] = {
        "sets": per_set,
        "validation": metric(out / "audit.json", "heldout"),
        "test": metric(out / "audit.json", "test"),
        "seconds_source_groups": audit.get("timings", {}).get("source_groups"),
        "top_findings": [{"kind": f.get("kind"), "check": f.get("check"), "text": f.get("text")}
                         for f in audit["findings"][:3]]}


def pbc8(work: Path, size: int, log: Path, results: dict) -> None:
    """The foundation measurement: all eight PBC classes, ImageNet weights, fine-tuned."""
    model = work / "pbc8.keras"
    record = run("pbc8_train", ["train", str(DATA / "pbc"), "--out", str(model), "--weights",
                                str(WEIGHTS), "--input-size", str(size)], log, results)
    meta = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from model.io import read_metadata; "
         f"print(json.dumps(read_metadata('{model}')))"], capture_output=True, text=True).stdout)
    results["pbc8"] = {"validation_accuracy": meta.get("validation_accuracy"), **record}


# The schedule of the measurements below, on the code path they were measured with (head on
# augmented images, constant fine-tuning rate, BatchNorm in training mode: the recipe before
# issue 20; bench/train_recipes.py measures the recipes after it).
CROSS_TRAINING = ["--head-augment", "--head-epochs", "4", "--finetune-epochs", "2", "--head-lr",
                  "1e-2", "--schedule", "constant", "--batchnorm", "train"]
CROSS_VARIANTS = {
    "baseline": ["--no-color", "--no-stain"],
    "stain_augment": [],
    "reinhard": ["--no-color", "--no-stain", "--stain-normalize", "reinhard"],
    "reinhard_augment": ["--stain-normalize", "reinhard"],
    # The baseline audit's largest drift is cell_size (12.8% -> 52% of the crop, 4x the area).
    "scale_augment": ["--zoom-in", "2"],
}


def cross(work: Path, size: int, log: Path, results: dict, variants: list[str],
          reuse: bool = False) -> None:
    """PBC (5 shared classes) -> BCCD crops, baseline and each remedy, with and without AdaBN."""
    bccd = DATA / "bccd_cropped"
    for variant in variants:
        model = work / f"pbc5_{variant}.keras"
        if reuse and model.exists():
            print(f"cross_{variant}_train: reusing {model}", flush=True)
        else:
            run(f"cross_{variant}_train", train_args(DATA / "pbc", model, size, *CROSS_TRAINING,
                                                     *CROSS_VARIANTS[variant]), log, results)
        models = {variant: model}
        adapted = work / f"pbc5_{variant}_adabn.keras"
        run(f"cross_{variant}_adabn", ["adapt", "--model", str(model), "--data", str(bccd),
                                       "--out", str(adapted)], log, results)
        models[f"{variant}+adabn"] = adapted
        for name, path in models.items():
            out = work / f"audit_cross_{name.replace('+', '_')}"
            if (reuse and (out / "audit.json").exists()
                    and (out / "audit.json").stat().st_mtime > path.stat().st_mtime):
                print(f"cross_{name}_audit: reusing {out}", flush=True)
                results.setdefault("cross", {})[name] = {
                    "heldout": metric(out / "audit.json", "heldout"),
                    "bccd": metric(out / "audit.json", "bccd")}
                continue
            train_role = (["--data", f"train={work / f'pbc5_{variant}.train.csv'}"]
                          if name == "baseline" else [])
            run(f"cross_{name}_audit",
                ["run", "--model", str(path), *train_role,
                 "--data", f"heldout={work / f'pbc5_{variant}.validation.csv'}",
                 "--data", f"shifted:bccd={bccd}", "--label-map", str(WBC5), "--out", str(out),
                 *(EXPLAINED if name == "baseline" else REMEDY_BUDGET)], log, results)
            results.setdefault("cross", {})[name] = {
                "heldout": metric(out / "audit.json", "heldout"),
                "bccd": metric(out / "audit.json", "bccd")}
            baseline_audit = work / "audit_cross_baseline"
            if name != "baseline" and (baseline_audit / "audit.json").exists():
                results["cross"][name]["bccd_vs_baseline"] = paired_difference(
                    baseline_audit, out, "bccd")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", default="kaggle,kaggle_source,cross,pbc8",
                        help="any of kaggle (= kaggle_random,kaggle_grouped,kaggle_discovered), "
                             "kaggle_<variant>, kaggle_source, kaggle_verified, cross, pbc8")
    parser.add_argument("--variants", default=",".join(CROSS_VARIANTS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reuse-models", action="store_true",
                        help="cross: keep models already in WORKDIR, redo adaptation and audits")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    log = work / "log.txt"
    for step in args.steps.split(","):
        if step == "kaggle":
            kaggle(work, args.size, log, results)
        elif step.startswith("kaggle_") and step[7:] in KAGGLE_SPLITS:
            kaggle(work, args.size, log, results, variants=(step[7:],))
        elif step == "kaggle_source":
            kaggle_source(work, args.size, log, results)
        elif step == "kaggle_verified":
            kaggle_verified(work, args.size, log, results)
        elif step == "pbc8":
            pbc8(work, args.size, log, results)
        elif step == "cross":
            cross(work, args.size, log, results, args.variants.split(","),
                  reuse=args.reuse_models)
        results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
