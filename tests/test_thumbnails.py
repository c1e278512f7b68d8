"""The report keeps its pictures when the dataset has moved: thumbnails travel in artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np

from audit.cli import main


def test_report_renders_thumbnails_after_the_dataset_is_gone(tiny_model, synthetic_sites,
                                                             tmp_path):
    data = tmp_path / "heldout"
    shutil.copytree(synthetic_sites["heldout"], data)
    out = tmp_path / "audit"
    assert main(["run", "--model", str(tiny_model), "--data", f"heldout={data}", "--out", str(out),
                 "--checks", "performance,errors", "--no-explain", "--no-report",
                 "--set", 'audit.cache_dir=""']) in (0, 1)
    audit = json.loads((out / "audit.json").read_text())
    with np.load(out / audit["datasets"]["heldout"]["thumbnails"]) as thumbs:
        paths = set(thumbs["paths"].tolist())
        assert thumbs["images"].shape[1:] == (32, 32, 3)
    errors = audit["checks"]["errors"]["metrics"]["datasets"]["heldout"]["confident_errors"]
    assert {e["path"] for e in errors} <= paths
    shutil.rmtree(data)
    assert main(["report", str(out / "audit.json"), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "are no longer at" not in html
    assert html.count("data:image/png") >= 5
