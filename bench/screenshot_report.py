"""Screenshots of report sections in headless Chromium, for the case study's documentation.

    python bench/screenshot_report.py REPORT.html OUT_PREFIX [--sections verdict,leakage]
        [--width 1100] [--max-height 1400]

Writes OUT_PREFIX-<section>.png per section (the section element, cut at --max-height px).
Needs Playwright and Chromium (`CELLAUDIT_CHROMIUM`, default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHROMIUM = os.environ.get("CELLAUDIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("out_prefix")
    parser.add_argument("--sections", default="verdict")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--max-height", type=int, default=1400)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    report = Path(args.report).resolve()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(report.as_uri())
        for anchor in args.sections.split(","):
            box = page.locator(f"section#{anchor}").bounding_box()
            if box is None:
                print(f"{report}: no section '{anchor}'", file=sys.stderr)
                return 2
            clip = {"x": box["x"], "y": box["y"], "width": box["width"],
                    "height": min(box["height"], args.max_height)}
            out = Path(f"{args.out_prefix}-{anchor}.png")
            page.screenshot(path=str(out), clip=clip, full_page=True)
            print(out)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
