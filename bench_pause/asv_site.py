"""The published asv site (docs/asv), made to work without the internet.

asv's stock template loads jQuery, flot, bootstrap, md5 and the table sorter from public
CDNs; on a host without internet access (this suite's users run offline GPU clusters) the
site shows only asv's "continental origin of swallow" error page. `publish` runs
`asv publish` and then `vendor`, which copies the files listed in asv_vendor/vendored.json
(taken once from the package registry, committed, so publishing needs no network) into the
site's vendor/ and points its pages at them. A republish keeps it: asv rewrites the pages
from its template, and this step rewrites them again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_pause.scenario import ScenarioError

VENDOR = Path(__file__).with_name("asv_vendor")
MANIFEST = VENDOR / "vendored.json"
SITE_DIR = "vendor"  # under the published site
# What the browser would fetch from elsewhere: a script or a stylesheet by absolute URL.
_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.I)
_EXTERNAL = re.compile(r"""\b(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)
# Attributes that only make sense for the CDN copy: its hash (flot's vendored files are the
# unminified build, another hash), its CORS mode and referrer policy.
_CDN_ONLY = re.compile(r"""\s+(?:integrity|crossorigin|referrerpolicy)\s*=\s*["'][^"']*["']""", re.I)


@dataclass(frozen=True)
class Vendored:
    """One file of asv_vendor/: the template URL it ``replaces``, and where it came from
    (package, version, source, the ``member`` path in the source, its sha256)."""

    replaces: str
    file: str
    package: str
    version: str
    source: str
    member: str
    license: str
    sha256: str
    tarball_integrity: str | None = None  # the registry's hash of the package tarball
    why: str | None = None  # where the file differs from what the template loads


def vendored() -> list[Vendored]:
    return [Vendored(**entry) for entry in json.loads(MANIFEST.read_text())]


def _external(tag: str) -> bool:
    """A tag that makes the browser fetch from another host (a link that is no stylesheet,
    such as asv's feed, is no dependency)."""
    if not _EXTERNAL.search(tag):
        return False
    return not tag.lower().startswith("<link") or "stylesheet" in tag.lower()


def localize(html: str, files: list[Vendored]) -> str:
    """``html`` with every script and stylesheet of ``files`` loaded from the site's
    vendor/. Raises ScenarioError where a page still loads one from elsewhere (a newer
    asv template naming a dependency that is not vendored yet), rather than publish a
    site that breaks offline."""
    by_url = {f.replaces: f for f in files}

    def rewrite(match: re.Match) -> str:
        tag = match.group(0)
        for url, f in by_url.items():
            if f'"{url}"' in tag:
                return _CDN_ONLY.sub("", tag.replace(f'"{url}"', f'"{SITE_DIR}/{f.file}"'))
        return tag

    out = _TAG.sub(rewrite, html)
    left = [t for t in _TAG.findall(out) if _external(t)]
    if left:
        raise ScenarioError(f"the asv site loads files that {MANIFEST.name} does not vendor: {' '.join(left)}")
    return out


def vendor(site: Path) -> None:
    """Copy the vendored files into ``site``/vendor/ and point every page of ``site`` at
    them; running it again changes nothing."""
    site = Path(site)
    files = vendored()
    (site / SITE_DIR).mkdir(exist_ok=True)
    for f in files:
        shutil.copyfile(VENDOR / f.file, site / SITE_DIR / f.file)
    for page in sorted(site.glob("*.html")):
        page.write_text(localize(page.read_text(), files))


def html_dir(config: Path) -> Path:
    """The site directory of an asv configuration, as asv itself reads it (comments allowed)."""
    from asv.config import Config
    return Path(Config.load(str(config)).html_dir)


def publish(config: Path) -> Path:
    """`asv publish` with ``config``, then `vendor`: the one way this project publishes
    docs/asv (`make asv`, `bench-pause asv-publish`)."""
    r = subprocess.run([sys.executable, "-m", "asv", "--config", str(config), "publish"])
    if r.returncode:
        raise ScenarioError(f"asv publish --config {config} failed (exit {r.returncode})")
    site = html_dir(config)
    vendor(site)
    return site


def stored(results: Path) -> list[tuple[str, str]]:
    """(machine, benchmark) for every result under ``results`` (asv's results_dir) at its
    benchmark's current version: the ones `asv publish` must draw (an older version it
    drops, rightly)."""
    bench = json.loads((results / "benchmarks.json").read_text())
    found = set()
    for f in results.glob("*/*.json"):
        if f.name == "machine.json":
            continue
        data = json.loads(f.read_text())
        col = data["result_columns"].index("version")
        for name, value in data["results"].items():
            if name in bench and value[col] == bench[name]["version"]:
                found.add((data["params"]["machine"], name))
    return sorted(found)
