"""`explain_audit(ctx)`: explain selected images of every evaluated set with every method, score
the maps (faithfulness vs random, sanity, cell focus, stability), store them, return the dict
that audit.json keeps under "explanations" (layout: docs in `explain_audit`).

One module over 400 lines because the run (`_Run`), its scoring (`_Scorer`) and the verdict
and summary all read and write the one "explanations" layout that `explain_audit` documents;
split, that layout would be spread over several files.
"""

from __future__ import annotations

import time
import traceback

import numpy as np
from PIL import Image

from audit.explain.base import make_explainer
from audit.explain.cellfocus import aggregate_focus, focus_scores
from audit.explain.config import ExplainOptions, explain_options
from audit.explain.faithfulness import (
    deletion_auc,
    gain_over_random,
    insertion_auc,
    make_baseline,
    random_maps,
)
from audit.explain.sanity import randomised_copy, rank_correlations
from audit.explain.selection import select_images
from audit.explain.stability import stability_correlations
from audit.results import clean

__all__ = ["explain_audit", "FLAG_MEANINGS", "LAYOUT_VERSION"]

LAYOUT_VERSION = 1
FLAG_MEANINGS = {
    "not_better_than_random": "deletion/insertion no better than smooth random maps",
    "unchanged_by_randomisation": "maps barely change when the model's top layers are "
                                  "re-initialised",
    "unstable_under_corruption": "maps change a lot under mild image corruptions",
}
_NAMES = {"gradcam": "Grad-CAM", "shap": "SHAP", "lime": "LIME"}


def explain_audit(ctx) -> dict:
    """Explanations for `audit run`, as a strict-JSON dict (None where a number is undefined).

    {"layout_version": 1,
     "methods": {m: {"signed": bool, "description": str, "score": "logit"|"probability",
                     ...method settings ("layer", "max_evals", "num_samples", ...),
                     "sanity_reinitialised_layers": [layer names]?,
                     "flags": [flag, ...]  (union over datasets),
                     "timing": {"seconds", "seconds_per_image", "forward_passes",
                                "gradient_passes", "images", "evaluation_seconds"}}
                 | {"error": str, "flags": []}},
     "datasets": {d: {"role": "heldout"|"shifted", "n_images": K,
                      "artifact": "artifacts/explanations_<d>.npz" | None,
                      "artifact_size": px | None,
                      "images": [{"index", "path", "label", "label_name", "target",
                                  "target_name", "confidence", "correct",
                                  "reason": "correct"|"error"|"confident_error"}]  (npz order),
                      "cell_area_share": float | None,
                      "random": {"faithfulness": F, "cell_focus": C} | None,
                      "methods": {m: {"faithfulness": F + {"gain_vs_random": {"value", "low",
                                                                            "high"}},
                                      "cell_focus": C,
                                      "sanity": {"spearman", "n", "images": [i], "per_image"}
                                                | {"error": str} | None,
                                      "stability": {"spearman", "severity",
                                                    "per_corruption": {c: mean},
                                                    "per_image": {c: [K]}}
                                                   | {"error": str} | None,
                                      "flags": [flag, ...]}
                                  | {"error": str}}}},
     "flag_meanings": {flag: sentence}, "summary": [sentence, ...],
     "timing": {"selection", "faithfulness", "cell_focus", "sanity", "stability", "total"}}

    F = {"deletion_auc", "insertion_auc" (means), "deletion": [K], "insertion": [K]};
    C = {"mass_share", "area_share", "focus_ratio", "n", "per_class": {class: {"mass_share",
    "area_share", "focus_ratio", "n"}}, "per_image": [K mass shares]}.
    The npz holds images (K, s, s, 3) uint8, masks (K, s, s) bool, maps_<m> (K, s, s) float16
    (normalised: [0, 1] unsigned, [-1, 1] signed), indices, targets, labels, paths, reasons,
    confidence. Seconds vary between runs; everything else is fixed by the seed.
    """
    opts = explain_options(ctx.config["explain"])
    started = time.perf_counter()
    model = getattr(ctx.predictor, "loaded", None)
    if model is None:
        return clean({"layout_version": LAYOUT_VERSION, "skipped": "no model to explain"})
    from audit.inference import Predictor

    predictor = ctx.predictor  # already traced: reuse it when its batch size is the one asked
    if getattr(predictor, "batch_size", None) != opts.batch_size:
        predictor = Predictor(model, batch_size=opts.batch_size,  # the run's call size
                              forward_batch=getattr(predictor, "forward_batch", 0))
    run = _Run(ctx, opts, model, predictor)
    datasets = {view.name: run.dataset(view) for view in ctx.evaluated}
    methods = run.method_entries(datasets)
    status, headline = verdict(methods, datasets)
    return clean({
        "layout_version": LAYOUT_VERSION,
        "status": status,
        "headline": headline,
        "methods": methods,
        "datasets": datasets,
        "flag_meanings": FLAG_MEANINGS,
        "summary": _summary(datasets),
        "timing": {**{k: round(v, 3) for k, v in run.timing.items()},
                   "total": round(time.perf_counter() - started, 3)},
    })


def _detail(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


class _Run:
    """State shared across datasets: explainers, their randomised twins, counters."""

    def __init__(self, ctx, opts: ExplainOptions, model, predictor):
        self.ctx, self.opts, self.model, self.predictor = ctx, opts, model, predictor
        self.explainers, self.errors = {}, {}
        for name in opts.methods:
            try:
                self.explainers[name] = make_explainer(name, model, opts, seed=self._seed(name),
                                                       predictor=predictor)
            except Exception as exc:  # noqa: BLE001 - one broken method must not stop the others
                self.errors[name] = _detail(exc)
        self.timing = {"selection": 0.0, "faithfulness": 0.0, "cell_focus": 0.0,
                       "sanity": 0.0, "stability": 0.0}
        self.usage = {name: {"seconds": 0.0, "forward_passes": 0, "gradient_passes": 0,
                             "images": 0, "evaluation_seconds": 0.0} for name in opts.methods}
        self._random_twins: dict | None = None
        self.reinitialised: list[str] = []

    def _seed(self, *keys) -> int:
        return self.ctx.child_seed("explain", "seed", *keys)

    def random_twin(self, name: str):
        """The explainer `name` on a copy of the model with re-initialised top layers."""
        if self._random_twins is None:
            from audit.inference import Predictor

            network = self.model.require_graph("The model-randomisation sanity check")
            copy, self.reinitialised = randomised_copy(
                network, n_layers=self.opts.sanity_reinit_layers,
                rng=self.ctx.rng("explain", "randomise"))
            copy = self.model.with_keras_model(copy)
            self._random_twins = {"model": copy, "predictor": Predictor(
                copy, batch_size=self.opts.batch_size)}
        twins = self._random_twins
        if name not in twins:
            twins[name] = make_explainer(name, twins["model"], self.opts, seed=self._seed(name),
                                         predictor=twins["predictor"])
        return twins[name]

    def dataset(self, view) -> dict:
        opts, ctx = self.opts, self.ctx
        t0 = time.perf_counter()
        selection = select_images(
            view.labels, view.probs, correct_per_class=opts.correct_per_class,
            errors_per_class=opts.errors_per_class,
            most_confident_errors=opts.most_confident_errors,
            rng=ctx.rng("explain", view.name))
        idx = selection.indices
        entry = {"role": view.role, "n_images": len(idx), "artifact": None, "artifact_size": None,
                 "images": [], "cell_area_share": None, "random": None, "methods": {}}
        if len(idx) == 0:
            return entry
        paths = [view.dataset.paths[i] for i in idx]
        images = ctx.read_images(paths)
        targets = view.predictions[idx].astype(np.int64)
        labels = view.labels[idx].astype(np.int64)
        confidence = view.probs[idx, targets]
        relative = view.dataset.relative_paths
        rel_paths = [relative[i] for i in idx]
        entry["images"] = [
            {"index": int(i), "path": p, "label": int(y), "label_name": ctx.class_names[y],
             "target": int(t), "target_name": ctx.class_names[t], "confidence": float(c),
             "correct": bool(y == t), "reason": r}
            for i, p, y, t, c, r in zip(idx, rel_paths, labels, targets, confidence,
                                        selection.reasons, strict=True)]
        masks = ctx.pixels.masks(paths)
        entry["cell_area_share"] = float(masks.mean())
        self.timing["selection"] += time.perf_counter() - t0

        scorer = _Scorer(self, view.name, images, targets, labels, masks)
        entry["random"] = scorer.random_entry()
        all_maps = {}
        for name in opts.methods:
            if name in self.errors:
                entry["methods"][name] = {"error": self.errors[name]}
                continue
            try:
                maps = self._explain(name, images, targets)
                entry["methods"][name] = scorer.score(name, maps)
                all_maps[name] = maps
            except Exception as exc:  # noqa: BLE001 - keep the other methods' results
                entry["methods"][name] = {"error": _detail(exc)}
        entry.update(self._save(view.name, images, all_maps, masks, idx, targets, labels,
                                rel_paths, selection.reasons, confidence))
        return entry

    def _explain(self, name: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        explainer, usage = self.explainers[name], self.usage[name]
        before_f, before_g = self.predictor.n_images, getattr(explainer, "gradient_passes", 0)
        t0 = time.perf_counter()
        maps = explainer.explain(images, targets)
        usage["seconds"] += time.perf_counter() - t0
        usage["forward_passes"] += self.predictor.n_images - before_f
        usage["gradient_passes"] += getattr(explainer, "gradient_passes", 0) - before_g
        usage["images"] += len(images)
        return maps

    def _save(self, dataset: str, images, all_maps, masks, idx, targets, labels, paths,
              reasons, confidence) -> dict:
        size = min(self.opts.artifact_size, images.shape[1])
        arrays = {
            "images": _resize_images(images, size),
            "masks": _resize_maps(masks.astype(np.float32), size) >= 0.5,
            "indices": np.asarray(idx, np.int64), "targets": targets, "labels": labels,
            "paths": np.array(paths), "reasons": np.array(reasons),
            "confidence": np.asarray(confidence, np.float32),
            **{f"maps_{m}": _resize_maps(maps, size).astype(np.float16)
               for m, maps in all_maps.items()},
        }
        return {"artifact": self.ctx.save_artifact(f"explanations_{dataset}", **arrays),
                "artifact_size": size}

    def method_entries(self, datasets: dict) -> dict:
        out = {}
        for name in self.opts.methods:
            if name in self.errors:
                out[name] = {"error": self.errors[name], "flags": []}
                continue
            flags = sorted({f for d in datasets.values()
                            for f in d["methods"].get(name, {}).get("flags", [])})
            usage = dict(self.usage[name])
            usage["seconds_per_image"] = usage["seconds"] / max(usage["images"], 1)
            info = self.explainers[name].info()
            if name in self.opts.sanity_methods and self.reinitialised:
                info["sanity_reinitialised_layers"] = self.reinitialised
            out[name] = {**info, "flags": flags, "timing": usage}
        return out


class _Scorer:
    """Scores for one dataset's selected images: faithfulness, focus, sanity, stability."""

    def __init__(self, run: _Run, dataset: str, images, targets, labels, masks):
        self.run, self.opts, self.dataset = run, run.opts, dataset
        self.images, self.targets, self.labels, self.masks = images, targets, labels, masks
        self.baseline = make_baseline(images, kind=self.opts.faithfulness_baseline,
                                      blur_fraction=self.opts.faithfulness_blur_fraction)
        rng = run.ctx.rng("explain", dataset, "random_maps")
        self.random_maps = random_maps(len(images), *images.shape[1:3], rng=rng,
                                       grid=self.opts.random_grid)
        self.random_faith = self._faithfulness("random", self.random_maps)

    def _faithfulness(self, name: str, maps) -> dict:
        t0 = time.perf_counter()
        common = {"steps": self.opts.faithfulness_steps, "baseline": self.baseline}
        predict = self.run.predictor.probs
        rng = self.run.ctx.rng("explain", self.dataset, "ties", name)
        deletion = deletion_auc(self.images, maps, self.targets, predict, rng=rng, **common)
        insertion = insertion_auc(self.images, maps, self.targets, predict, rng=rng, **common)
        self.run.timing["faithfulness"] += time.perf_counter() - t0
        return {"deletion_auc": float(np.mean(deletion)), "insertion_auc": float(np.mean(insertion)),
                "deletion": deletion, "insertion": insertion}

    def _focus(self, maps) -> dict:
        t0 = time.perf_counter()
        scores = focus_scores(maps, self.masks)
        out = aggregate_focus(scores, self.labels, self.run.ctx.class_names)
        out["per_image"] = scores["mass_share"]
        self.run.timing["cell_focus"] += time.perf_counter() - t0
        return out

    def random_entry(self) -> dict:
        return {"faithfulness": self.random_faith, "cell_focus": self._focus(self.random_maps)}

    def score(self, name: str, maps) -> dict:
        opts, t0 = self.opts, time.perf_counter()
        faith = self._faithfulness(name, maps)
        faith["gain_vs_random"] = gain_over_random(
            faith["deletion"], faith["insertion"], self.random_faith["deletion"],
            self.random_faith["insertion"], rng=self.run.ctx.rng("explain", self.dataset,
                                                                 "boot", name),
            n_boot=opts.n_boot)
        entry = {"faithfulness": faith, "cell_focus": self._focus(maps), "sanity": None,
                 "stability": None, "flags": []}
        # Flag unless the whole 95% interval of the gain is above the minimum.
        if not faith["gain_vs_random"]["low"] > opts.faithfulness_min_gain:
            entry["flags"].append("not_better_than_random")
        if opts.sanity and name in opts.sanity_methods:
            entry["sanity"] = _guarded(self._sanity, name, maps)
            rho = entry["sanity"].get("spearman", float("nan"))
            if _above(rho, opts.sanity_max_correlation):
                entry["flags"].append("unchanged_by_randomisation")
        if opts.stability and name in opts.stability_methods and opts.stability_corruptions:
            entry["stability"] = _guarded(self._stability, name, maps)
            rho = entry["stability"].get("spearman", float("nan"))
            if _above(opts.stability_min_correlation, rho):
                entry["flags"].append("unstable_under_corruption")
        self.run.usage[name]["evaluation_seconds"] += time.perf_counter() - t0
        return entry

    def _sanity(self, name: str, maps) -> dict:
        t0 = time.perf_counter()
        picked = _spread(len(self.images), self.opts.sanity_max_images)
        twin = self.run.random_twin(name)
        randomised = twin.explain(self.images[picked], self.targets[picked])
        rho = rank_correlations(maps[picked], randomised)
        self.run.timing["sanity"] += time.perf_counter() - t0
        return {"spearman": _nanmean(rho), "n": len(picked), "images": picked, "per_image": rho}

    def _stability(self, name: str, maps) -> dict:
        t0 = time.perf_counter()
        severity = self.opts.stability_severity
        per = stability_correlations(
            self.run.explainers[name], self.images, self.targets, maps,
            corruptions=list(self.opts.stability_corruptions), severity=severity,
            seed=self.run._seed(self.dataset, "stability"))
        self.run.timing["stability"] += time.perf_counter() - t0
        pooled = np.concatenate(list(per.values()))
        return {"spearman": _nanmean(pooled), "severity": severity,
                "per_corruption": {c: _nanmean(v) for c, v in per.items()}, "per_image": per}


def _guarded(score, *args) -> dict:
    """A secondary score, or {"error": ...}: it must not discard the method's other scores."""
    try:
        return score(*args)
    except Exception as exc:  # noqa: BLE001
        return {"error": _detail(exc)}


def _spread(n: int, k: int) -> np.ndarray:
    """Up to k indices evenly spread over range(n): selections are ordered by class."""
    return np.unique(np.linspace(0, n - 1, num=min(n, max(k, 0))).round().astype(np.int64))


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _above(value: float, threshold: float) -> bool:
    return bool(np.isfinite(value) and np.isfinite(threshold) and value > threshold)


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images.copy()
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX))
                     for im in images])


def _resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1] == size:
        return maps.copy()
    return np.stack([np.asarray(Image.fromarray(m).resize((size, size),
                                                                     Image.Resampling.BOX))
                     for m in maps])


def _percent(x) -> str:
    return f"{100 * x:.0f}%"


def verdict(methods: dict, datasets: dict) -> tuple[str, str]:
    """(status, one sentence) of the explanations: WARN when a method is flagged or failed
    (its maps should not be read as what the model looks at), PASS when every method passed
    every test it was given."""
    flagged, failed, passed = [], [], []
    for m, entry in methods.items():
        name = _NAMES.get(m, m)
        if entry.get("error"):
            failed.append(f"{name} could not be computed ({entry['error']})")
            continue
        where = sorted(d for d, e in datasets.items()
                       if (e.get("methods", {}).get(m) or {}).get("flags"))
        if where:
            meanings = sorted({FLAG_MEANINGS[f] for d in where
                               for f in datasets[d]["methods"][m]["flags"]})
            flagged.append(f"{name} is flagged on {' and '.join(where)} ({'; '.join(meanings)})")
        else:
            passed.append(name)
    parts = flagged + failed
    if passed:
        names = passed[0] if len(passed) == 1 else ", ".join(passed[:-1]) + " and " + passed[-1]
        given = "it was" if len(passed) == 1 else "they were"
        parts.append(f"{names} passed the faithfulness, sanity and stability tests {given} given")
    sentence = "; ".join(parts) + "." if parts else "No explanation method was run."
    sentence = sentence[0].upper() + sentence[1:]
    return ("WARN" if flagged or failed else "PASS"), sentence


def _summary(datasets: dict) -> list[str]:
    """Plain sentences with the key numbers, for the report."""
    lines = _focus_shift_lines(datasets)
    for dname, d in datasets.items():
        for m, scores in d.get("methods", {}).items():
            focus = scores.get("cell_focus") or {}
            if focus.get("mass_share") is not None and np.isfinite(focus["mass_share"]):
                lines.append(
                    f"On {dname}, {_NAMES.get(m, m)} puts {_percent(focus['mass_share'])} of its "
                    f"positive attribution on the white cell, which covers "
                    f"{_percent(focus['area_share'])} of the image (focus ratio "
                    f"{focus['focus_ratio']:.2f}; 1 = no preference).")
            for flag in scores.get("flags", []):
                lines.append(f"{_NAMES.get(m, m)} is flagged on {dname}: "
                             f"{FLAG_MEANINGS[flag]}{_evidence(flag, scores)}.")
    return lines


def _focus_ratio(entry: dict, method: str) -> float | None:
    ratio = ((entry.get("methods") or {}).get(method) or {}).get("cell_focus", {}).get("focus_ratio")
    return ratio if ratio is not None and np.isfinite(ratio) else None


def _focus_shift_lines(datasets: dict) -> list[str]:
    """Where does the model look on a shifted set, compared with the reference?"""
    reference = next(((n, d) for n, d in datasets.items() if d["role"] == "heldout"), None)
    if reference is None:
        return []
    ref_name, ref = reference
    lines = []
    for name, entry in datasets.items():
        if entry["role"] != "shifted":
            continue
        for method in entry["methods"]:
            here, there = _focus_ratio(entry, method), _focus_ratio(ref, method)
            if here is not None and there is not None:
                lines.append(f"{_NAMES.get(method, method)}: focus on the white cell is "
                             f"{here:.2f} on {name} against {there:.2f} on {ref_name} "
                             f"(attribution share on the cell / cell area share).")
    return lines


def _evidence(flag: str, scores: dict) -> str:
    if flag == "not_better_than_random":
        gain = scores["faithfulness"]["gain_vs_random"]["value"]
        return f" (insertion minus deletion AUC gain over random {gain:+.3f})"
    if flag == "unchanged_by_randomisation":
        return f" (Spearman {scores['sanity']['spearman']:.2f})"
    if flag == "unstable_under_corruption":
        return f" (Spearman {scores['stability']['spearman']:.2f})"
    return ""
