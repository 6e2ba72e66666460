#!/usr/bin/env python3
"""A PNG of one page of the published asv site (docs/asv) as headless Chromium shows it
with no network but this host: what docs/index.md shows as the site's look. PAGE is what
follows `index.html#` in the site's address bar (default: report.ASV_SCREENSHOT_PAGE, the
page docs/index.md names).

    .venv/bin/python tools/asv-screenshot.py [PAGE [OUT]]
    .venv/bin/python tools/asv-screenshot.py 'pause.Http.track_pause_api_s?machine=gpu-h100&x-axis=mode'
"""
import sys
from pathlib import Path

from bench_pause import browser, report

if len(sys.argv) > 3:
    sys.exit(__doc__)
page = sys.argv[1] if len(sys.argv) > 1 else report.ASV_SCREENSHOT_PAGE
out = Path(sys.argv[2] if len(sys.argv) == 3 else Path("docs") / report.ASV_SCREENSHOT)
binary = browser.find()
if binary is None:
    sys.exit(f"no Chromium on PATH (looked for {', '.join(browser.NAMES)}): apt-get install chromium")
with browser.serve(Path("docs/asv")) as url:
    print(browser.screenshot(binary, f"{url}index.html#{page}", out))
