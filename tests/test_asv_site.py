"""The published asv site (docs/asv) renders without the internet (issue 34): its JavaScript
and CSS are vendored by the publish step, and headless Chromium, whose every host name but
127.0.0.1 resolves to nothing, draws its index and graphs from a local HTTP server.

Chromium is Debian's `chromium`, installed here where missing and possible (root with
apt-get, as on the CI host); elsewhere the browser tests are skipped with the reason. No
engine: only results/ and docs/.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench_pause import asv_site, browser
from bench_pause.scenario import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "asv"
RESULTS = ROOT / "results" / "asv"
ERROR = "continental origin of swallow"  # asv's error.html: a dependency failed to load
# The classes whose graph pages must draw (issue 34): both backends and the release history.
CLASSES = ("pause.Offline", "pause.Http", "history.History")
TICK = re.compile(r">([^<]*)</div>")


def _ticks(dom: str, axis: str) -> list[str]:
    """The tick labels flot wrote on its ``axis`` ('x' or 'y'): there only once it drew."""
    found = re.search(rf'<div class="flot-{axis}-axis[^>]*>((?:<div class="flot-tick-label[^>]*>[^<]*</div>)*)', dom)
    return TICK.findall(found.group(1)) if found else []


def _template() -> str:
    import asv
    return (Path(asv.__file__).parent / "www" / "index.html").read_text()


def test_vendored_files_are_the_recorded_ones() -> None:
    files = asv_site.vendored()
    assert sorted(p.name for p in asv_site.VENDOR.iterdir()) == sorted([asv_site.MANIFEST.name,
                                                                       *(f.file for f in files)])
    for f in files:
        assert hashlib.sha256((asv_site.VENDOR / f.file).read_bytes()).hexdigest() == f.sha256, f.file


def test_every_dependency_of_asvs_template_is_vendored() -> None:
    """An asv whose template names another CDN file fails here, not on an offline reader."""
    template = _template()
    local = asv_site.localize(template, asv_site.vendored())
    assert "https://cdn" not in local and "code.jquery.com" not in local
    for f in asv_site.vendored():
        assert f.replaces in template
        assert f'src="vendor/{f.file}"' in local or f'href="vendor/{f.file}"' in local
    assert asv_site.localize(local, asv_site.vendored()) == local  # a second publish changes nothing


def test_a_dependency_not_vendored_is_refused() -> None:
    page = _template().replace("</head>", '<script src="https://cdn.example/new-dep.min.js"></script></head>')
    with pytest.raises(ScenarioError, match="new-dep.min.js"):
        asv_site.localize(page, asv_site.vendored())
    feed = '<link rel="alternate" type="application/atom+xml" href="https://example.org/feed.xml"/>'
    assert asv_site.localize(feed, []) == feed  # a link that is no stylesheet loads nothing


def test_publish_writes_the_committed_site(tmp_path: Path) -> None:
    """`bench-pause asv-publish` on the committed results makes docs/asv's pages, vendored:
    the committed site is what the publish step makes (a plain `asv publish` is not)."""
    conf = {"version": 1, "project": "bench-pause", "project_url": "README.md", "repo": str(ROOT),
            "branches": ["main"], "results_dir": str(RESULTS), "html_dir": str(tmp_path / "html")}
    (tmp_path / "asv.conf.json").write_text(json.dumps(conf))
    cmd = [sys.executable, "-m", "bench_pause", "asv-publish", "--config", str(tmp_path / "asv.conf.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    html = tmp_path / "html"
    assert (html / "index.html").read_text() == (SITE / "index.html").read_text()
    for f in asv_site.vendored():
        assert (html / "vendor" / f.file).read_bytes() == (SITE / "vendor" / f.file).read_bytes()


def _install_chromium() -> str:
    """Install Debian's chromium; what went wrong, or '' once it is on PATH."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root, or no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    said = ""
    for cmd in (install, ["apt-get", "update", "-q"], install):  # a stale package list: update, then again
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd)} took over 900 s"
        said = r.stderr.strip()[-500:]
        if cmd[1] == "install" and r.returncode == 0 and browser.find():
            return ""
    return f"apt-get install chromium failed: {said}"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = browser.find()
    if found is None:
        why = _install_chromium()
        found = browser.find()
        if found is None:
            pytest.skip(f"no Chromium on PATH ({', '.join(browser.NAMES)}) and none could be installed: {why}")
    return found


@pytest.fixture(scope="module")
def site_url():
    with browser.serve(SITE) as url:
        yield url


def _page(chromium: str, site_url: str, fragment: str = "") -> str:
    dom = browser.dom(chromium, f"{site_url}index.html{'#' + fragment if fragment else ''}")
    assert ERROR not in dom, f"{fragment or 'index'}: a JavaScript dependency failed to load"
    return dom


@pytest.mark.timeout(1200)  # the first browser test may install Chromium
def test_the_index_lists_every_benchmark_with_stored_results(chromium: str, site_url: str) -> None:
    dom = _page(chromium, site_url)
    names = {name for _, name in asv_site.stored(RESULTS)}
    assert names
    assert sorted(n for n in names if f'href="#{n}"' not in dom) == []


def _measured_releases(machine: str, bench: str) -> list[str]:
    """The releases a machine's stored history has a value of ``bench`` for, in order."""
    bench_version = json.loads((RESULTS / "benchmarks.json").read_text())[bench]["version"]
    releases: dict[str, None] = {}
    for f in (RESULTS / machine).glob("*.json"):
        data = json.loads(f.read_text())
        if f.name == "machine.json" or bench not in data["results"]:
            continue
        row = dict(zip(data["result_columns"], data["results"][bench]))
        if row["version"] != bench_version:
            continue
        for combo, value in zip(itertools.product(*row["params"]), row["result"]):
            if value is not None and value == value:
                releases[combo[0].strip("'")] = None
    return list(releases)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("cls", CLASSES)
def test_graph_pages_draw_on_every_machine(chromium: str, site_url: str, cls: str) -> None:
    """For each machine with stored results of ``cls``, its first benchmark's graph page
    draws a plot (flot's canvas, and the values on its y axis); a history's x axis shows
    exactly the releases measured on that machine."""
    stored = asv_site.stored(RESULTS)
    firsts = {}
    for machine, name in stored:
        if name.startswith(cls + "."):
            firsts.setdefault(machine, name)
    if not firsts:
        machines = sorted({m for m, _ in stored})
        pytest.skip(f"no machine ({', '.join(machines)}) has stored {cls} results at its benchmark's "
                    f"current version: no graph to draw (issue 31)")
    for machine, name in firsts.items():
        history = cls.startswith("history.")
        dom = _page(chromium, site_url, f"{name}?machine={machine}" + ("&x-axis=release" if history else ""))
        assert 'id="graph-display"' in dom and '<canvas class="flot-base"' in dom, (machine, name)
        assert _ticks(dom, "y"), (machine, name)
        if history:
            assert _ticks(dom, "x") == _measured_releases(machine, name), (machine, name)


# asv's graph over a string parameter (x-axis: mode, pause point): one bar series per
# line of the legend, on flot's categories axis, ordered side by side by orderBars.
BARS_PAGE = """<html><head>
<script src="jquery.min.js"></script><script src="jquery.flot.js"></script>
<script src="jquery.flot.categories.js"></script><script src="jquery.flot.orderBars.js"></script>
</head><body><div id="plot" style="width:600px;height:300px"></div><pre id="x"></pre><script>
var graphs = [];
for (var k = 0; k < SERIES; k++) graphs.push({data: [["keep", 1], ["abort", 2], ["wait", 3]], bars: {order: k}});
var plot = $.plot("#plot", graphs, {xaxis: {mode: "categories", tickLength: 0},
    series: {bars: {show: true, barWidth: 0.6 / graphs.length, align: "center"}}});
$("#x").text(JSON.stringify(plot.getData().map(function (s) {
    var xs = []; for (var i = 0; i < s.datapoints.points.length; i += s.datapoints.pointsize) xs.push(s.datapoints.points[i]);
    return xs; })));
</script></body></html>"""


@pytest.mark.parametrize("series", [1, 2, 3, 4])
def test_bars_over_a_string_parameter_have_positions(chromium: str, tmp_path: Path, series: int) -> None:
    """The vendored orderBars is patched (vendored.json says why): upstream's reads the
    category labels as numbers, so two or more series got NaN positions and asv's graph
    of a string parameter drew axes and a legend but no bar."""
    for f in asv_site.vendored():
        shutil.copy(asv_site.VENDOR / f.file, tmp_path / f.file)
    (tmp_path / "bars.html").write_text(BARS_PAGE.replace("SERIES", str(series)))
    with browser.serve(tmp_path) as url:
        found = re.search(r'<pre id="x">([^<]*)</pre>', browser.dom(chromium, f"{url}bars.html"))
    assert found, "the page's script did not run"
    xs = json.loads(found.group(1))
    assert len(xs) == series and all(len(x) == 3 and None not in x for x in xs), xs
    for category in range(3):  # side by side around their category, in legend order
        at = [x[category] for x in xs]
        assert at == sorted(at) and all(abs(v - category) < 0.5 for v in at), at
        assert len(set(at)) == series


def test_no_browser_outlives_a_call(chromium: str, site_url: str) -> None:
    browser.dom(chromium, f"{site_url}error.html", budget_ms=500)
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("bench-pause-chromium-" in part for part in p.info["cmdline"] or []):
            left.append(p.info["pid"])
    assert left == []


def test_a_site_that_needs_the_internet_shows_the_error(chromium: str, tmp_path: Path) -> None:
    """The browser here has no internet: asv's stock page, CDN links and all, fails as it
    does on an offline cluster (so the checks above cannot pass by reaching a CDN)."""
    for f in SITE.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "index.html").write_text(_template())
    with browser.serve(tmp_path) as url:
        assert ERROR in browser.dom(chromium, f"{url}index.html")
