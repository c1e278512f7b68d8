"""How honest are the audit's numbers? Coverage, the referral guarantee, in-sample against
out-of-fold against fresh data, safety flags, label issues, and the per-image cost of the flags.

    python bench/bench_honesty.py [--demo DIR] [--pbc DIR] [--repeats 500] [--size 224]

1. Simulations with known truth: coverage of 95% intervals for a proportion (exact
   Clopper-Pearson, as the audit, against a percentile bootstrap) at n = 10, 30, 300; how often
   the certified referral threshold and the in-sample one keep their target on the population;
   ECE after temperature scaling in-sample, out-of-fold, and on fresh data.
2. The demo (`--demo`, an `audit demo --out DIR` folder): the audit's in-sample and out-of-fold
   figures from its audit.json, and the same model on a fresh set from the reference site
   (generated here with another seed): what the reference figures promise against what new
   images give.
3. The real PBC set (`--pbc`, default $CELLAUDIT_DATA/pbc): a linear probe (logistic
   regression) on ImageNet MobileNetV2 features of one part; the rest cut into a reference and
   a fresh part; the same comparisons, the safety flags, and label issues with 5% of the
   reference labels flipped on purpose.
4. Per-image cost of the safety properties (`image_usability` + `source_sizes`) at SIZE px,
   serial and on the audit's worker threads, against one batched forward pass per image of
   MobileNetV2 at SIZE px measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_WEIGHTS, machine_line, print_table, quiet_tensorflow  # noqa: E402

quiet_tensorflow()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.checks.calibration import (  # noqa: E402
    crossfit_temperature,
    expected_calibration_error,
    fit_temperature,
)
from audit.checks.label_issues import label_issues  # noqa: E402
from audit.checks.selective import fit_threshold, guaranteed_threshold  # noqa: E402
from audit.inference import softmax  # noqa: E402
from audit.stats import crossfit_folds, proportion_ci  # noqa: E402

TARGET, DELTA, FOLDS = 0.95, 0.1, 5


# ---- 1. simulations ----------------------------------------------------------------------------

def coverage_table(repeats: int) -> None:
    rows = []
    for n in (10, 30, 300):
        for p in (0.0, 0.05, 0.5, 0.9, 1.0):
            rng = np.random.default_rng([n, int(1000 * p)])
            k = rng.binomial(n, p, repeats)
            exact = np.mean([(c := proportion_ci(x, n))["low"] <= p <= c["high"] for x in k])
            boot = rng.binomial(n, k[:, None] / n, (repeats, 1000)) / n
            low, high = np.quantile(boot, [0.025, 0.975], axis=1)
            rows.append([n, f"{p:.2f}", f"{exact:.3f}", f"{np.mean((low <= p) & (p <= high)):.3f}"])
    print(f"\n1a. Coverage of 95% intervals for a proportion ({repeats} repeats per cell)")
    print_table(["n", "true rate", "exact (audit)", "percentile bootstrap"], rows)


def guarantee_table(repeats: int) -> None:
    target, delta = 0.9, DELTA
    truth = np.random.default_rng(0).beta(6.0, 1.2, 400_000)

    def accuracy_above(t):
        return float(np.mean(truth[truth >= t] ** 2))

    held = naive = certified = 0
    coverage = []
    for r in range(repeats):
        rng = np.random.default_rng(100 + r)
        conf = rng.beta(6.0, 1.2, 600)
        correct = rng.random(600) < conf ** 2
        t = guaranteed_threshold(conf, correct, target_accuracy=target, delta=delta)["value"]
        certified += t is not None
        if t is not None:
            coverage.append(np.mean(truth >= t))
        held += t is None or accuracy_above(t) >= target
        t_naive = fit_threshold(conf, correct, target_accuracy=target)
        naive += t_naive is None or accuracy_above(t_naive) >= target
    print(f"\n1b. Referral threshold on 600 images, target {target:.0%}, delta {delta} "
          f"({repeats} repeats; P(right | confidence c) = c^2)")
    print_table(["threshold", "target kept on the population", "certified", "mean coverage"], [
        ["certified (Learn-then-Test)", f"{held / repeats:.3f}", f"{certified / repeats:.3f}",
         f"{np.mean(coverage):.3f}"],
        ["in-sample (lowest reaching the target)", f"{naive / repeats:.3f}", "-", "-"]])


def ece_table(repeats: int) -> None:
    rows = []
    for n in (100, 300, 1000):
        ins, fresh, oof, fresh_fold = [], [], [], []
        for r in range(repeats // 2):
            rng = np.random.default_rng([n, r])
            logits, labels = _logits_world(n, rng)
            t = fit_temperature(logits, labels)
            ins.append(expected_calibration_error(softmax(logits / t), labels))
            folds = crossfit_folds(labels, k=FOLDS, seed=r)
            oof.append(_fold_ece(logits, labels, folds, crossfit_temperature(logits, labels,
                                                                              folds)[0]))
            new_logits, new_labels = _logits_world(n, rng)
            fresh.append(expected_calibration_error(softmax(new_logits / t), new_labels))
            fresh_fold.append(_fold_ece(new_logits, new_labels, np.arange(n) % FOLDS,
                                        np.full(n, t)))
        rows.append([n, f"{np.mean(ins):.4f}", f"{np.mean(fresh):.4f}",
                     f"{np.mean(ins) - np.mean(fresh):+.4f}", f"{np.mean(oof):.4f}",
                     f"{np.mean(fresh_fold):.4f}", f"{np.mean(oof) - np.mean(fresh_fold):+.4f}"])
    print(f"\n1c. ECE after temperature scaling ({repeats // 2} repeats; 5 classes, logits 2.5x "
          "too confident)")
    print_table(["n", "in-sample", "fresh", "gap", "out-of-fold (by fold)", "fresh (by fold)",
                 "gap"], rows)


def _logits_world(n, rng):
    labels = rng.integers(0, 5, n)
    z = rng.normal(0, 1, (n, 5))
    z[np.arange(n), labels] += 2.0
    return 2.5 * z, labels


def _fold_ece(logits, labels, folds, temperature):
    k = int(folds.max()) + 1
    return float(np.sum([np.mean(folds == j) * expected_calibration_error(
        softmax(logits[folds == j] / temperature[folds == j, None]), labels[folds == j])
        for j in range(k)]))


# ---- shared: reference vs fresh ---------------------------------------------------------------

def compare_reference_and_fresh(name: str, ref_logits, ref_labels, fresh_logits, fresh_labels,
                                *, seed: int = 0) -> None:
    """The audit's reference figures (in-sample and out-of-fold) against fresh data."""
    t = fit_temperature(ref_logits, ref_labels)
    folds = crossfit_folds(ref_labels, k=FOLDS, seed=seed)
    per_image, _ = crossfit_temperature(ref_logits, ref_labels, folds)
    n_fresh = len(fresh_labels)
    # Fresh "folds" of the reference folds' size, so binned figures compare like with like.
    fresh_folds = np.arange(n_fresh) // max(len(ref_labels) // FOLDS, 1)
    rows = [["ECE before", f"{_ece(ref_logits, ref_labels, 1.0):.4f}", "-",
             f"{_ece(fresh_logits, fresh_labels, 1.0):.4f}"],
            ["ECE after (whole set)", f"{_ece(ref_logits, ref_labels, t):.4f}", "-",
             f"{_ece(fresh_logits, fresh_labels, t):.4f}"],
            ["ECE after (by fold)", f"{_fold_ece(ref_logits, ref_labels, folds, np.full(len(ref_labels), t)):.4f}",
             f"{_fold_ece(ref_logits, ref_labels, folds, per_image):.4f}",
             f"{_fold_ece(fresh_logits, fresh_labels, fresh_folds, np.full(n_fresh, t)):.4f}"]]
    conf = softmax(ref_logits / t).max(axis=1)
    correct = ref_logits.argmax(axis=1) == ref_labels
    fresh_conf = softmax(fresh_logits / t).max(axis=1)
    fresh_correct = fresh_logits.argmax(axis=1) == fresh_labels
    from audit.checks.selective import crossfit_referral

    oof = crossfit_referral(ref_logits, ref_labels, folds, calibrate=True, target_accuracy=TARGET,
                            delta=DELTA)["accepted"]
    for label, threshold in (("certified", guaranteed_threshold(
            conf, correct, target_accuracy=TARGET, delta=DELTA)["value"]),
            ("in-sample", fit_threshold(conf, correct, target_accuracy=TARGET))):
        if threshold is None:
            rows.append([f"{label} threshold", "none", "-", "-"])
            continue
        acc = conf >= threshold
        fresh_acc = fresh_conf >= threshold
        rows.append([f"{label} threshold {threshold:.4f}: accuracy on accepted",
                     _rate(correct, acc), _rate(correct, oof) if label == "certified" else "-",
                     _rate(fresh_correct, fresh_acc)])
        rows.append([f"{label} threshold: share accepted", f"{acc.mean():.3f}",
                     f"{oof.mean():.3f}" if label == "certified" else "-",
                     f"{fresh_acc.mean():.3f}"])
    print(f"\n{name}: reference n={len(ref_labels)}, fresh n={n_fresh}; temperature {t:.2f}; "
          f"target {TARGET:.0%}, delta {DELTA}")
    print_table(["figure", "reference, in-sample", "reference, out-of-fold", "fresh data"], rows)


def _ece(logits, labels, t):
    return expected_calibration_error(softmax(logits / t), labels)


def _rate(correct, member):
    return f"{np.mean(correct[member]):.4f} (n={int(member.sum())})" if member.any() else "n/a"


# ---- 2. the demo ----------------------------------------------------------------------------------

def demo_section(folder: Path, n_fresh: int, batch_size: int) -> None:
    from audit.data import load_dataset
    from audit.inference import Predictor, compute_outputs
    from audit.synthetic import REFERENCE_SITE, write_site
    from model.loaded import load_model

    audit = json.loads((folder / "audit" / "audit.json").read_text())
    checks = audit["checks"]
    cal = checks["calibration"]["metrics"]
    ref = cal["reference"]
    d = cal["datasets"][ref]
    print(f"\n2. Demo ({folder}): from its audit.json")
    print_table(["figure", "value"], [
        ["ECE before (all)", f"{d['before']['ece']:.4f}"],
        ["ECE before, by fold", f"{d['before_by_fold']['ece']:.4f}"],
        ["ECE after, out-of-fold (by fold)", f"{d['after']['ece']:.4f}"],
        ["ECE after, in-sample (all)", f"{d['after_in_sample']['ece']:.4f}"],
        ["threshold (certified) / in-sample",
         f"{checks['selective']['metrics']['threshold']['value']} / "
         f"{checks['selective']['metrics']['threshold']['naive_value']}"],
        *[[f"{name}: {k}", json.dumps(v)] for name, s in
          checks["selective"]["metrics"]["datasets"].items()
          for k, v in (("accepted accuracy", s.get("accepted_accuracy_ci")),
                       ("coverage", s.get("coverage")), ("basis", s.get("basis")))],
        *[[f"{name}: safety flagged / accuracy flagged / unflagged",
           f"{s['n_flagged']} of {s['n']} / {json.dumps(s['accuracy_flagged'])} / "
           f"{json.dumps(s['accuracy_unflagged'])}"]
          for name, s in checks["safety"]["metrics"]["datasets"].items()],
        *[[f"{name}: label issues", f"{s['n_issues']} of {s['n']}"]
          for name, s in checks["label_issues"]["metrics"]["datasets"].items()]])
    loaded = load_model(folder / "model.keras")
    size, class_names = loaded.contract.input_size, tuple(loaded.contract.class_names)
    fresh_dir = folder / "fresh_heldout"
    if not fresh_dir.is_dir():
        write_site(fresh_dir, n_images=n_fresh, size=size, domain=REFERENCE_SITE, seed=12345,
                   site_name="fresh")
    predictor = Predictor(loaded, batch_size=batch_size)
    outputs = {}
    for name, path in ((ref, folder / "data" / "heldout"), ("fresh", fresh_dir)):
        ds = load_dataset(path, name=name, class_names=class_names)
        outputs[name] = (compute_outputs(ds, predictor=predictor, cache_dir=None).logits,
                         ds.labels)
    compare_reference_and_fresh("2b. Demo model: reference heldout against a fresh set from "
                                "the same site", *outputs[ref], *outputs["fresh"])


# ---- 3. PBC ---------------------------------------------------------------------------------

def pbc_section(root: Path, size: int, batch_size: int) -> None:
    import keras
    from sklearn.linear_model import LogisticRegression

    from audit.data import load_dataset, read_images
    from audit.imaging import image_properties, image_usability, source_sizes
    from audit.safety import OOD_BIT, crossfit_ood, usability_flags

    ds = load_dataset(root, name="pbc")
    backbone = keras.applications.MobileNetV2(include_top=False, weights=str(DEFAULT_WEIGHTS),
                                              input_shape=(size, size, 3), pooling="avg")
    embeddings, props = [], []
    started = time.perf_counter()
    for start in range(0, len(ds), batch_size):
        paths = list(ds.paths[start:start + batch_size])
        images = read_images(paths, size, resize="crop")
        embeddings.append(backbone.predict(keras.applications.mobilenet_v2.preprocess_input(
            images.astype("float32")), verbose=0))
        w, h = source_sizes(paths)
        props.append({"contrast": image_properties(images, cell_size=False)["contrast"],
                      **image_usability(images), "source_width": w, "source_height": h})
    emb = np.concatenate(embeddings)
    properties = {k: np.concatenate([p[k] for p in props]) for k in props[0]}
    print(f"\n3. PBC ({root}, {len(ds)} images, {size} px): features in "
          f"{time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds))
    n_train = len(ds) * 5 // 12
    train, rest = order[:n_train], order[n_train:]
    reference, fresh = rest[:len(rest) // 2], rest[len(rest) // 2:]
    probe = LogisticRegression(C=0.5, max_iter=2000).fit(emb[train], ds.labels[train])
    logits = probe.decision_function(emb)
    print(f"linear probe trained on {len(train)} images; accuracy on the reference "
          f"{np.mean(logits[reference].argmax(1) == ds.labels[reference]):.3f}, on the fresh part "
          f"{np.mean(logits[fresh].argmax(1) == ds.labels[fresh]):.3f}")
    compare_reference_and_fresh("3a. PBC linear probe: reference against fresh", logits[reference],
                                ds.labels[reference], logits[fresh], ds.labels[fresh])

    labels = ds.labels
    folds = crossfit_folds(labels[reference], k=FOLDS, seed=0)
    model, oof = crossfit_ood(emb[reference], labels[reference], folds, false_alarm=0.05)
    usable = usability_flags(properties, input_size=224)
    fresh_flags = model.flags(emb[fresh]).astype(int) * OOD_BIT | usable[fresh]
    print("\n3b. PBC safety flags (false-alarm target 5%)")
    print_table(["set", "unlike the reference", "not usable", "any flag"], [
        ["reference, out-of-fold", f"{np.mean(oof > model.threshold):.3f}",
         f"{np.mean(usable[reference] != 0):.3f}",
         f"{np.mean((oof > model.threshold) | (usable[reference] != 0)):.3f}"],
        ["fresh", f"{np.mean(fresh_flags & OOD_BIT != 0):.3f}",
         f"{np.mean(usable[fresh] != 0):.3f}", f"{np.mean(fresh_flags != 0):.3f}"]])

    probs = softmax(logits[reference])
    given = labels[reference].copy()
    flip = rng.choice(len(given), len(given) // 20, replace=False)
    given[flip] = (given[flip] + rng.integers(1, len(ds.class_names), len(flip))) % len(
        ds.class_names)
    found = label_issues(given, probs)
    clean = label_issues(labels[reference], probs)
    print("\n3c. PBC label issues on the reference (probe probabilities, out-of-sample)")
    print_table(["labels", "issues found", "recall of flips", "precision"], [
        ["as given", len(clean), "-", "-"],
        ["5% flipped", len(found), f"{np.isin(flip, found).mean():.3f}",
         f"{np.isin(found, flip).mean():.3f}"]])


# ---- 4. per-image cost ----------------------------------------------------------------------------

def cost_section(root: Path, size: int, batch_size: int, n: int) -> None:
    from audit.data import read_images
    from audit.imaging import image_usability, source_sizes
    from audit.inference import Predictor
    from model.build import build_classifier

    paths = sorted(str(p) for p in root.rglob("*.jpg"))[:n]
    images = read_images(paths, size, resize="crop")
    predictor = Predictor(build_classifier(5, input_size=size, weights=None),
                          batch_size=batch_size)
    predictor.outputs(images[:batch_size])  # trace
    timings = {}  # (wall, CPU) seconds; CPU time of the serial run is the least load-dependent
    for label, threads in (("serial", "1"), ("worker threads", None)):
        if threads:
            os.environ["CELLAUDIT_THREADS"] = threads
        else:
            os.environ.pop("CELLAUDIT_THREADS", None)
        image_usability(images[:8])
        t0, c0 = time.perf_counter(), time.process_time()
        image_usability(images)
        timings[f"image_usability ({label})"] = (time.perf_counter() - t0,
                                                 time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    source_sizes(paths)
    timings["source_sizes (file header)"] = (time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    predictor.outputs(images)
    forward = time.perf_counter() - t0
    timings["forward pass (batched)"] = (forward, time.process_time() - c0)
    print(f"\n4. Per-image cost at {size} px over {len(images)} images")
    print_table(["step", "wall ms per image", "CPU ms per image", "wall x one forward pass"],
                [[k, f"{1000 * w / len(images):.3f}", f"{1000 * c / len(images):.3f}",
                  f"{w / forward:.3f}"] for k, (w, c) in timings.items()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, help="an `audit demo --out DIR` folder")
    parser.add_argument("--pbc", type=Path, default=Path(os.environ.get(
        "CELLAUDIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "pbc")
    parser.add_argument("--no-pbc", action="store_true")
    parser.add_argument("--only-cost", action="store_true", help="section 4 alone")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-fresh", type=int, default=2000, help="fresh demo images")
    parser.add_argument("--n-cost", type=int, default=256, help="images timed in section 4")
    args = parser.parse_args(argv)
    print(machine_line())
    if args.only_cost:
        cost_section(args.pbc, args.size, args.batch_size, args.n_cost)
        return 0
    coverage_table(args.repeats)
    guarantee_table(args.repeats)
    ece_table(args.repeats)
    if args.demo:
        demo_section(args.demo, args.n_fresh, args.batch_size)
    if not args.no_pbc:
        pbc_section(args.pbc, args.size, args.batch_size)
        cost_section(args.pbc, args.size, args.batch_size, args.n_cost)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
