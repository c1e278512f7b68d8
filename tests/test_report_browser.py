"""The report of a real audit (synthetic data, tiny model, all through the CLI) opened in headless
Chromium: no failed or outside request, no console error, every image decoded, all 15 section
headings, a screenshot (also saved to docs/img/ with CELLAUDIT_SAVE_SCREENSHOT=1)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from audit.cli import main
from reports.context import SECTION_TITLES

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CELLAUDIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Small budgets: the browser test checks the page, not the statistics.
BUDGET = ["--set", "checks.performance.n_boot=200", "--set", "checks.shift.n_boot=200",
          "--set", "checks.shift.n_perm=50", "--set", "checks.robustness.max_images=48",
          "--set", "checks.robustness.severities=[1, 3, 5]"]


@pytest.fixture(scope="module")
def report(tiny_model, synthetic_sites, tmp_path_factory) -> Path:
    """The report.html that `audit run` wrote for the shared tiny model and synthetic sites."""
    out = tmp_path_factory.mktemp("browser") / "out"
    code = main(["run", "--model", str(tiny_model),
                 "--data", f"train={synthetic_sites['train']}",
                 "--data", f"heldout={synthetic_sites['heldout']}", "--data",
                 f"shifted:site_b={synthetic_sites['site_b']}", "--out", str(out), "--no-cache",
                 *BUDGET])
    assert code in (0, 1)  # statuses of a briefly trained model vary; the report must exist
    assert (out / "report.html").is_file()
    return out / "report.html"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_report_opens_cleanly_in_chromium(report, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 1600})
    console_errors, failed = [], []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
            else failed.append(f"outside request: {r.url}"))
    page.goto(report.resolve().as_uri(), wait_until="load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")

    assert failed == []
    assert console_errors == []
    images = page.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.alt])")
    assert len(images) >= 10
    assert all(width > 0 for width, _ in images), images
    assert all(alt.strip() for _, alt in images)
    headings = page.evaluate("Array.from(document.querySelectorAll('section > h2'))"
                             ".map(h => h.textContent.trim())")
    assert headings == list(SECTION_TITLES)
    assert page.evaluate("document.scripts.length") == 0

    shot = tmp_path / "report-screenshot.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CELLAUDIT_SAVE_SCREENSHOT") == "1":
        target = REPO / "docs" / "img" / "report-screenshot.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    page.close()


def test_report_prints_to_a4(report, browser, tmp_path):
    # 688 CSS px = A4 width minus the 14 mm margins: nothing may stick out of the printed page.
    page = browser.new_page(viewport={"width": 688, "height": 1000})
    page.emulate_media(media="print")
    page.goto(report.resolve().as_uri(), wait_until="load")
    too_wide = page.evaluate("Array.from(document.querySelectorAll('body *'))"
                             ".filter(e => e.getBoundingClientRect().right > innerWidth + 1)"
                             ".map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 40))")
    assert too_wide == []
    pdf = tmp_path / "report.pdf"
    page.pdf(path=str(pdf), format="A4", print_background=True)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    assert pages >= 15  # a page break before each section
    page.close()


def test_report_is_small(report):
    assert report.stat().st_size < 15_000_000
