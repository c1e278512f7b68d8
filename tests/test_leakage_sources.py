"""Leakage check with discovered source groups (`checks.leakage.source_groups`): on synthetic
augmented copies with known sources, the verified share of copies in training matches the
truth, a class made of copies of 5 cells is the first-ranked finding and a set of distinct
cells gets none, intervals resample discovered groups, a capped set is a seeded sample, the
report shows the groups with thumbnails, and the option is off by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import logits_for

from audit.checks.base import AuditContext, DatasetView
from audit.checks.leakage import LeakageCheck
from audit.config import load_config
from audit.data import Dataset, load_dataset
from audit.errors import UsageError
from audit.findings import rank_findings
from audit.groups.copies import write_copies
from audit.inference import DatasetOutputs, softmax
from audit.synthetic import CLASSES

SIZE = 112  # px: the copies and the keypoint size (small and fast; ARI 0.94 at this size)
ON = ["checks.leakage.source_groups=true", f"checks.leakage.source_groups_image_size={SIZE}",
      "checks.leakage.n_boot=100"]
MONOCYTE = CLASSES.index("monocyte")


def _source(path: str) -> str:
    """True source of a copy from its file: '<set dir>/s0012_c1.png' -> '<set dir>/12'."""
    p = Path(path)
    number = int(re.match(r"s(\d+)_c", p.name).group(1))
    return f"{p.parent.parent.name}/{number}"


def _copy(ds: Dataset, sources, copy: int) -> list[int]:
    """Indices in `ds` of copy number `copy` of each source id in `sources`."""
    wanted = {f"s{s:04d}_c{copy}.png" for s in sources}
    return [i for i, p in enumerate(ds.paths) if Path(p).name in wanted]


def _view(name: str, role: str, root: Path, parts, truth_copy: set[str]) -> DatasetView:
    """A view over images of several copy sets, no group column; the model is right on every
    image whose source is in `truth_copy` (copies of training cells) and on the copies of
    even-numbered cells among the rest."""
    paths = [parts_ds.paths[i] for parts_ds, idx in parts for i in idx]
    labels = np.array([CLASSES.index(ds.class_names[ds.labels[i]]) for ds, idx in parts
                       for i in idx], dtype=np.int64)
    dataset = Dataset(name=name, root=str(root), paths=tuple(paths), labels=labels,
                      class_names=CLASSES, fingerprint=f"test-{name}")
    copied = np.array([_source(p) in truth_copy for p in paths])
    # copies of one cell are classified alike: right on the even-numbered cells
    correct = copied | np.array([int(_source(p).split("/")[1]) % 2 == 0 for p in paths])
    predictions = np.where(correct, labels, (labels + 1) % len(CLASSES))
    logits = logits_for(labels, predictions, len(CLASSES))
    rng = np.random.default_rng(len(name))
    outputs = DatasetOutputs(logits=logits, probs=softmax(logits),
                             embeddings=np.zeros((len(paths), 4), np.float32), properties={},
                             phash=rng.integers(0, 2**63, len(paths)).astype(np.uint64))
    return DatasetView(name=name, role=role, dataset=dataset, outputs=outputs)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """train: 2 copies of each of 60 cells. heldout: a third copy of 30 of them (truth: 60%
    have a copy in train) and one copy of 20 other cells. site_b: 60 monocytes that are 12
    copies each of 5 cells, and one copy each of 16 other cells of other classes, none in
    train."""
    root = tmp_path_factory.mktemp("leak_sources")
    many = load_dataset(write_copies(root / "many", n_sources=80, copies=3, size=SIZE, seed=0))
    few = load_dataset(write_copies(root / "few", n_sources=5, copies=12, size=SIZE, seed=1,
                                    classes=("monocyte",)))
    in_train = {f"many/{s}" for s in range(60)}
    not_monocyte = [s for s in range(60, 80) if CLASSES[s % len(CLASSES)] != "monocyte"]
    return {
        "train": _view("train", "train", root, [(many, _copy(many, range(60), 0)
                                                 + _copy(many, range(60), 1))], in_train),
        "heldout": _view("heldout", "heldout", root,
                         [(many, _copy(many, range(30), 2) + _copy(many, range(60, 80), 2))],
                         in_train),
        "site_b": _view("site_b", "shifted", root,
                        [(few, list(range(len(few)))), (many, _copy(many, not_monocyte, 0))],
                        in_train),
    }


def _context(views, tmp_path, overrides) -> AuditContext:
    config = load_config(None, list(overrides))
    return AuditContext(views=dict(views), class_names=CLASSES, config=config, seed=0,
                        artifacts_dir=tmp_path / "artifacts", image_size=SIZE)


def _run(views, tmp_path, overrides=ON):
    ctx = _context(views, tmp_path, overrides)
    result = LeakageCheck().run(ctx)
    ctx.results["leakage"] = result
    return ctx, result, json.loads(json.dumps(result.to_dict(), allow_nan=False))


@pytest.fixture(scope="module")
def audited(views, tmp_path_factory):
    return _run(views, tmp_path_factory.mktemp("leak_run"))


def test_verified_share_of_copies_in_train_matches_the_truth(audited):
    _, _, data = audited
    datasets = data["metrics"]["datasets"]
    held = datasets["heldout"]["against"]["train"]["verified"]
    assert held["n_examined"] == 50 and not held["sampled"]
    assert held["share"]["value"] == pytest.approx(0.6, abs=0.1)  # truth: 30 of 50
    low, high = held["share"]["low"], held["share"]["high"]
    assert low < 0.6 < high and high - low < 0.5
    # copies are all classified right, the others half: the split recovers it
    assert held["accuracy"]["with_copy"]["value"] >= 0.95
    assert held["accuracy"]["without_copy"]["value"] == pytest.approx(0.5, abs=0.15)
    assert held["examples"] and all(e["inliers"] >= held["threshold"] for e in held["examples"])
    # the shifted set has no cell in train
    assert datasets["site_b"]["against"]["train"]["verified"]["share"]["value"] <= 0.05
    assert data["metrics"]["verified_leaked_share"] == pytest.approx(held["share"]["value"])
    assert "verified by keypoint matching" in data["summary"]
    # per image, random hashes match nothing; the verified copies explain the gap to site_b
    # (all copies right, the others at 50%, like site_b)
    assert data["metrics"]["leaked_share"] == 0.0 and data["status"] == "FAIL"
    leak = [f for f in data["findings"] if f["kind"] == "train_leak"]
    assert len(leak) == 1 and leak[0]["dataset"] == "site_b"
    assert "verified by keypoint matching" in leak[0]["text"] and leak[0]["gap_share"] > 0.5


def test_a_class_of_copies_of_five_cells_is_the_first_ranked_finding(audited):
    ctx, result, data = audited
    few = [f for f in result.findings if f.kind == "few_cells"]
    assert [(f.dataset, f.evidence["class"]) for f in few] == [("site_b", "monocyte")]
    cells = few[0].evidence["cells"]
    assert 5 <= cells <= 7  # 5 true cells; a copy left unlinked counts as one more
    assert few[0].text.startswith(f"monocyte: 60 images in site_b, at most {cells} distinct "
                                  "cells: its recall")
    # recall (3 of 5 cells right: 36 of 60 images) is counted in cells: its interval is far
    # wider than 60 independent images' would be (47-72%)
    recall = few[0].evidence["recall"]
    assert recall["value"] == pytest.approx(0.6) and recall["high"] - recall["low"] > 0.6
    ranked = rank_findings(ctx.results)
    assert ranked[0].kind == "few_cells" and ranked[0].dataset == "site_b"
    assert data["status"] in ("WARN", "FAIL")
    sources = data["metrics"]["datasets"]["site_b"]["sources"]
    assert sources["per_class"]["monocyte"] == {"images": 60, "groups": cells}
    # heldout: every class holds distinct cells, no finding (its copies are in train, not in it)
    assert data["metrics"]["datasets"]["heldout"]["sources"]["few_cells"] == []
    assert data["metrics"]["datasets"]["heldout"]["sources"]["n_groups"] >= 45


def test_intervals_resample_discovered_groups_and_pairs_are_listed(audited):
    _, _, data = audited
    datasets = data["metrics"]["datasets"]
    assert datasets["site_b"]["bootstrap_groups"] == "discovered sources"
    assert datasets["train"]["bootstrap_groups"] == "near-duplicate clusters"
    sources = datasets["site_b"]["sources"]
    assert sources["n_groups"] <= 5 + 16 + 4 and sources["sizes"]["max"] >= 10
    assert sources["sample"] and all(p["inliers"] >= sources["threshold"]
                                     for p in sources["sample"])
    state = data["metrics"]["source_groups"]
    assert state["run"] and state["max_images"] == 2000 and state["image_size"] == SIZE


def test_capped_sets_are_a_seeded_sample_and_the_audit_is_deterministic(views, tmp_path):
    small = {k: views[k] for k in ("train", "heldout")}
    capped = [*ON, "checks.leakage.source_groups_max_images=30"]
    _, _, first = _run(small, tmp_path / "a", capped)
    _, _, second = _run(small, tmp_path / "b", capped)
    assert first == second
    held = first["metrics"]["datasets"]["heldout"]
    assert held["sources"]["sampled"] and held["sources"]["examined"] == 30
    assert held["against"]["train"]["verified"]["reference_sampled"]
    # a sample has no group for the other images: intervals fall back to the clusters
    assert held["bootstrap_groups"] == "near-duplicate clusters"


def test_off_by_default_says_how_to_turn_it_on(views, tmp_path):
    small = {k: views[k] for k in ("train", "heldout")}
    _, result, data = _run(small, tmp_path, ["checks.leakage.n_boot=100"])
    state = data["metrics"]["source_groups"]
    assert state["run"] is False and "source_groups=true" in state["how_to_enable"]
    assert "sources" not in data["metrics"]["datasets"]["heldout"]
    assert not [f for f in result.findings if f.kind == "few_cells"]


@pytest.mark.parametrize("item", ["checks.leakage.source_groups_max_images=0",
                                  "checks.leakage.source_groups_image_size=16",
                                  "checks.leakage.few_cells_max=0",
                                  "checks.leakage.source_groups=1"])
def test_bad_values_are_refused_naming_the_key(item):
    with pytest.raises(UsageError, match=item.split("=")[0].split(".")[-1]):
        load_config(None, [item])


def test_report_shows_the_groups_with_thumbnails(audited, tmp_path):
    from audit.results import AuditResult
    from audit.thumbnails import save_thumbnails
    from reports.render import render_html

    ctx, _, _ = audited
    ctx.artifacts_dir = tmp_path / "artifacts"
    thumbnails = save_thumbnails(ctx)
    result = AuditResult(
        model={"path": "m.keras", "class_names": list(CLASSES), "input_size": SIZE,
               "metadata": {}},
        datasets={v.name: {"role": v.role, "source": v.name, **v.dataset.describe(),
                           "thumbnails": thumbnails[v.name]} for v in ctx.views.values()},
        config=ctx.config, checks=ctx.results, findings=rank_findings(ctx.results),
        versions={}, timings={}, command=[])
    html = render_html(json.loads(json.dumps(result.to_dict(), allow_nan=False)),
                       base_dir=tmp_path)
    (tmp_path / "report.html").write_text(html, encoding="utf-8")  # to look at when it fails
    section = html[html.index("Source groups"):]
    section = section[:section.index("<h3>Findings")]
    assert "site_b" in section and "monocyte" in section
    assert re.search(r"<img [^>]*src=\"data:image/png;base64,[^\"]+\"[^>]*keypoint", section)
    # the verdict's ranked list opens with it
    ranked = html[html.index("All findings, most important first"):]
    assert re.search(r'<li value="1">monocyte: 60 images in site_b, at most \d distinct', ranked)


def test_other_checks_resample_the_discovered_groups(audited, tmp_path):
    from audit.checks.performance import PerformanceCheck

    ctx, _, data = audited
    site_b = ctx.views["site_b"]
    assert not site_b.has_group_column and site_b.groups is not None
    metrics = PerformanceCheck().run(ctx).metrics["datasets"]["site_b"]
    assert metrics["resampling"] == "groups" and metrics["groups_from"] == "discovered sources"
    assert metrics["n_groups"] == data["metrics"]["datasets"]["site_b"]["sources"]["n_groups"]
    # 36 of 60 monocytes right, but in 3 of 5 cells: the interval is that of about 5 cells
    recall = metrics["per_class"]["monocyte"]["recall"]
    assert recall["value"] == pytest.approx(0.6) and recall["high"] - recall["low"] > 0.6


def test_bad_value_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    from audit.cli import main

    code = main(["run", "--model", str(tmp_path / "m.keras"), "--data", f"heldout={tmp_path}",
                 "--out", str(tmp_path / "out"),
                 "--set", "checks.leakage.source_groups_max_images=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: checks.leakage.source_groups_max_images: expected a "
                                 "whole number >= 10, received 3"]


def test_audit_run_discovers_groups_before_the_checks(tiny_model, synthetic_sites, tmp_path):
    from audit.cli import main

    out = tmp_path / "audit"
    assert main(["run", "--model", str(tiny_model), "--data",
                 f"heldout={synthetic_sites['heldout']}", "--data",
                 f"train={synthetic_sites['train']}", "--out", str(out),
                 "--checks", "performance,leakage", "--no-explain", "--no-report",
                 "--set", 'audit.cache_dir=""', "--set", "checks.leakage.source_groups=true",
                 "--set", "checks.leakage.source_groups_image_size=64",
                 "--set", "checks.leakage.n_boot=100",
                 "--set", "checks.performance.n_boot=100"]) in (0, 1)
    audit = json.loads((out / "audit.json").read_text())
    assert "source_groups" in audit["timings"]
    leakage = audit["checks"]["leakage"]["metrics"]
    assert leakage["source_groups"]["run"] and "sources" in leakage["datasets"]["heldout"]
    performance = audit["checks"]["performance"]["metrics"]["datasets"]["heldout"]
    assert performance["groups_from"] == "discovered sources"
    # the gate resamples the same groups
    with np.load(out / audit["datasets"]["heldout"]["predictions"]) as arrays:
        assert len(np.unique(arrays["groups"])) == performance["n_groups"]


def test_verified_copies_replace_the_inferred_leak_findings(audited):
    # Where keypoint matching measured copies per image, the leakage findings inferred from
    # near-copies or from the similarity distribution give way to the measured ones.
    import copy

    from audit.checks.leakage import _findings

    ctx, _, data = audited
    opts = ctx.options("leakage")
    datasets = copy.deepcopy(data["metrics"]["datasets"])
    inferred = datasets["heldout"]["against"]["train"]
    inferred["share"] = 0.9                       # as if 90% had a near-copy by hash/embedding
    inferred["accuracy"]["without_copy"] = {"value": 0.5, "low": 0.3, "high": 0.7, "n": 5}
    unverified = copy.deepcopy(datasets)
    del unverified["heldout"]["against"]["train"]["verified"]
    assert [f.kind for f in _findings("leakage", ctx, unverified, opts)].count("train_leak") >= 1
    assert not [f for f in _findings("leakage", ctx, datasets, opts) if f.kind == "train_leak"]
