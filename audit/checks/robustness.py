"""Robustness: accuracy and calibration of the model under seeded image corruptions, and which
corruption each shifted set's errors resemble.

A class-stratified subsample of the reference is taken from the run's pixel store (decoded once
for the whole audit), batch by batch; each batch is
corrupted at every (corruption, severity) and predicted straight away, so only one batch of
corrupted images is ever in memory. Clean predictions come from the cached reference outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit import seeds
from audit.checks.base import AuditContext, Check, register
from audit.checks.calibration import expected_calibration_error
from audit.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from audit.data import Dataset
from audit.inference import softmax
from audit.options import count, fraction, one_of, subset_of
from audit.parallel import map_chunks
from audit.pixels import PixelStore
from audit.results import CheckResult, Finding, Status
from audit.sampling import stratified_subsample

__all__ = ["RobustnessCheck", "stratified_subsample", "corrupted_probs", "row_confusion",
           "confusion_distance", "nearest_corruptions", "relative_corruption_error"]


_COPIES_PER_CALL = 2


def corrupted_probs(dataset: Dataset, predictor, corruptions: Sequence[str],
                    severities: Sequence[int], *, pixels: PixelStore, batch_size: int,
                    seed: int) -> tuple[np.ndarray, int]:
    """(probs (K, S, N, C) float32, images pushed through the model) for every corruption K and
    severity S. Images come from `pixels` a batch at a time; a batch's corruption noise is seeded from
    (seed, its first index); `corrupt` mixes in the corruption and severity."""
    probs = None
    n_forward = 0
    combos = [(k, s, name, int(severity)) for k, name in enumerate(corruptions)
              for s, severity in enumerate(severities)]
    # Corrupt two (corruption, severity) copies at once on worker threads, then predict both in
    # one call: the model keeps every core busy, a corruption alone would not. A fixed group
    # (not one per core) keeps model batches, hence outputs, the same on every machine.
    group = _COPIES_PER_CALL
    for images, indices in pixels.batches(dataset, batch_size=batch_size):
        batch_seed = seeds.child_seed(seed, "batch", int(indices[0]))
        for first in range(0, len(combos), group):
            part = combos[first:first + group]
            corrupted = map_chunks(
                lambda c, x=images, seed=batch_seed: corrupt(x, c[0][2], c[0][3], seed=seed),
                part, chunk=1)
            logits = predictor.outputs(np.concatenate(corrupted))[0]
            n_forward += len(logits)
            if probs is None:
                probs = np.empty((len(corruptions), len(severities), len(dataset),
                                  logits.shape[1]), np.float32)
            for j, (k, s, _, _) in enumerate(part):
                probs[k, s, indices] = softmax(logits[j * len(images):(j + 1) * len(images)])
    return probs, n_forward


def row_confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix (rows = true class); NaN rows for absent classes."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)


def confusion_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over true classes present in both of the L1 distance between the rows of two
    row-normalised confusion matrices: 0 = same error pattern, 2 = disjoint predictions."""
    shared = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    return float(np.abs(a[shared] - b[shared]).sum(axis=1).mean()) if shared.any() else np.nan


def nearest_corruptions(target: np.ndarray, candidates: dict[tuple[str, int], np.ndarray], *,
                        top: int = 3) -> list[dict]:
    """The `top` (corruption, severity) whose confusion pattern is closest to `target`."""
    scored = [{"corruption": name, "severity": int(sev),
               "distance": confusion_distance(target, confusion)}
              for (name, sev), confusion in candidates.items()]
    scored = [s for s in scored if np.isfinite(s["distance"])]
    return sorted(scored, key=lambda s: s["distance"])[:top]


def relative_corruption_error(clean_accuracy: float, accuracy: np.ndarray) -> np.ndarray:
    """Per corruption: mean over severities of (error under corruption - clean error), from
    accuracy (K, S). Positive = the corruption costs accuracy (an mCE-style, unnormalised rCE)."""
    return np.mean((1.0 - accuracy) - (1.0 - clean_accuracy), axis=1)


def _words(name: str) -> str:
    return name.replace("_", " ")


@register
class RobustnessCheck(Check):
    name = "robustness"
    description = ("Accuracy and calibration under seeded image corruptions, and the corruption "
                   "each shifted set's error pattern resembles.")
    needs_model = True
    DEFAULTS = {
        "corruptions": [],              # names from audit.corruptions.CORRUPTIONS; empty = all
        "severities": [1, 2, 3, 4, 5],
        "max_images": 256,              # class-stratified reference subsample (cost: x K x S)
        "batch_size": 32,               # images decoded and corrupted at once
        "severity_for_status": 2,       # status looks at severities up to this one
        "max_drop_warn": 0.10,          # WARN: a mild corruption costs more accuracy than this
        "max_drop_fail": 0.30,          # FAIL: ... more than this
        "n_bins": 15,                   # ECE bins
    }
    LIMITS = {"corruptions": subset_of(*CORRUPTIONS), "severities": subset_of(*SEVERITIES,
                                                                             allow_empty=False),
              "max_images": count(1), "batch_size": count(1),
              "severity_for_status": one_of(*SEVERITIES), "max_drop_warn": fraction(),
              "max_drop_fail": fraction(), "n_bins": count(2)}
    ORDER = (("max_drop_warn", "max_drop_fail"),)

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        if ctx.predictor is None:
            return CheckResult(self.name, Status.SKIP, "No model to run corrupted images through.")
        names = list(opts.corruptions) or list(CORRUPTIONS)
        unknown = sorted(set(names) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"checks.robustness.corruptions: unknown {unknown}; "
                             f"known: {', '.join(CORRUPTIONS)}")
        severities = sorted({int(s) for s in opts.severities})
        if not severities or not set(severities) <= set(SEVERITIES):
            raise ValueError(f"checks.robustness.severities: expected values from {SEVERITIES}, "
                             f"received {list(opts.severities)}")
        ref = ctx.reference
        idx = stratified_subsample(ref.labels, opts.max_images, rng=ctx.rng(self.name))
        subset = ref.dataset.subset(idx)
        labels, clean = ref.labels[idx], ref.probs[idx]
        probs, n_forward = corrupted_probs(
            subset, ctx.predictor, names, severities, pixels=ctx.pixels,
            batch_size=opts.batch_size,
            seed=ctx.child_seed(self.name, "noise"))
        artifact = ctx.save_artifact("robustness_predictions", indices=idx, labels=labels,
                                     corruptions=np.array(names), severities=np.array(severities),
                                     probs=probs, clean_probs=clean.astype(np.float32))
        n_bins = opts.n_bins
        clean_acc = float(np.mean(clean.argmax(1) == labels))
        accuracy = (probs.argmax(-1) == labels).mean(-1)  # (K, S)
        ece = np.array([[expected_calibration_error(p, labels, n_bins=n_bins) for p in row]
                        for row in probs])
        rce = relative_corruption_error(clean_acc, accuracy)
        metrics = {
            "reference": ref.name, "n_images": len(idx), "severities": severities,
            "clean_accuracy": clean_acc,
            "clean_ece": expected_calibration_error(clean, labels, n_bins=n_bins),
            "corruptions": {name: {"rce": rce[k], "severities": {
                str(sev): {"accuracy": accuracy[k, s], "ece": ece[k, s],
                           "drop": clean_acc - accuracy[k, s]}
                for s, sev in enumerate(severities)}} for k, name in enumerate(names)},
            "mean_rce": float(rce.mean()),
            "n_forward_passes": n_forward,
        }
        n_classes = len(ctx.class_names)
        confusions = {(name, sev): row_confusion(labels, probs[k, s].argmax(-1), n_classes)
                      for k, name in enumerate(names) for s, sev in enumerate(severities)}
        clean_confusion = row_confusion(labels, clean.argmax(1), n_classes)
        metrics["datasets"] = {v.name: self._resemblance(v, ref.correct.mean(), confusions,
                                                         clean_confusion, metrics)
                               for v in ctx.shifted}
        status, summary = self._status(opts, metrics, names, severities, accuracy, clean_acc)
        findings = self._findings(ref.name, names, severities, accuracy, clean_acc, rce, metrics)
        return CheckResult(self.name, status, summary, metrics=metrics, findings=findings,
                           artifacts={"predictions": artifact})

    @staticmethod
    def _resemblance(view, ref_accuracy, confusions, clean_confusion, metrics) -> dict:
        """Nearest corruptions to `view`'s row-normalised confusion (`confusion_distance`); the
        clean subsample's distance is the baseline a resembling corruption must beat."""
        target = row_confusion(view.labels, view.predictions, clean_confusion.shape[0])
        top = nearest_corruptions(target, confusions)
        for entry in top:
            entry["drop"] = metrics["corruptions"][entry["corruption"]]["severities"][
                str(entry["severity"])]["drop"]
        return {"drop": float(ref_accuracy - view.correct.mean()), "top": top,
                "nearest": top[0] if top else None,
                "clean_distance": confusion_distance(target, clean_confusion)}

    @staticmethod
    def _status(opts, metrics, names, severities, accuracy, clean_acc) -> tuple[Status, str]:
        mild = [s for s, sev in enumerate(severities) if sev <= opts.severity_for_status]
        if not mild:
            return Status.PASS, (f"No severity up to {opts.severity_for_status} was run; mean "
                                 f"rCE {metrics['mean_rce']:.1%}.")
        drops = clean_acc - accuracy[:, mild]
        k, s = np.unravel_index(np.argmax(drops), drops.shape)
        worst = float(drops[k, s])
        metrics["status_drop"] = {"corruption": names[k], "severity": severities[mild[s]],
                                  "drop": worst}
        status = (Status.FAIL if worst > opts.max_drop_fail else
                  Status.WARN if worst > opts.max_drop_warn else Status.PASS)
        return status, (f"At severity <= {opts.severity_for_status}, {_words(names[k])} costs "
                        f"the most: {worst:.1%} accuracy (clean {clean_acc:.1%}); mean rCE "
                        f"{metrics['mean_rce']:.1%} over {len(names)} corruptions.")

    def _findings(self, ref_name, names, severities, accuracy, clean_acc, rce, metrics
                  ) -> list[Finding]:
        out = []
        k = int(np.argmax(rce))
        s = len(severities) // 2  # the middle severity tells the story; rCE covers them all
        if rce[k] > 0:
            name, sev = names[k], severities[s]
            out.append(Finding(
                self.name, f"{_words(name).capitalize()} is the most damaging corruption: at "
                f"severity {sev} it lowers accuracy on {ref_name} from {clean_acc:.0%} to "
                f"{accuracy[k, s]:.0%} (error +{rce[k]:.1%} on average over severities "
                f"{severities[0]}-{severities[-1]}).",
                f"add {_words(name)} (severities up to {sev}) to training augmentation",
                dataset=ref_name, impact=float(clean_acc - accuracy[k, s]), kind="corruption",
                evidence={"corruption": name, "severity": sev, "rce": rce[k]}))
        for dataset, m in metrics["datasets"].items():
            near = m["nearest"]
            clean_distance = m["clean_distance"]
            if near is None or not near["distance"] < clean_distance:
                continue  # the clean reference pattern is as close: no corruption fits better
            label = f"{_words(near['corruption'])} at severity {near['severity']}"
            out.append(Finding(
                self.name, f"{dataset}'s error pattern resembles {label} (confusion distance "
                f"{near['distance']:.2f}, against {m['clean_distance']:.2f} for clean "
                f"{ref_name} images; accuracy drop {m['drop']:.0%} vs {near['drop']:.0%}).",
                f"augment training with {label}, and check {dataset}'s acquisition for that "
                "artefact", dataset=dataset, impact=max(m["drop"], 0.0), kind="resembles",
                evidence=near))
        return out
