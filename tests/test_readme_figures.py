"""The README quotes the demo's figures exactly as `bench/readme_figures.py` produced them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("readme_figures",
                                                  REPO / "bench" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_demo_paragraph_is_the_generated_one():
    generator = _generator()
    figures = json.loads(generator.RESULTS.read_text())
    readme = generator.README.read_text()
    block = readme.split(generator.START)[1].split(generator.END)[0].strip()
    assert block == generator.paragraph(figures)
    # and no other demo accuracy is typed elsewhere in the README
    outside = readme.replace(block, "")
    for key in ("heldout_accuracy", "site_b_accuracy"):
        assert f"{100 * figures[key]:.1f}%" not in outside
