"""Distribution shift: how much accuracy each shifted set loses against the reference, and why.

For every shifted set: the accuracy drop with a bootstrap CI; the drop split into a class-prior
part and a per-class-accuracy part; image-property drift; embedding drift (MMD permutation test
and a domain classifier); confidence changes; the classes that absorb the predictions.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.drift import (
    class_matched_sample,
    domain_classifier_auc,
    mmd_permutation_test,
    property_drift,
)
from audit.imaging import PROPERTIES
from audit.options import count, fraction, positive
from audit.results import CheckResult, Finding, Status
from audit.sampling import subsample
from audit.stats import bootstrap_indices, few_images_note, interval

__all__ = ["ShiftCheck", "accuracy_drop_ci", "prior_shift_decomposition", "confidence_summary",
           "absorbing_classes", "describe_property_drift"]

# Words for a property that moved up / down (`describe_property_drift`); cell size is a verb
# phrase ("have larger white cells"), the others adjectives ("are darker").
_DIRECTION_WORDS = {
    "brightness": ("brighter", "darker"),
    "contrast": ("higher in contrast", "lower in contrast"),
    "saturation": ("more saturated", "paler"),
    "sharpness": ("sharper", "blurrier"),
    "cell_size": ("have larger white cells", "have smaller white cells"),
}
_VERB_PHRASES = {"cell_size"}
_COLOUR = {"brightness", "contrast", "saturation", "hue"}


def accuracy_drop_ci(ref_correct: np.ndarray, shifted_correct: np.ndarray, *, n_boot: int,
                     rng: np.random.Generator, ref_groups: np.ndarray | None = None,
                     shifted_groups: np.ndarray | None = None) -> dict[str, float]:
    """Reference minus shifted accuracy, with a 95% CI resampling both sets independently."""
    ref, sh = np.asarray(ref_correct, float), np.asarray(shifted_correct, float)
    ref_idx = bootstrap_indices(len(ref), n_boot=n_boot, rng=rng, groups=ref_groups)
    sh_idx = bootstrap_indices(len(sh), n_boot=n_boot, rng=rng, groups=shifted_groups)
    samples = np.array([ref[i].mean() - sh[j].mean()
                        for i, j in zip(ref_idx, sh_idx, strict=True)])
    low, high = interval(samples)
    return {"value": float(ref.mean() - sh.mean()), "low": low, "high": high}


def _priors_and_accuracy(labels: np.ndarray, correct: np.ndarray, n_classes: int):
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    hits = np.bincount(labels, weights=correct.astype(float), minlength=n_classes)
    acc = np.divide(hits, counts, out=np.full(n_classes, np.nan), where=counts > 0)
    return counts / max(counts.sum(), 1.0), acc


def prior_shift_decomposition(ref_labels, ref_correct, shifted_labels, shifted_correct, *,
                              n_classes: int) -> dict:
    """Split drop = sum_c [p_ref(c) acc_ref(c) - p_sh(c) acc_sh(c)] into two parts summing to it.

    Signs are "contribution to the drop" (positive = costs accuracy on the shifted set):
    - prior_part = sum_c (p_ref(c) - p_sh(c)) acc_ref(c): the drop explained by changed class
      priors alone, i.e. reference accuracy minus reference per-class accuracy reweighted to the
      shifted priors (the negative of sum_c (p_sh - p_ref) acc_ref);
    - accuracy_part = sum_c p_sh(c) (acc_ref(c) - acc_sh(c)): per-class accuracy changes weighted
      by the shifted priors.
    A class absent from the shifted set has p_sh = 0 and needs no acc_sh. A class absent from the
    reference has no acc_ref: the reference's overall accuracy stands in (listed in
    `imputed_classes`); the parts still sum exactly to the drop.
    """
    ref_labels, shifted_labels = np.asarray(ref_labels), np.asarray(shifted_labels)
    p_ref, acc_ref = _priors_and_accuracy(ref_labels, np.asarray(ref_correct), n_classes)
    p_sh, acc_sh = _priors_and_accuracy(shifted_labels, np.asarray(shifted_correct), n_classes)
    imputed = np.flatnonzero(np.isnan(acc_ref) & (p_sh > 0))
    acc_ref_filled = np.where(np.isnan(acc_ref), float(np.mean(ref_correct)), acc_ref)
    acc_sh_filled = np.nan_to_num(acc_sh)  # weight p_sh is 0 wherever acc_sh is undefined
    prior = (p_ref - p_sh) * acc_ref_filled
    accuracy = p_sh * (acc_ref_filled - acc_sh_filled)
    drop = float(np.mean(ref_correct) - np.mean(shifted_correct))
    prior_part = float(prior.sum())
    return {
        "drop": drop, "prior_part": prior_part, "accuracy_part": float(accuracy.sum()),
        "prior_share": float(np.clip(prior_part / drop, 0.0, 1.0)) if drop > 0 else None,
        "imputed_classes": imputed.tolist(),
        "per_class": {"p_ref": p_ref, "p_shifted": p_sh, "acc_ref": acc_ref, "acc_shifted": acc_sh,
                      "prior_part": prior, "accuracy_part": accuracy},
    }


def confidence_summary(probs: np.ndarray, correct: np.ndarray) -> dict[str, float | None]:
    """Mean max-softmax overall, on correct and on wrong predictions (None when there are none)."""
    top = np.asarray(probs).max(axis=1)
    correct = np.asarray(correct, bool)
    return {"mean": float(top.mean()) if top.size else None,
            "correct": float(top[correct].mean()) if correct.any() else None,
            "wrong": float(top[~correct].mean()) if (~correct).any() else None}


def absorbing_classes(ref_predictions, shifted_predictions, shifted_labels, *,
                      n_classes: int) -> dict:
    """Per predicted class: share change (shifted - reference) and share of the shifted errors."""
    ref_share = np.bincount(ref_predictions, minlength=n_classes) / max(len(ref_predictions), 1)
    sh_share = (np.bincount(shifted_predictions, minlength=n_classes)
                / max(len(shifted_predictions), 1))
    wrong = np.asarray(shifted_predictions) != np.asarray(shifted_labels)
    errors = np.bincount(np.asarray(shifted_predictions)[wrong], minlength=n_classes)
    return {"predicted_share_change": sh_share - ref_share,
            "error_share": errors / max(int(wrong.sum()), 1), "n_errors": int(wrong.sum())}


def _p_text(p: float, *, n_perm: int | None = None) -> str:
    if n_perm is not None and p <= 1.0 / (n_perm + 1) + 1e-12:  # no permutation reached it
        return f"p<={p:.3f}"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def describe_property_drift(name: str, drifts: dict[str, dict], *, alpha: float,
                            min_sd: float, top: int = 3) -> tuple[str, list[str]] | None:
    """('<name> images are darker (brightness W=1.2 SD, p<0.001) and ...', [properties]) or None.

    Lists at most `top` properties with KS p < alpha and W >= min_sd, the largest W first.
    """
    moved = sorted(((k, d) for k, d in drifts.items() if d["ks_p"] is not None
                    and np.isfinite(d["ks_p"]) and d["ks_p"] < alpha
                    and d["wasserstein_sd"] >= min_sd),
                   key=lambda kd: -kd[1]["wasserstein_sd"])[:top]
    if not moved:
        return None
    adjectives, verbs = [], []
    for prop, d in moved:
        if prop == "hue":
            word = f"shifted in hue ({d['shift']:+.0f} degrees)"
        else:
            up, down = _DIRECTION_WORDS.get(prop, (f"higher in {prop}", f"lower in {prop}"))
            word = up if d["shift_sd"] > 0 else down
        phrase = (f"{word} ({prop.replace('_', ' ')} W={d['wasserstein_sd']:.1f} SD, "
                  f"{_p_text(d['ks_p'])})")
        (verbs if prop in _VERB_PHRASES else adjectives).append(phrase)
    # "are A, B and have C" rather than "are A and B and have C"
    listed = (", ".join(adjectives) if verbs else _join(adjectives)) if adjectives else ""
    clauses = ([f"are {listed}"] if adjectives else []) + verbs
    return f"{name} images {_join(clauses)}", [p for p, _ in moved]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _property_action(props: list[str]) -> str:
    actions = []
    if _COLOUR & set(props):
        actions.append("stain normalisation at the input, or colour augmentation in training")
    if "sharpness" in props:
        actions.append("blur/sharpness augmentation in training (and a focus check at acquisition)")
    if "cell_size" in props:
        actions.append("scale normalisation (resize crops to a common cell size) or scale "
                       "augmentation")
    return "; ".join(actions) or "augment training to cover the drifted image properties"


@register
class ShiftCheck(Check):
    name = "shift"
    description = ("Accuracy drop on shifted sets, split into class-prior and per-class parts, "
                   "with image-property and embedding drift tests.")
    DEFAULTS = {
        "n_boot": 1000,          # bootstrap resamples for the drop CI
        "alpha": 0.01,           # significance level of the drift tests (KS, MMD)
        "drop_warn": 0.05,       # WARN: significant drift and accuracy drop above this
        "drop_fail": 0.15,       # FAIL: accuracy drop above this with its CI excluding 0
        "n_perm": 200,           # MMD permutations
        "max_images": 1000,      # per-set sample for the drift tests (MMD cost grows as n^2)
        "match_classes": True,   # drift tests at equal class counts: class mix is not image drift
        "property_min_sd": 0.2,  # a property is named in a finding from this Wasserstein (in SD)
        "absorb_share": 0.3,     # name an absorbing class receiving at least this share of errors
        "min_errors": 5,         # ... when the shifted set has at least this many errors
    }
    LIMITS = {"n_boot": count(100), "alpha": fraction(open_low=True), "drop_warn": fraction(),
              "drop_fail": fraction(), "n_perm": count(20), "max_images": count(10),
              "property_min_sd": positive(), "absorb_share": fraction(), "min_errors": count(1)}
    ORDER = (("drop_warn", "drop_fail"),)

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        ref = ctx.reference
        if not ctx.shifted:
            return CheckResult(self.name, Status.SKIP, "No shifted dataset to compare with the "
                               f"reference '{ref.name}'.", metrics={"reference": ref.name})
        per_set, findings, status = {}, [], Status.PASS
        for view in ctx.shifted:
            metrics = self._measure(ctx, opts, ref, view)
            per_set[view.name] = metrics
            findings += self._findings(ctx, opts, ref, view, metrics)
            drop = metrics["drop"]
            if drop["value"] > opts.drop_fail and drop["low"] > 0:
                status = Status.FAIL
            elif metrics["significant_drift"] and drop["value"] > opts.drop_warn \
                    and status != Status.FAIL:
                status = Status.WARN
        worst = max(per_set, key=lambda k: per_set[k]["drop"]["value"])
        d = per_set[worst]["drop"]
        summary = (f"Largest accuracy drop: {d['value']:.1%} on {worst} (95% CI {d['low']:.1%} to "
                   f"{d['high']:.1%}) against {ref.name}.")
        return CheckResult(self.name, status, summary, findings=findings,
                           metrics={"reference": ref.name, "datasets": per_set})

    def _drift_sample(self, ctx: AuditContext, opts, ref: DatasetView, view: DatasetView
                      ) -> tuple[np.ndarray, np.ndarray]:
        rng = ctx.rng(self.name, view.name, "sample")
        if opts.match_classes:
            return class_matched_sample(ref.labels, view.labels, opts.max_images, rng=rng)
        return (subsample(len(ref), opts.max_images, rng=rng),
                subsample(len(view), opts.max_images, rng=rng))

    def _measure(self, ctx: AuditContext, opts, ref: DatasetView, view: DatasetView) -> dict:
        n_classes = len(ctx.class_names)
        drop = accuracy_drop_ci(ref.correct, view.correct, n_boot=opts.n_boot,
                                rng=ctx.rng(self.name, view.name, "bootstrap"),
                                ref_groups=ref.groups, shifted_groups=view.groups)
        decomposition = prior_shift_decomposition(ref.labels, ref.correct, view.labels,
                                                  view.correct, n_classes=n_classes)
        per_class = decomposition.pop("per_class")
        decomposition["per_class"] = {c: {k: v[i] for k, v in per_class.items()}
                                      for i, c in enumerate(ctx.class_names)}
        decomposition["imputed_classes"] = [ctx.class_names[i]
                                            for i in decomposition["imputed_classes"]]
        ref_idx, sh_idx = self._drift_sample(ctx, opts, ref, view)
        props = {k: property_drift(ref.outputs.properties[k][ref_idx], v[sh_idx],
                                   circular=(k == "hue"))
                 for k, v in view.outputs.properties.items()
                 if k in ref.outputs.properties and k in PROPERTIES}
        x, y = ref.outputs.embeddings[ref_idx], view.outputs.embeddings[sh_idx]
        embedding = mmd_permutation_test(x, y, n_perm=opts.n_perm,
                                         rng=ctx.rng(self.name, view.name, "mmd"))
        embedding.update(n_ref=len(x), n_shifted=len(y), domain_auc=domain_classifier_auc(
            x, y, seed=ctx.child_seed(self.name, view.name, "auc")))
        absorb = absorbing_classes(ref.predictions, view.predictions, view.labels,
                                   n_classes=n_classes)
        alpha = opts.alpha
        significant = (any(np.isfinite(p["ks_p"]) and p["ks_p"] < alpha for p in props.values())
                       or (np.isfinite(embedding["p_value"]) and embedding["p_value"] < alpha))
        return {
            "n": len(view), "accuracy": {"reference": float(ref.correct.mean()),
                                         "shifted": float(view.correct.mean())},
            "drop": drop, "decomposition": decomposition, "properties": props,
            "embedding": embedding,
            "confidence": {"reference": confidence_summary(ref.probs, ref.correct),
                           "shifted": confidence_summary(view.probs, view.correct)},
            "absorbing": {"n_errors": absorb["n_errors"], **{
                k: dict(zip(ctx.class_names, absorb[k].tolist(), strict=True))
                for k in ("predicted_share_change", "error_share")}},
            "drift_sample": {"n_ref": len(ref_idx), "n_shifted": len(sh_idx),
                             "class_matched": opts.match_classes},
            "significant_drift": bool(significant),
        }

    def _findings(self, ctx: AuditContext, opts, ref: DatasetView, view: DatasetView,
                  m: dict) -> list[Finding]:
        name, drop, dec = view.name, m["drop"]["value"], m["decomposition"]
        impact = max(drop, 0.0)
        acc = m["accuracy"]
        out = []
        if drop > 0 and dec["prior_part"] > 0:
            out.append(Finding(
                self.name, f"Changed class proportions alone explain {dec['prior_share']:.0%} of "
                f"the accuracy drop on {name} ({acc['reference']:.1%} to {acc['shifted']:.1%}).",
                f"correct the decision rule for {name}'s class prevalence (prior shift "
                "re-weighting) and report per-class metrics", dataset=name,
                gap_share=dec["prior_share"], impact=dec["prior_part"], kind="prior_shift",
                evidence={"prior_part": dec["prior_part"], "drop": drop}))
        per_class = dec["per_class"]
        worst = max(per_class, key=lambda c: per_class[c]["accuracy_part"])
        part = per_class[worst]["accuracy_part"]
        if drop > 0 and part > 0:
            w = per_class[worst]
            before = (f"from {w['acc_ref']:.0%} on {ref.name}" if np.isfinite(w["acc_ref"])
                      else f"(absent from {ref.name})")
            n_class = int(np.sum(view.labels == ctx.class_names.index(worst)))
            out.append(Finding(
                self.name, f"{worst} accuracy falls {before} to {w['acc_shifted']:.0%} on "
                f"{name} (n={n_class}): {100 * part:.1f} of the {100 * drop:.1f} accuracy "
                f"points lost{few_images_note(n_class)}.",
                f"collect labelled images of {worst} from {name}", dataset=name,
                gap_share=float(min(part / drop, 1.0)), impact=part, kind="class_accuracy",
                evidence={"class": worst, **w}))
        described = describe_property_drift(name, m["properties"], alpha=opts.alpha,
                                            min_sd=opts.property_min_sd)
        if described:
            text, props = described
            out.append(Finding(self.name, text + ".", _property_action(props), dataset=name,
                               impact=impact, kind="property_drift",
                               evidence={p: m["properties"][p] for p in props}))
        emb = m["embedding"]
        if np.isfinite(emb["p_value"]) and emb["p_value"] < opts.alpha:
            auc = emb["domain_auc"]
            auc_text = (f"a classifier tells {name} from {ref.name} images with AUC {auc:.2f}"
                        if np.isfinite(auc) else f"{name} and {ref.name} embeddings differ")
            out.append(Finding(
                self.name, f"The model sees {name} as a different domain: {auc_text} (MMD "
                f"{_p_text(emb['p_value'], n_perm=emb['n_perm'])}).",
                f"add images from {name} to training, or adapt the model to it (fine-tune on "
                "a labelled sample)", dataset=name, impact=impact, kind="embedding_drift",
                evidence=emb))
        absorb = m["absorbing"]
        target = max(absorb["error_share"], key=absorb["error_share"].get)
        share = absorb["error_share"][target]
        if absorb["n_errors"] >= opts.min_errors and share >= opts.absorb_share:
            rise = absorb["predicted_share_change"][target]
            out.append(Finding(
                self.name, f"{share:.0%} of errors on {name} are predicted as {target} (its share "
                f"of predictions changes by {rise:+.0%} against {ref.name}).",
                f"review {name} images predicted as {target}; retrain with {name} examples of the "
                f"classes confused with it", dataset=name,
                impact=share * absorb["n_errors"] / max(m["n"], 1), kind="absorbing_class",
                evidence={"class": target, "error_share": share, "share_change": rise}))
        return out
