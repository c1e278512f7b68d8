"""Render audit.json (+ its artifacts) into one self-contained HTML report.

    render_report("OUT/audit.json", "OUT/report.html")

The report needs no network, no JavaScript and no other file: CSS is inlined, figures and
images are base64 PNG data URIs, and a Content-Security-Policy forbids any request that is not
a data: image. Images of the datasets (thumbnails, error gallery) come only from the audit's
thumbnails artifact, never from the dataset's files; when it holds no copy the report says so.
Never imports TensorFlow: everything comes from the JSON and the npz artifacts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, FunctionLoader, StrictUndefined
from markupsafe import Markup

from audit.atomic import write_text
from audit.audit_json import AuditDocument, load_audit
from reports import context as ctx
from reports import figures
from reports import format as fmt

__all__ = ["render_report", "render_html", "load_audit", "Assets", "TEMPLATES"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


class Assets:
    """Read-only access to what lives beside audit.json: npz artifacts and dataset images."""

    def __init__(self, base_dir: str | os.PathLike, audit: Mapping):
        self.base_dir = Path(base_dir)
        self.audit = audit
        self._npz: dict[str, dict | None] = {}
        self._explained: dict[str, list[dict]] = {}

    # -- artifacts
    def npz(self, relative: str | None) -> dict | None:
        """Arrays of an artifact (path relative to the audit folder); None if absent/corrupt."""
        if not relative:
            return None
        if relative not in self._npz:
            path = self.base_dir / relative
            try:
                with np.load(path, allow_pickle=False) as archive:
                    self._npz[relative] = {k: archive[k] for k in archive.files}
            except (OSError, ValueError, KeyError):
                self._npz[relative] = None
        return self._npz[relative]

    def predictions(self, dataset: str) -> dict | None:
        meta = (self.audit.get("datasets") or {}).get(dataset) or {}
        relative = meta.get("predictions") or f"artifacts/predictions_{dataset}.npz"
        return self.npz(relative)

    # -- dataset images
    def image(self, dataset: str, relative: str, size: int) -> np.ndarray | None:
        """One dataset image at `size` pixels from the audit's thumbnails artifact (as the model
        saw it), or None when the audit kept no copy: the report never reads the dataset."""
        return self._thumbnail(dataset, relative, size)

    def _thumbnail(self, dataset: str, relative: str, size: int) -> np.ndarray | None:
        """The copy audit.json keeps in its thumbnails artifact (the dataset may be gone)."""
        from PIL import Image

        meta = (self.audit.get("datasets") or {}).get(dataset) or {}
        arrays = self.npz(meta.get("thumbnails"))
        if arrays is None or "paths" not in arrays or not relative:
            return None
        hits = np.flatnonzero(arrays["paths"] == relative)
        if not hits.size:
            return None
        image = Image.fromarray(arrays["images"][hits[0]])
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))

    def examples(self, dataset: str, class_names: Sequence[str], *, per_class: int,
                 size: int) -> tuple[dict | None, str]:
        """({class: [images]}, "") with the first `per_class` readable images of each class, or
        (None, reason)."""
        thumbnails = ((self.audit.get("datasets") or {}).get(dataset) or {}).get("thumbnails")
        if self.npz(thumbnails) is None:
            return None, (f"the thumbnails artifact of {dataset} is missing, so no images are "
                          "shown")
        arrays = self.predictions(dataset)
        if arrays is None or "paths" not in arrays or "labels" not in arrays:
            return None, f"the predictions artifact of {dataset} is missing"
        out: dict[str, list] = {}
        for c, name in enumerate(class_names):
            picked = []
            for relative in arrays["paths"][arrays["labels"] == c]:
                image = self.image(dataset, str(relative), size)
                if image is not None:
                    picked.append(image)
                if len(picked) >= per_class:
                    break
            out[name] = picked
        if not any(out.values()):
            return None, f"none of the images of {dataset} could be read"
        return out, ""

    # -- explanations (layout: audit.explain.runner.explain_audit)
    def explained(self, dataset: str) -> list[dict]:
        """The explained images of `dataset`: the JSON record plus `image` and `maps` arrays
        from its artifact (empty when the artifact is missing or unreadable)."""
        if dataset not in self._explained:
            self._explained[dataset] = self._read_explained(dataset)
        return self._explained[dataset]

    def _read_explained(self, dataset: str) -> list[dict]:
        entry = _get(self.audit, "explanations", "datasets", dataset) or {}
        arrays = self.npz(entry.get("artifact"))
        records = entry.get("images") or []
        if arrays is None or "images" not in arrays or len(arrays["images"]) != len(records):
            return []
        methods = [k[len("maps_"):] for k in arrays if k.startswith("maps_")]
        return [{**record, "image": arrays["images"][i],
                 "maps": {m: arrays[f"maps_{m}"][i].astype(np.float32) for m in methods}}
                for i, record in enumerate(records)]

    def explanation_panels(self, item: Mapping, methods: Sequence[str], *, signed: Mapping,
                           size: int) -> list[dict]:
        """Image | one overlay per method, as PNG data URIs with alt text."""
        image = item["image"]
        what = (f"{item.get('label_name')} image predicted as {item.get('target_name')}"
                if not item.get("correct") else f"{item.get('label_name')} image, predicted "
                                                "correctly")
        panels = [{"method": "image", "title": "Image", "uri": figures.image_uri(image, size=size),
                   "alt": f"Input: {what} (confidence {fmt.pct(item.get('confidence'))})."}]
        for method in methods:
            values = item["maps"].get(method)
            if values is None:
                panels.append({"method": method, "title": ctx.METHOD_NAMES.get(method, method),
                               "uri": None, "alt": ""})
                continue
            picture = (figures.signed_overlay(image, values) if signed.get(method) else
                       figures.overlay_heatmap(image, values))
            side = ("orange for, purple against the predicted class" if signed.get(method) else
                    "brighter = more weight")
            panels.append({"method": method, "title": ctx.METHOD_NAMES.get(method, method),
                           "uri": figures.image_uri(picture, size=size),
                           "alt": f"{ctx.METHOD_NAMES.get(method, method)} map over the {what}: "
                                  f"{side}."})
        return panels

    def error_tile(self, dataset: str, relative: str, *, size: int) -> dict | None:
        """An error's image (from disk, else from the explanation artifact when it was
        explained) and its Grad-CAM overlay when the explanations cover it."""
        explained = next((item for item in self.explained(dataset)
                          if item.get("path") == relative), None)
        image = self.image(dataset, relative, size)
        if image is None and explained is not None:
            image = explained["image"]
        if image is None:
            return None
        cam = explained["maps"].get("gradcam") if explained is not None else None
        return {"image": figures.image_uri(image, size=size),
                "cam": figures.image_uri(figures.overlay_heatmap(image, cam), size=size)
                if cam is not None else None}

    def copy_pairs(self, query: str, against: str, examples: Sequence[Mapping], *, limit: int,
                   size: int) -> list[dict]:
        """Side-by-side image pairs of near-copies or verified source copies (those whose
        thumbnails or files are at hand), up to `limit`."""
        out = []
        for e in examples:
            left = self.image(query, e.get("path", ""), size)
            right = self.image(against, e.get("match_path", ""), size)
            if left is None or right is None:
                continue
            if e.get("inliers") is not None:  # a pair verified by keypoint matching
                how = (f"{e['inliers']} keypoint inliers"
                       + (", matched mirrored" if e.get("mirrored") else ""))
            elif e.get("exact"):
                how = "identical files"
            else:
                how = (f"hash distance {e.get('hash_distance')}, cosine "
                       f"{fmt.num(e.get('cosine'), 2)}")
            out.append({"uri": figures.image_strip([left, right], size=size), "how": how,
                        "alt": f"An image of {query} ({e.get('path')}) beside its near-copy in "
                               f"{against} ({e.get('match_path')}): {how}."})
            if len(out) >= limit:
                break
        return out


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    """One environment per process: templates are compiled once. Built-in templates come from
    reports/templates/; a section registered with a template path is found as "section:<name>"."""
    from reports.sections import template_source

    loader = ChoiceLoader([FileSystemLoader(str(TEMPLATES)), FunctionLoader(template_source)])
    env = Environment(loader=loader, autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(pct=fmt.pct, pts=fmt.pts, num=fmt.num, ci=fmt.ci_text, points=fmt.points_ci,
                       p=fmt.p_text)
    return env


def render_html(audit: Mapping | AuditDocument, *, base_dir: str | os.PathLike | None = None,
                strict: bool = False) -> str:
    """The report as one HTML string; `base_dir` is the audit folder (for artifacts). `audit`
    is read through `audit.audit_json.load_audit` (version checked, an older schema migrated).
    A section that cannot be read becomes a note naming the missing key, or, with `strict`,
    raises (tests: a renamed key must fail, not blank a cell)."""
    doc = load_audit(audit)
    if base_dir is None and doc.base_dir is not None:
        base_dir = doc.base_dir
    assets = Assets(base_dir, doc) if base_dir is not None else None
    context = ctx.build_context(doc, assets, strict=strict)
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    return _environment().get_template("report.html.j2").render(css=Markup(css), **context)


def render_report(audit_json: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Render `audit_json` (artifacts read from its folder) to `html_path`, atomically."""
    audit_json = Path(audit_json)
    html = render_html(load_audit(audit_json), base_dir=audit_json.parent)
    return write_text(html_path, html)
