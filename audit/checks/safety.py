"""Safety flags: which images should go to a human whatever the model says, and does flagging
them help on each shifted set?

Per image, two kinds of flag (`audit.safety`): not a usable cell image (blank, far smaller than
the model input, mostly black padding, no stained nucleus) and unlike the reference (a
Mahalanobis score in the model's embedding above a threshold set, out-of-fold, at the chosen
false-alarm rate on the reference). Per evaluated set: how many images each flag refers, and
the accuracy on flagged and unflagged images with exact intervals; the flag is useful where
accuracy on unflagged images is clearly higher. The fitted parameters are stored in
`artifacts/safety_model.npz` for `audit predict`.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.options import between, count, fraction
from audit.results import CheckResult, Finding, Status
from audit.safety import OOD_BIT, REASONS, USABILITY_DEFAULTS, crossfit_ood, usability_flags
from audit.stats import few_images_note, rate_ci

__all__ = ["SafetyCheck", "flag_summary"]


def flag_summary(flags: np.ndarray, correct: np.ndarray, groups: np.ndarray | None) -> dict:
    """Counts per reason, share flagged, and accuracy on flagged / unflagged images."""
    flagged = flags != 0

    def accuracy(member: np.ndarray) -> dict | None:
        if not member.any():
            return None
        return rate_ci(correct[member], groups=None if groups is None else groups[member])

    return {"n": len(flags), "n_flagged": int(flagged.sum()),
            "flagged": rate_ci(flagged, groups=groups),
            "by_reason": {r: int(np.sum(flags >> i & 1)) for i, r in enumerate(REASONS)},
            "n_unusable": int(np.sum(flags & (OOD_BIT - 1) != 0)),
            "n_unlike_reference": int(np.sum(flags & OOD_BIT != 0)),
            "accuracy_flagged": accuracy(flagged), "accuracy_unflagged": accuracy(~flagged)}


@register
class SafetyCheck(Check):
    name = "safety"
    description = ("Per-image referral flags: not a usable cell image, or unlike the reference "
                   "(Mahalanobis in the embedding, out-of-fold false-alarm rate)")
    DEFAULTS = {
        "false_alarm_rate": 0.05,   # share of reference-like images flagged as unlike it
        "n_components": 64,         # principal directions of the embedding kept in the OOD score
        "folds": 5,                 # cross-fitting folds for the out-of-fold threshold
        **USABILITY_DEFAULTS,
    }
    LIMITS = {"false_alarm_rate": fraction(open_low=True), "n_components": count(1),
              "folds": count(2), **{key: fraction() for key in USABILITY_DEFAULTS},
              "min_nucleus_contrast": between(0.0, 10.0)}  # a log ratio, not a share

    def run(self, ctx: AuditContext) -> CheckResult:
        from audit.checks.calibration import reference_folds

        opts = self.options(ctx)
        ref = ctx.reference
        thresholds = {k: getattr(opts, k) for k in USABILITY_DEFAULTS}
        folds = reference_folds(ctx, opts.folds)
        model, oof = crossfit_ood(ref.outputs.embeddings, ref.labels, folds,
                                  false_alarm=opts.false_alarm_rate,
                                  n_components=opts.n_components)
        datasets, arrays = {}, {}
        for view in ctx.evaluated:
            scores = oof if view is ref else model.score(view.outputs.embeddings)
            flags = usability_flags(view.outputs.properties, input_size=ctx.image_size,
                                    thresholds=thresholds)
            flags |= (scores > model.threshold).astype(np.int64) * OOD_BIT
            datasets[view.name] = {"role": view.role,
                                   "ood_basis": "out_of_fold" if view is ref and folds is not None
                                   else "fitted_on_reference",
                                   **flag_summary(flags, view.correct, view.groups)}
            arrays[f"{view.name}__flags"] = flags
            arrays[f"{view.name}__ood_score"] = scores
        model_file = ctx.save_artifact(
            "safety_model", **model.to_arrays(), input_size=ctx.image_size,
            **{f"usability_{k}": v for k, v in thresholds.items()})
        flags_file = ctx.save_artifact("safety_flags", **arrays)
        findings = [f for view in ctx.evaluated
                    for f in _findings(self.name, view, datasets[view.name], ref.name)]
        unusable = {n: d["n_unusable"] for n, d in datasets.items() if d["n_unusable"]}
        status = Status.WARN if unusable else Status.PASS
        r = datasets[ref.name]
        summary = (f"{r['n_unlike_reference']} of {r['n']} {ref.name} images score as unlike the "
                   f"reference out-of-fold (target false-alarm rate "
                   f"{opts.false_alarm_rate:.0%})"
                   + "".join(f"; {n}: {d['n_flagged']} of {d['n']} flagged"
                             for n, d in datasets.items() if n != ref.name)
                   + (f"; not usable as cell images: {unusable}" if unusable else "") + ".")
        return CheckResult(self.name, status, summary, findings=findings,
                           artifacts={"model": model_file, "flags": flags_file}, metrics={
                               "reference": ref.name,
                               "false_alarm_rate": opts.false_alarm_rate,
                               "ood": {"score": "class_conditional_mahalanobis_ppca",
                                       "threshold": model.threshold,
                                       "n_components": int(model.components.shape[1]),
                                       "folds": None if folds is None else int(folds.max()) + 1,
                                       "observed_false_alarm": float(np.mean(oof >
                                                                             model.threshold))},
                               "usability": thresholds, "reasons": list(REASONS),
                               "datasets": datasets})


def _findings(check: str, view: DatasetView, d: dict, reference: str) -> list[Finding]:
    out = []
    if d["n_unusable"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in d["by_reason"].items()
                            if v and k != REASONS[-1])
        out.append(Finding(
            check=check, dataset=view.name, kind="unusable_images",
            impact=d["n_unusable"] / max(d["n"], 1),
            text=(f"{d['n_unusable']} of {d['n']} {view.name} images are not usable cell "
                  f"images: {reasons}."),
            action=("remove or re-acquire these images; `audit predict` refers such images to a "
                    "human"), evidence={k: d[k] for k in ("n", "n_unusable", "by_reason")}))
    if view.role != "shifted" or not d["n_flagged"]:
        return out
    flagged, unflagged = d["accuracy_flagged"], d["accuracy_unflagged"]
    useful = (flagged is not None and unflagged is not None
              and unflagged["low"] > flagged["high"])
    if unflagged is None:
        comparison = "every image is flagged"
    else:
        comparison = (f"accuracy is {_pct(flagged['value'])}% (95% CI {_pct(flagged['low'])}-"
                      f"{_pct(flagged['high'])}, n={flagged['n']}) on flagged images and "
                      f"{_pct(unflagged['value'])}% (95% CI {_pct(unflagged['low'])}-"
                      f"{_pct(unflagged['high'])}, n={unflagged['n']}) on the others"
                      f"{few_images_note(min(flagged['n'], unflagged['n']))}")
    text = (f"The safety flags would refer {d['n_flagged']} of {d['n']} {view.name} images "
            f"({_pct(d['flagged']['value'])}%; {d['n_unlike_reference']} unlike {reference}, "
            f"{d['n_unusable']} not usable); {comparison}.")
    if useful:
        action = (f"refer flagged {view.name} images to a human (`audit predict` does); the flag "
                  "separates the images the model gets wrong")
    else:
        action = (f"the flags do not single out {view.name}'s errors: do not rely on them there; "
                  f"validate the model on labelled {view.name} images")
    gain = (unflagged["value"] - flagged["value"]) if flagged and unflagged else 0.0
    out.append(Finding(
        check=check, dataset=view.name, kind="flags_useful" if useful else "flags_unhelpful",
        impact=max(gain, 0.0) * d["flagged"]["value"], text=text, action=action,
        evidence={k: d[k] for k in ("n", "n_flagged", "accuracy_flagged", "accuracy_unflagged",
                                    "by_reason")}))
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"
