"""Save screenshots of a report for the docs: the whole page and each top-level section.

    python scripts/report_screenshots.py OUT/report.html --out docs/screenshots [--width 1280]

Uses headless Chromium (Debian: apt-get install -y chromium) through
sccohort.report.browser; the page is loaded offline. Writes report_full.png and
report_<section>.png and prints their paths.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from sccohort.report.browser import Chromium, find_chromium

_SECTIONS_JS = """
JSON.stringify(Array.from(document.querySelectorAll('main > section')).map(s => {
  const r = s.getBoundingClientRect();
  return {id: s.id, x: r.left + window.scrollX, y: r.top + window.scrollY,
          width: r.width, height: r.height};
}))
"""


def screenshots(
    report: Path, out: Path, *, width: int = 1280, max_height: int = 6000
) -> list[Path]:
    """Screenshot the whole report and each top-level section; returns the PNG paths."""
    written = []
    with Chromium(width=width, height=900) as browser:
        session = browser.open(report)
        errors = browser.errors()
        if errors:
            print("warning: the page reported errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        written.append(browser.screenshot(session, out / "report_full.png"))
        for box in json.loads(browser.evaluate(session, _SECTIONS_JS)):
            clip = {
                "x": max(box["x"] - 8, 0),
                "y": max(box["y"] - 8, 0),
                "width": min(box["width"] + 16, width),
                "height": min(box["height"] + 16, max_height),
                "scale": 1,
            }
            data = browser.send(
                "Page.captureScreenshot",
                {"format": "png", "clip": clip, "captureBeyondViewport": True},
                session=session,
            )["data"]
            path = out / f"report_{box['id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report.html to photograph")
    parser.add_argument("--out", type=Path, default=Path("screenshots"), help="output folder")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    parser.add_argument(
        "--max-height", type=int, default=6000, help="cut section shots taller than this"
    )
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report} is not a file", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("error: Chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    for path in screenshots(args.report, args.out, width=args.width, max_height=args.max_height):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
