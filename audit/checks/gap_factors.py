"""Gap factors, measured by intervention: how much of each shifted set's accuracy drop each suspected
cause explains, measured by transforming images and predicting again.

Factors (`audit.gap_factors`): colour/stain, cell scale, sharpness, resolution/JPEG, background, and
class priors. In the *undo* direction the shifted subsample is moved toward the reference and
the accuracy recovered is measured; in the *reproduce* direction the reference subsample is
moved toward the shifted set and the accuracy lost is measured. Every combination of the image
factors is evaluated (at most 2^5 = 32, composed in `IMAGE_FACTORS` order): images come from the
run's pixel store (decoded once per audit) a batch at a time and the combinations walked depth first, so a prefix's transform is computed
once and only one batch per level is in memory. Priors are not an image transform: a subset
with priors reweights per-class accuracy to the other set's class proportions, from the same
predictions. Each factor's Shapley value of that game (in accuracy points) over the gap gives
its share; `explained` = v(all factors) / gap. Shares can overlap: measured one at a time the
factors may add up to more than all of them together (`sum_alone_share` above `explained`; the
difference is `interaction_share`, negative for overlap), and together they may account for
more than the whole drop (`beyond_gap`). `unexplained` = max(0, 1 - explained) is never
negative. Per-image correctness of every subset is kept, so bootstrap intervals (resampling
images, group-aware) need no new forward passes.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.drift import subsample
from audit.gap_factors import FACTORS, IMAGE_FACTORS, SetSample, fit_factors
from audit.gap_factors.shapley import (
    DIRECTIONS,
    gap_factor_values,
    shapley_matrix,
    subset_label,
)
from audit.gap_factors.subsets import example_images, subset_predictions
from audit.options import count, fraction, one_of, subset_of
from audit.results import CheckResult, Finding, Status
from audit.sampling import stratified_subsample
from audit.stats import bootstrap_indices, interval

__all__ = ["GapFactorsCheck", "DIRECTIONS", "overlap_phrase"]

_NOUNS = {"color": "colour", "scale": "cell scale", "sharpness": "sharpness",
          "resolution": "resolution and JPEG quality", "background": "background",
          "priors": "class proportions"}
_SUBJECTS = {"color": "colour/stain", "scale": "cell scale (magnification)",
             "sharpness": "focus/sharpness", "resolution": "resolution and JPEG compression",
             "background": "background around the cell", "priors": "class proportions"}
_ACTIONS = {
    "color": "stain normalisation at the input (`audit.gap_factors.stain`) or stain/colour "
             "augmentation in training (`audit train` keeps its --stain/--color augmentation on)",
    "scale": "rescale images to a common cell size at the input, or scale augmentation",
    "sharpness": "blur augmentation in training, and a focus check at the new site",
    "resolution": "match the acquisition resolution and JPEG quality, or augment with "
                  "down-sampling and JPEG compression",
    "background": "crop tighter around the cell (or mask the background) at the input",
    "priors": "recalibrate the class priors for the new site (prior-shift re-weighting)",
}


# ---- the check ----------------------------------------------------------------------------------

def _interval(value: float, samples: np.ndarray) -> dict:
    low, high = interval(samples)
    return {"value": value, "low": low, "high": high}


def _fit_sample(ctx: AuditContext, view: DatasetView, n: int, name: str, *,
                segment: bool) -> SetSample:
    """`segment`: with the images' own masks (the pixel store's); the shifted set's cells are
    segmented only after its colours are matched to the reference (`fit_factors`)."""
    idx = subsample(len(view), n, rng=ctx.rng(name, "fit", view.name))
    paths = [view.dataset.paths[i] for i in idx]
    return SetSample.from_images(ctx.read_images(paths), paths=paths, segment=False,
                                 masks=ctx.pixels.masks(paths) if segment else None)


@register
class GapFactorsCheck(Check):
    name = "gap_factors"
    # Random streams keep the check's name before schema 2.0: the same audit draws the same
    # subsamples and bootstrap resamples, so its numbers do not change with the rename.
    seed_name = "attribution"
    description = ("Share of each shifted set's accuracy drop explained by colour, cell scale, "
                   "sharpness, resolution, background and class priors, measured by transforming "
                   "images toward the other set (Shapley values, both directions).")
    needs_model = True
    DEFAULTS = {
        "factors": list(FACTORS),       # any of color, scale, sharpness, resolution, background, priors
        "directions": list(DIRECTIONS),  # undo (shifted -> reference) and/or reproduce
        "color_method": "macenko",      # or "reinhard" (whole-image Lab statistics mix in content)
        "allow_sharpen": False,         # undo a blurrier set by unsharp masking (else identity)
        "max_images": 200,              # class-stratified per set; cost x (2^image factors - 1)
        "fit_images": 128,              # per set, seeded, to fit the transforms (no labels)
        "batch_size": 32,               # images decoded and transformed at once
        "n_boot": 1000,                 # bootstrap resamples of images for the intervals
        "min_gap": 0.02,                # shares only when the subsample gap exceeds this
        "min_share": 0.10,              # a finding from this share (a factor's with its CI above 0)
        "explained_warn": 0.5,          # WARN: gap CI above 0 and less than this explained
        "n_examples": 2,                # example images per factor and direction (<= 96 px)
    }
    LIMITS = {"factors": subset_of(*FACTORS, allow_empty=False), "directions": subset_of(*DIRECTIONS,
                                                                      allow_empty=False),
              "color_method": one_of("macenko", "reinhard"), "max_images": count(2),
              "fit_images": count(2), "batch_size": count(1), "n_boot": count(100),
              "min_gap": fraction(), "min_share": fraction(), "explained_warn": fraction(),
              "n_examples": count(0)}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        ref = ctx.reference
        if ctx.predictor is None:
            return CheckResult(self.name, Status.SKIP, "No model to predict transformed images.")
        if not ctx.shifted:
            return CheckResult(self.name, Status.SKIP, "No shifted dataset to attribute a gap "
                               f"against the reference '{ref.name}'.",
                               metrics={"reference": ref.name})
        names, directions = self._ordered(opts)
        ref_idx = stratified_subsample(ref.labels, opts.max_images,
                                       rng=ctx.rng(self.seed_name, "subsample", ref.name))
        # Cell masks serve the scale and background factors; the reference is segmented in its
        # own colours, the shifted set after colour matching (fit_factors' segment_in).
        ref_sample = _fit_sample(ctx, ref, opts.fit_images, self.seed_name,
                                 segment=bool({"scale", "background"} & set(names)))
        metrics = {"reference": ref.name, "factors": names,
                   "order": [n for n in IMAGE_FACTORS if n in names], "directions": directions,
                   "color_method": opts.color_method, "n_forward_passes": 0, "datasets": {}}
        findings, artifacts = [], {}
        for view in ctx.shifted:
            m, n_forward, files = self._measure(ctx, opts, names, directions, ref, ref_idx,
                                                ref_sample, view)
            metrics["datasets"][view.name] = m
            metrics["n_forward_passes"] += n_forward
            artifacts.update(files)
            findings += self._findings(opts, ref.name, view.name, m, directions)
        status, summary = self._status(opts, ref.name, metrics["datasets"])
        return CheckResult(self.name, status, summary, metrics=metrics, findings=findings,
                           artifacts=artifacts)

    @staticmethod
    def _ordered(opts) -> tuple[list[str], list[str]]:
        """Factors and directions in the order they are applied (values checked at config
        load: LIMITS)."""
        ordered = [n for n in IMAGE_FACTORS if n in opts.factors] + (
            ["priors"] if "priors" in opts.factors else [])
        return ordered, [d for d in DIRECTIONS if d in opts.directions]

    def _measure(self, ctx, opts, names, directions, ref, ref_idx, ref_sample, view):
        n_classes = len(ctx.class_names)
        image_names = [n for n in names if n != "priors"]
        sh_idx = stratified_subsample(view.labels, opts.max_images,
                                      rng=ctx.rng(self.seed_name, "subsample", view.name))
        sh_sample = _fit_sample(ctx, view, opts.fit_images, self.seed_name, segment=False)
        sets = {"undo": (view, sh_idx, sh_sample, ref_sample),
                "reproduce": (ref, ref_idx, ref_sample, sh_sample)}
        correct = {"undo": view.correct[sh_idx][None], "reproduce": ref.correct[ref_idx][None]}
        fitted, arrays, examples, n_forward = {}, {}, {}, 0
        for direction in directions:
            source_view, idx, source, target = sets[direction]
            seed = ctx.child_seed(self.seed_name, view.name, direction)
            factors = fit_factors(source, target, image_names, color_method=opts.color_method,
                                  allow_sharpen=opts.allow_sharpen, seed=seed,
                                  segment_in="target" if direction == "undo" else "source")
            fitted[direction] = factors.describe()
            predictions, n = subset_predictions(
                source_view.dataset.subset(idx), factors, ctx.predictor,
                pixels=ctx.pixels, batch_size=opts.batch_size,
                seed=seed,
                base_predictions=source_view.predictions[idx],
                desc=f"gap factors {view.name} {direction}")
            n_forward += n
            correct[direction] = predictions == source_view.labels[idx][None]
            arrays.update({f"{direction}_predictions": predictions, f"{direction}_indices": idx,
                           f"{direction}_labels": source_view.labels[idx]})
            shown = example_images(source.images[:opts.n_examples], factors, seed=seed)
            examples.update({f"{direction}_{k}": v for k, v in shown.items()})
        applied = {d: [n == "priors" or not fitted[d][n]["identity"] for n in names]
                   for d in directions}
        m = self._attribute(ctx, opts, names, directions, ref, ref_idx, view, sh_idx, correct,
                            n_classes, applied)
        for direction in directions:
            m["directions"][direction]["fitted"] = fitted[direction]
        files = {
            f"predictions_{view.name}": ctx.save_artifact(
                f"gap_factors_{view.name}", subsets=np.array(
                    [subset_label(s, image_names) for s in range(1 << len(image_names))]),
                **arrays),
            f"examples_{view.name}": ctx.save_artifact(f"gap_factors_examples_{view.name}",
                                                       **examples)}
        m["predictions"], m["examples"] = files[f"predictions_{view.name}"], \
            files[f"examples_{view.name}"]
        m["example_keys"] = sorted(examples)
        return m, n_forward, files

    def _attribute(self, ctx, opts, names, directions, ref, ref_idx, view, sh_idx, correct,
                   n_classes, applied) -> dict:
        priors = "priors" in names
        ref_labels, sh_labels = ref.labels[ref_idx], view.labels[sh_idx]
        shap = shapley_matrix(len(names))

        def values(r, s) -> dict:
            return gap_factor_values(correct["reproduce"][:, r], correct["undo"][:, s],
                                      ref_labels[r], sh_labels[s], n_classes=n_classes,
                                      priors=priors, directions=directions)

        point = values(np.arange(len(ref_idx)), np.arange(len(sh_idx)))
        rng = ctx.rng(self.seed_name, view.name, "bootstrap")
        n_boot = opts.n_boot
        ref_groups = None if ref.groups is None else ref.groups[ref_idx]
        sh_groups = None if view.groups is None else view.groups[sh_idx]
        boots = [values(r, s) for r, s in zip(
            bootstrap_indices(len(ref_idx), n_boot=n_boot, rng=rng, groups=ref_groups),
            bootstrap_indices(len(sh_idx), n_boot=n_boot, rng=rng, groups=sh_groups),
            strict=True)]
        gap, gap_boot = point["gap"], np.array([b["gap"] for b in boots])
        defined = gap > opts.min_gap
        with np.errstate(divide="ignore", invalid="ignore"):
            share_boot = np.where(gap_boot > 0, 1.0, np.nan) / gap_boot
        per_direction, phis, phi_boots = {}, [], []
        for d in directions:
            v, v_boot = point[d], np.array([b[d] for b in boots])
            phi, phi_boot = shap @ v, v_boot @ shap.T
            phis.append(phi)
            phi_boots.append(phi_boot)
            per_direction[d] = self._direction_metrics(names, v, phi, phi_boot, v_boot[:, -1],
                                                       gap, share_boot, defined)
        # A factor's combined value averages the directions it could be applied in: an
        # identity transform (a blurrier set cannot be blurred toward a sharper one) has no say.
        votes = np.array([applied[d] for d in directions], float)
        weights = votes / np.maximum(votes.sum(axis=0), 1.0)
        phi = np.sum(weights * np.array(phis), axis=0)
        phi_boot = np.einsum("dn,dbn->bn", weights, np.array(phi_boots))
        # Combined, "explained" is the sum of the combined values, so shares and the
        # unexplained part add up to 1 (a direction a factor has no transform in does not dilute
        # it, as averaging v(all) over directions would).
        v_all, v_all_boot = float(phi.sum()), phi_boot.sum(axis=1)
        alone = np.sum(weights * np.array([[point[d][1 << i] for i in range(len(names))]
                                           for d in directions]), axis=0)
        combined = self._share_block(names, phi, phi_boot, v_all, v_all_boot, gap, share_boot,
                                     defined, alone=alone)
        shares = {n: combined["factors"][n]["share"]["value"] if defined else None for n in names}
        ranked = sorted((n for n in names if shares[n] is not None), key=lambda n: -shares[n])
        combined["top"] = ranked[0] if ranked else None
        return {
            "n_reference": len(ref_idx), "n_shifted": len(sh_idx),
            "accuracy": {"reference": float(correct["reproduce"][0].mean()),
                         "shifted": float(correct["undo"][0].mean())},
            "gap": _interval(gap, gap_boot), "gap_defined": bool(defined),
            "directions": per_direction, "combined": combined,
        }

    def _direction_metrics(self, names, v, phi, phi_boot, v_all_boot, gap, share_boot, defined
                           ) -> dict:
        alone = np.array([float(v[1 << i]) for i in range(len(names))])
        block = self._share_block(names, phi, phi_boot, float(v[-1]), v_all_boot, gap,
                                  share_boot, defined, alone=alone)
        for i, name in enumerate(names):
            block["factors"][name]["alone"] = float(v[1 << i])
        block["v_all"] = float(v[-1])
        block["subsets"] = {subset_label(s, names): float(v[s]) for s in range(len(v))}
        return block

    @staticmethod
    def _share_block(names, phi, phi_boot, v_all, v_all_boot, gap, share_boot, defined, *,
                     alone) -> dict:
        factors = {}
        for i, name in enumerate(names):
            factors[name] = {"points": _interval(float(phi[i]), phi_boot[:, i]),
                             "share": _interval(float(phi[i] / gap), phi_boot[:, i] * share_boot)
                             if defined else None}
        explained = (_interval(v_all / gap, v_all_boot * share_boot) if defined else None)
        # Never a negative remainder: what the factors explain beyond the drop is reported as
        # such (their effects overlap or overshoot), and the unexplained part is then zero.
        unexplained = None if explained is None else {
            k: max(0.0, 1.0 - explained[j]) if np.isfinite(explained[j]) else float("nan")
            for k, j in (("value", "value"), ("low", "high"), ("high", "low"))}
        sum_alone = float(np.sum(alone))
        return {"factors": factors, "explained": explained, "unexplained": unexplained,
                "beyond_gap": None if explained is None else max(0.0, explained["value"] - 1.0),
                "explained_points": v_all, "sum_alone_points": sum_alone,
                "interaction_points": v_all - sum_alone,
                "sum_alone_share": sum_alone / gap if defined else None,
                "interaction_share": (v_all - sum_alone) / gap if defined else None}

    def _findings(self, opts, ref_name, name, m, directions) -> list[Finding]:
        if not m["gap_defined"]:
            return []
        out = []
        gap = m["gap"]["value"]
        acc = m["accuracy"]
        context = (f"({ref_name} {acc['reference']:.1%} to {name} {acc['shifted']:.1%} on "
                   f"{m['n_reference']}/{m['n_shifted']}-image subsamples)")
        for factor, entry in m["combined"]["factors"].items():
            share = entry["share"]
            if not (share["value"] > opts.min_share and share["low"] > 0):  # nan low: no
                continue
            parts = [self._direction_phrase(d, factor, ref_name, name,
                                            m["directions"][d]["factors"][factor]["points"]
                                            ["value"]) for d in directions]
            out.append(Finding(
                self.name, f"The difference in {_SUBJECTS[factor]} explains {_pct(share)} of the drop on {name} "
                f"{context}: {'; '.join(parts)}.", _ACTIONS[factor], dataset=name,
                gap_share=float(np.clip(share["value"], 0.0, 1.0)),
                impact=float(max(gap * share["value"], 0.0)), kind=f"gap_factors_{factor}",
                evidence={"factor": factor, "share": share, "points": entry["points"],
                          "gap": m["gap"]}))
        unexplained = m["combined"]["unexplained"]
        if unexplained is not None and unexplained["value"] > opts.min_share:
            listed = ", ".join(_NOUNS[f] for f in m["combined"]["factors"])
            out.append(Finding(
                self.name, f"{_pct(unexplained)} of the drop on {name} {context} is not explained "
                f"by the measured factors ({listed}): changing all of them at once accounts for "
                f"{100 * m['combined']['explained_points']:.1f} of the {100 * gap:.1f} points.",
                f"collect labelled images from {name} and fine-tune or adapt the model on them; "
                "look for causes beyond these factors (cell morphology, labelling conventions, "
                "slide preparation)", dataset=name,
                gap_share=float(np.clip(unexplained["value"], 0.0, 1.0)),
                impact=float(max(gap * unexplained["value"], 0.0)), kind="gap_factors_unexplained",
                evidence={"unexplained": unexplained, "gap": m["gap"],
                          "factors": list(m["combined"]["factors"]),
                          "min_share": opts.min_share}))
        return out

    @staticmethod
    def _direction_phrase(direction, factor, ref_name, name, points) -> str:
        noun = _NOUNS[factor]
        if direction == "undo":
            verb = "recovers" if points >= 0 else "costs"
            what = (f"reweighting {name} to {ref_name}'s class proportions" if factor == "priors"
                    else f"matching {name}'s {noun} to {ref_name}")
        else:
            verb = "costs" if points >= 0 else "gains"
            what = (f"reweighting {ref_name} to {name}'s class proportions" if factor == "priors"
                    else f"making {ref_name} look like {name} in {noun}")
        return f"{what} {verb} {100 * abs(points):.1f} points"

    @staticmethod
    def _status(opts, ref_name, per_set) -> tuple[Status, str]:
        unexplained = [name for name, m in per_set.items()
                       if m["combined"]["explained"] is not None and m["gap"]["low"] > 0
                       and m["combined"]["explained"]["value"] < opts.explained_warn]
        status = Status.WARN if unexplained else Status.PASS
        worst = max(per_set, key=lambda k: per_set[k]["gap"]["value"])
        m = per_set[worst]
        gap = m["gap"]["value"]
        if not m["gap_defined"]:
            return status, (f"No shifted set loses more than {opts.min_gap:.0%} accuracy "
                            f"against {ref_name} on the subsamples (largest gap {gap:.1%} on "
                            f"{worst}); shares are not computed.")
        top = m["combined"]["top"]
        share = m["combined"]["factors"][top]["share"]
        text = (f"{worst}: the difference in {_SUBJECTS[top]} explains {_pct(share)} of the "
                f"{100 * gap:.1f}-point drop; {overlap_phrase(m['combined'])}.")
        if unexplained:
            text += (f" Most of the gap on {', '.join(unexplained)} is not explained by the "
                     "measured factors.")
        return status, text


def overlap_phrase(block: dict) -> str:
    """How the factors' shares add up, in words: together, one at a time, and what is left.

    The shares are Shapley values, so they can exceed a factor's effect alone: a sentence that
    set "colour explains 61%" beside "the separate effects sum to 22%" read as a contradiction,
    so the joint effect is named as what the shares divide."""
    explained, alone = block["explained"]["value"], block["sum_alone_share"]
    text = f"changing all factors at once accounts for {explained:.0%} of the drop"
    interaction = block["interaction_share"]
    if alone is not None and alone - explained > 0.05:
        text += (f"; one at a time their effects sum to {alone:.0%}, more than together: the "
                 f"factors overlap (interaction {interaction:+.0%}) and the shares count each "
                 f"overlap once")
    elif alone is not None and explained - alone > 0.05:
        text += (f"; one at a time their effects sum to only {alone:.0%}: most of the effect "
                 f"appears only when the factors change together (interaction "
                 f"{interaction:+.0%}), and each factor's share includes its part of that joint "
                 f"effect")
    if block["beyond_gap"]:
        return text + f"; at {explained:.0%}, more than the whole drop, no part is left unexplained"
    return text + f"; {block['unexplained']['value']:.0%} is unexplained"


def _pct(block: dict, *, ci: bool = True) -> str:
    text = f"{block['value']:.0%}"
    if ci and all(block.get(k) is not None and np.isfinite(block[k]) for k in ("low", "high")):
        text += f" (95% CI {block['low']:.0%} to {block['high']:.0%})"
    return text
