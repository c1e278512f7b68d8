"""Figures of the audit report: matplotlib (Agg) drawn from audit.json values and artifact arrays.

One module over 400 lines because every figure is a short pure function on the shared
palette, markers, style and PNG encoding defined at its top; a section imports the few it
draws, and one file keeps the figures' look consistent.

Every figure function returns a `Figure(uri, alt)`: a base64 PNG data URI (so the report is
one self-contained file) and the alt text, which states what the figure shows with its key
numbers. Functions return None when there is nothing to draw. Colours are the Okabe-Ito
palette (distinguishable with the common colour-vision deficiencies), heat maps use viridis
or a ColorBrewer diverging map, and lines also differ by marker so they survive greyscale print.
PNG metadata is stripped, so the same inputs give byte-identical output.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = [
    "Figure", "OKABE_ITO", "MARKERS", "colour", "png_uri", "image_uri", "overlay_heatmap",
    "signed_heatmap", "signed_overlay", "training_curves", "accuracy_intervals", "confusion_matrix",
    "image_strip", "thumbnail_rows", "shift_decomposition", "property_drift", "reliability_diagram",
    "robustness_curves", "coverage_curves", "gap_factor_shares",
]

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442",
             "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
DPI = 100
_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": DPI, "savefig.dpi": DPI,
    "font.family": "DejaVu Sans", "figure.constrained_layout.use": True,
}


class Figure(NamedTuple):
    uri: str
    alt: str


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _style(i: int) -> dict:
    return {"color": colour(i), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}


def png_uri(fig) -> str:
    """Close `fig` and return it as a base64 PNG data URI (no metadata: reproducible bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None}, facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(image: np.ndarray, *, size: int | None = None) -> str:
    """A uint8 RGB array as a PNG data URI, upscaled (nearest) to `size` pixels if smaller."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if size is not None and max(pil.size) < size:
        scale = size / max(pil.size)
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)),
                         Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _resize_map(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if heatmap.shape == shape:
        return heatmap
    pil = Image.fromarray(heatmap, mode="F").resize((shape[1], shape[0]),
                                                    Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
                    cmap: str = "viridis") -> np.ndarray:
    """Blend a non-negative map (e.g. Grad-CAM), scaled to [0, 1], over a uint8 RGB image."""
    image = np.asarray(image, dtype=np.float32)
    heat = _resize_map(heatmap, image.shape[:2])
    heat = heat - heat.min()
    heat = heat / heat.max() if heat.max() > 0 else heat
    coloured = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * coloured, 0, 255).astype(np.uint8)


def signed_heatmap(values: np.ndarray, shape: tuple[int, int], *,
                   cmap: str = "PuOr_r") -> np.ndarray:
    """A signed map (e.g. SHAP) as an RGB image, symmetric around 0 (white = no effect)."""
    values = _resize_map(values, shape)
    limit = float(np.abs(values).max()) or 1.0
    rgb = matplotlib.colormaps[cmap]((values / limit + 1.0) / 2.0)[..., :3]
    return (rgb * 255).astype(np.uint8)


def signed_overlay(image: np.ndarray, values: np.ndarray, *, cmap: str = "PuOr_r",
                   strength: float = 0.8) -> np.ndarray:
    """A signed map (SHAP, LIME) over a greyed image: colour where |value| is large (orange =
    evidence for the class, purple = against), the image where the map is near zero."""
    image = np.asarray(image, dtype=np.float32)
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2) * 0.6 + 0.4 * image
    coloured = signed_heatmap(values, image.shape[:2], cmap=cmap).astype(np.float32)
    weight = np.abs(_resize_map(values, image.shape[:2]))
    weight = (strength * weight / (weight.max() or 1.0))[..., None]
    return np.clip((1 - weight) * grey + weight * coloured, 0, 255).astype(np.uint8)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def training_curves(history: Mapping[str, Sequence[float]],
                    phases: Sequence[Mapping] = ()) -> Figure | None:
    """Accuracy and loss per epoch on training and validation data; phase starts marked."""
    panels = [(key, label) for key, label in (("accuracy", "Accuracy"), ("loss", "Loss"))
              if history.get(key) or history.get(f"val_{key}")]
    if not panels:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.6), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels, strict=True):
            for i, (series, name) in enumerate(((key, "training"), (f"val_{key}", "validation"))):
                values = [np.nan if v is None else v for v in history.get(series) or []]
                if values:
                    ax.plot(np.arange(1, len(values) + 1), values, label=name, **_style(i),
                            markersize=3)
            start = 0
            for phase in phases[:-1]:
                start += int(phase.get("epochs_run") or 0)
                ax.axvline(start + 0.5, color="#777777", linewidth=0.8, linestyle=":")
            ax.set_xlabel("epoch")
            ax.set_title(label)
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0][0].legend(frameon=False)
        uri = png_uri(fig)
    last = {k: history[k][-1] for k in ("accuracy", "val_accuracy", "loss", "val_loss")
            if history.get(k) and history[k][-1] is not None}
    n_epochs = max(len(v or []) for v in history.values()) if history else 0
    alt = (f"Training curves over {n_epochs} epochs: accuracy and loss per epoch on training "
           "and validation data" + (f" (dotted lines mark the start of each of "
                                     f"{len(phases)} training phases)" if len(phases) > 1 else "")
           + ". Last epoch: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}"
                                          for k, v in last.items()) + ".")
    return Figure(uri, alt)


def accuracy_intervals(rows: Sequence[tuple[str, str, Mapping]]) -> Figure | None:
    """Point estimates with 95% CIs: rows of (dataset, metric label, {value, low, high})."""
    rows = [r for r in rows if r[2] and r[2].get("value") is not None]
    if not rows:
        return None
    datasets = list(dict.fromkeys(r[0] for r in rows))
    metrics = list(dict.fromkeys(r[1] for r in rows))
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(datasets) * len(metrics) + 0.9))
        y = 0
        ticks, labels = [], []
        for d, dataset in enumerate(datasets):
            for m, metric in enumerate(metrics):
                ci = next((r[2] for r in rows if r[0] == dataset and r[1] == metric), None)
                if ci is None:
                    continue
                low = ci.get("low") if ci.get("low") is not None else ci["value"]
                high = ci.get("high") if ci.get("high") is not None else ci["value"]
                ax.errorbar(100 * ci["value"], y, xerr=[[100 * (ci["value"] - low)],
                                                         [100 * (high - ci["value"])]],
                            fmt=MARKERS[m], color=colour(d), capsize=3, markersize=5)
                ticks.append(y)
                labels.append(f"{dataset}: {metric}")
                y -= 1
            y -= 0.5
        ax.set_yticks(ticks, labels)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% (point estimate and 95% confidence interval)")
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        uri = png_uri(fig)
    alt = "Key numbers with 95% confidence intervals: " + "; ".join(
        f"{d} {m} {_pct(ci['value'])} ({_pct(ci.get('low'))} to {_pct(ci.get('high'))})"
        for d, m, ci in rows) + "."
    return Figure(uri, alt)


def confusion_matrix(name: str, counts: Sequence[Sequence[float]],
                     class_names: Sequence[str]) -> Figure | None:
    """Row-normalised confusion matrix (rows = true class), each cell labelled % and count."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.size == 0:
        return None
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    n = len(class_names)
    side = 1.0 + 0.55 * n
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(side + 0.6, side))
        ax.imshow(np.nan_to_num(share), cmap="viridis", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(share):
            if np.isnan(value):
                text, dark = "-", True
            else:
                text, dark = f"{100 * value:.0f}%\n{int(counts[i, j])}", value < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{name} (n={int(counts.sum())})")
        for spine in ax.spines.values():
            spine.set_visible(False)
        uri = png_uri(fig)
    diagonal = [f"{c} {_pct(share[i, i])}" for i, c in enumerate(class_names)
                if not np.isnan(share[i, i])]
    off = counts.copy()
    np.fill_diagonal(off, 0)
    worst = np.unravel_index(np.argmax(off), off.shape)
    confusion = (f" The most frequent error is {class_names[worst[0]]} predicted as "
                 f"{class_names[worst[1]]} ({int(off[worst])} images)." if off.max() > 0 else
                 " There are no errors.")
    alt = (f"Confusion matrix on {name} ({int(counts.sum())} images), rows true class, columns "
           f"predicted class, as a share of each true class. Correct per class: "
           f"{', '.join(diagonal) or 'none'}.{confusion}")
    return Figure(uri, alt)


def image_strip(images: Sequence[np.ndarray], *, size: int, gap: int = 4) -> str | None:
    """Images side by side (each resized to `size` pixels, white gaps) as one PNG data URI."""
    images = [np.asarray(i, dtype=np.uint8) for i in images if i is not None]
    if not images:
        return None
    canvas = Image.new("RGB", (len(images) * (size + gap) - gap, size), "white")
    for k, image in enumerate(images):
        tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST
                                              if max(image.shape[:2]) < size else
                                              Image.Resampling.BILINEAR)
        canvas.paste(tile, (k * (size + gap), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_rows(name: str, images: Mapping[str, Sequence[np.ndarray]], *,
                   size: int) -> list[dict]:
    """One strip of example images per class: [{class, n, figure: Figure | None}]."""
    rows = []
    for cls, imgs in images.items():
        uri = image_strip(list(imgs), size=size)
        rows.append({"class": cls, "n": len(imgs), "figure": Figure(
            uri, f"{len(imgs)} example {cls} image{'s' if len(imgs) != 1 else ''} from {name}")
            if uri else None})
    return rows


def shift_decomposition(name: str, drop: float, prior_part: float,
                        per_class: Mapping[str, Mapping]) -> Figure | None:
    """Bars: the accuracy drop, its class-proportion part, and each class's accuracy part."""
    classes = list(per_class)
    parts = [("total drop", drop), ("class proportions", prior_part),
             *((f"{c} accuracy", per_class[c].get("accuracy_part")) for c in classes)]
    parts = [(label, 0.0 if v is None else float(v)) for label, v in parts]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 0.32 * len(parts) + 0.9))
        y = np.arange(len(parts))[::-1]
        colours = [OKABE_ITO[7], OKABE_ITO[1]] + [OKABE_ITO[0]] * len(classes)
        ax.barh(y, [100 * v for _, v in parts], color=colours, height=0.6)
        ax.set_yticks(y, [label for label, _ in parts])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("accuracy points lost on " + name + " (negative = gained)")
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        uri = png_uri(fig)
    alt = (f"Accuracy drop on {name} split by cause: total {100 * drop:.1f} points, of which "
           f"{100 * prior_part:.1f} from changed class proportions and " + ", ".join(
               f"{label} {100 * v:.1f}" for label, v in parts[2:]) + " points.")
    return Figure(uri, alt)


def property_drift(drifts: Mapping[str, Mapping[str, Mapping]]) -> Figure | None:
    """Signed shift of each image property in reference SDs, one bar colour per shifted set."""
    sets = [s for s, props in drifts.items() if props]
    if not sets:
        return None
    properties = list(dict.fromkeys(p for s in sets for p in drifts[s]))
    width = 0.8 / len(sets)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 0.35 * len(properties) * max(1, len(sets) * 0.7)
                                        + 1.0))
        base = np.arange(len(properties))[::-1].astype(float)
        for i, s in enumerate(sets):
            values = [drifts[s].get(p, {}).get("shift_sd") for p in properties]
            values = [0.0 if v is None else float(v) for v in values]
            ax.barh(base + (i - (len(sets) - 1) / 2) * width, values, height=width,
                    color=colour(i), label=s, hatch=("", "//", "..", "xx")[i % 4],
                    edgecolor="white")
        ax.set_yticks(base, [p.replace("_", " ") for p in properties])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("shift of the mean, in reference standard deviations")
        ax.legend(frameon=False)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        uri = png_uri(fig)
    alt = "Image-property drift against the reference, in standard deviations: " + "; ".join(
        f"{s}: " + ", ".join(f"{p.replace('_', ' ')} {drifts[s][p].get('shift_sd') or 0:+.2f}"
                             for p in drifts[s]) for s in sets) + "."
    return Figure(uri, alt)


def reliability_diagram(name: str, stages: Mapping[str, Mapping],
                        temperature: float | None) -> Figure | None:
    """Accuracy against confidence per bin, before and after temperature scaling, side by side."""
    present = [(stage, m) for stage, m in stages.items() if m and m.get("reliability")]
    if not present:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(present), figsize=(2.9 * len(present), 2.9),
                                 squeeze=False, sharey=True)
        for ax, (stage, m) in zip(axes[0], present, strict=True):
            rel = m["reliability"]
            edges = rel.get("edges") or list(np.linspace(0, 1, len(rel["count"]) + 1))
            width = np.diff(edges)
            acc = [np.nan if a is None else a for a in rel["accuracy"]]
            ax.bar(edges[:-1], np.nan_to_num(acc), width=width, align="edge",
                   color=OKABE_ITO[0], edgecolor="white", label="accuracy")
            conf = [np.nan if c is None else c for c in rel["confidence"]]
            ax.bar(edges[:-1], np.nan_to_num(np.array(conf) - np.nan_to_num(acc)), width=width,
                   bottom=np.nan_to_num(acc), align="edge", color="none",
                   edgecolor=OKABE_ITO[3], hatch="///", linewidth=0.6, label="gap to confidence")
            ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8,
                    label="perfect calibration")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xlabel("confidence")
            label = "before" if stage == "before" else (
                f"after (T={temperature:.2f})" if temperature else "after")
            ax.set_title(f"{label}: ECE {m.get('ece', 0) or 0:.3f}")
        axes[0][0].set_ylabel("accuracy")
        axes[0][0].legend(frameon=False, loc="upper left", fontsize=7)
        fig.suptitle(name, fontsize=10)
        uri = png_uri(fig)
    alt = (f"Reliability diagrams on {name}: accuracy against confidence in bins, "
           + " and ".join(f"{'before' if s == 'before' else 'after'} temperature scaling "
                          f"(ECE {m.get('ece') or 0:.3f}, mean confidence "
                          f"{_pct(m.get('mean_confidence'))}, accuracy {_pct(m.get('accuracy'))})"
                          for s, m in present) + ".")
    return Figure(uri, alt)


def robustness_curves(clean_accuracy: float, severities: Sequence[int],
                      corruptions: Mapping[str, Mapping]) -> Figure | None:
    """Accuracy against severity, one line per corruption, clean accuracy as a reference line."""
    if not corruptions or not severities:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        ax.axhline(100 * clean_accuracy, color="#777777", linestyle=":", linewidth=1,
                   label=f"clean ({100 * clean_accuracy:.1f}%)")
        for i, (name, m) in enumerate(corruptions.items()):
            values = [m["severities"].get(str(s), {}).get("accuracy") for s in severities]
            ax.plot(severities, [np.nan if v is None else 100 * v for v in values],
                    label=name.replace("_", " "), markersize=4, **_style(i))
        ax.set_xticks(list(severities))
        ax.set_xlabel("severity")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
        uri = png_uri(fig)
    worst = min(corruptions, key=lambda n: corruptions[n]["severities"].get(
        str(severities[-1]), {}).get("accuracy") or 0)
    worst_acc = corruptions[worst]["severities"].get(str(severities[-1]), {}).get("accuracy")
    alt = (f"Accuracy against corruption severity {severities[0]}-{severities[-1]} for "
           f"{len(corruptions)} corruptions, against clean accuracy {_pct(clean_accuracy)}; at "
           f"severity {severities[-1]} the worst is {worst.replace('_', ' ')} at "
           f"{_pct(worst_acc)}.")
    return Figure(uri, alt)


def coverage_curves(curves: Mapping[str, Mapping], threshold: float | None,
                    target: float | None) -> Figure | None:
    """Accuracy of accepted images against coverage, per set; the referral threshold marked."""
    present = {n: c for n, c in curves.items() if c and c.get("coverage")}
    if not present:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.4, 3.2))
        for i, (name, curve) in enumerate(present.items()):
            coverage = np.array(curve["coverage"], dtype=float)
            risk = np.array([np.nan if r is None else r for r in curve["risk"]], dtype=float)
            style = _style(i)
            ax.plot(100 * coverage, 100 * (1 - risk), color=style["color"],
                    linestyle=style["linestyle"], label=name)
            if threshold is not None and curve.get("threshold"):
                conf = np.array(curve["threshold"], dtype=float)
                accepted = conf >= threshold
                if accepted.any():
                    k = int(np.flatnonzero(accepted)[-1])
                    ax.plot(100 * coverage[k], 100 * (1 - risk[k]), marker=style["marker"],
                            color=style["color"], markersize=7, markeredgecolor="black")
        if target is not None:
            ax.axhline(100 * target, color="#777777", linestyle=":", linewidth=1,
                       label=f"target {100 * target:.0f}%")
        ax.set_xlabel("coverage: images the model decides (%)")
        ax.set_ylabel("accuracy on those images (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 101)
        ax.legend(frameon=False, loc="lower left")
        uri = png_uri(fig)
    marks = (f"; markers show where the referral threshold {threshold:.3f} falls on each set"
             if threshold is not None else "; no referral threshold reached the target")
    alt = (f"Accuracy of accepted images against coverage (share of images the model decides, "
           f"the most confident first) for {', '.join(present)}{marks}.")
    return Figure(uri, alt)


def gap_factor_shares(name: str, directions: Mapping[str, Mapping[str, Mapping]]) -> Figure | None:
    """Share of the gap per factor, one bar per direction, with 95% intervals."""
    factors = list(dict.fromkeys(f for d in directions.values() for f in d))
    if not factors:
        return None
    labels = {"undo": f"undo: {name} made to look like the reference",
              "reproduce": f"reproduce: the reference made to look like {name}"}
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 0.45 * len(factors) + 1.2))
        y = np.arange(len(factors))[::-1].astype(float)
        height = 0.8 / max(len(directions), 1)
        for k, (direction, shares) in enumerate(directions.items()):
            values, low, high = [], [], []
            for f in factors:
                share = shares.get(f) or {}
                v = share.get("value")
                values.append(0.0 if v is None else 100 * v)
                low.append(values[-1] - 100 * (share.get("low") if share.get("low") is not None
                                               else (v or 0.0)))
                high.append(100 * (share.get("high") if share.get("high") is not None
                                   else (v or 0.0)) - values[-1])
            ax.barh(y - k * height, values, height=height * 0.9, color=colour(k),
                    xerr=[np.maximum(low, 0), np.maximum(high, 0)], capsize=2,
                    label=labels.get(direction, direction))
        ax.set_yticks(y - height * (len(directions) - 1) / 2, factors)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"share of the accuracy gap on {name} (%)")
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.legend(loc="lower right", fontsize=7, frameon=False)
        uri = png_uri(fig)
    parts = []
    for direction, shares in directions.items():
        parts.append(f"{direction}: " + ", ".join(
            f"{f} {100 * (shares.get(f) or {}).get('value'):.0f}%"
            for f in factors if (shares.get(f) or {}).get("value") is not None))
    return Figure(uri, f"Share of the accuracy gap on {name} explained by each factor, measured "
                       f"by transforming images; " + "; ".join(parts) + ".")
