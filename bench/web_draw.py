#!/usr/bin/env python3
"""How long a person waits on the Classify page: sign in, draw a 3 with the mouse in Debian's chromium, and time
from lifting the pen to the painted heat-map (the label and the explanation are shown together).

    python3 dev.py up                                        # in another terminal: prints the URL and the key
    .venv/bin/python bench/web_draw.py --url http://127.0.0.1:8000 --key "$(cat var/api-key)" --runs 5

Prints one line per drawing (seconds, label) and the median; `--json` adds one JSON object as the last line.
tests/integration/test_web_browser.py draws its 3 with the same `draw_three`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from typing import Any

import numpy as np

HEAT_PAINTED = (
    "() => { const c = document.querySelector('#results .pred canvas.heat'); if (!c) return false;"
    " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).some(v => v > 0); }"
)


def draw_three(pg: Any) -> None:
    """Draw a '3' on the pad (#pad) with mouse events: two bumps to the right in one stroke, as people write it."""
    box = pg.locator("#pad").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    points = [at(0.5 + 0.17 * math.sin(a), 0.33 - 0.14 * math.cos(a)) for a in np.linspace(-1.9, 3.0, 24)]
    points += [at(0.5 + 0.19 * math.sin(a), 0.65 - 0.17 * math.cos(a)) for a in np.linspace(0.0, 4.4, 28)]
    pg.mouse.move(*points[0])
    pg.mouse.down()
    for x, y in points[1:]:
        pg.mouse.move(x, y)
    pg.mouse.up()


def draw_and_time(pg: Any, timeout_ms: float = 30_000) -> tuple[float, str]:
    """Draw a 3 on a freshly loaded Classify page; (seconds from pen-up to the painted heat-map, the label shown)."""
    draw_three(pg)
    started = time.monotonic()
    pg.wait_for_function(HEAT_PAINTED, timeout=timeout_ms)
    elapsed = time.monotonic() - started
    return elapsed, pg.locator("#results .pred .label").first.inner_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the web app (default: %(default)s)")
    parser.add_argument("--key", required=True, help="an API key with the classify scope (var/api-key after `up`)")
    parser.add_argument("--runs", type=int, default=5, help="drawings, each on a reloaded page (default: %(default)s)")
    parser.add_argument("--chromium", default=os.environ.get("INFERQ_TEST_CHROMIUM") or shutil.which("chromium"))
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no chromium found: apt-get install chromium, or pass --chromium PATH")
    from playwright.sync_api import sync_playwright

    times: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        pg = browser.new_context(base_url=args.url, viewport={"width": 1200, "height": 900}).new_page()
        pg.goto("/signin")
        pg.get_by_label("API key").fill(args.key)
        pg.get_by_role("button", name="Sign in").click()
        pg.wait_for_url("**/classify")
        for run in range(args.runs):
            if run:
                pg.reload()
            elapsed, label = draw_and_time(pg)
            times.append(elapsed)
            print(f"drawing {run + 1}: label {label!r}, heat-map painted {elapsed:.3f} s after the pen lifted")
        browser.close()
    print(f"median {statistics.median(times):.3f} s, max {max(times):.3f} s over {len(times)} drawings")
    if args.json:
        print(json.dumps({"seconds_median": statistics.median(times), "seconds_max": max(times), "runs": len(times)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
