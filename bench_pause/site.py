"""The generated pages of docs/, rebuilt from results/ by one command (`bench-pause docs`).

Which runs each page is made of is content, not code: it lives in docs/pages.json beside the
pages. Rebuilding them all from the committed runs is how the docs check (tests/test_docs.py)
proves that every number on a generated page recomputes from results/: a page typed by hand,
or one left behind after its runs changed, differs from its rebuild.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench_pause.scenario import ScenarioError

PAGES = "pages.json"


@dataclass(frozen=True)
class Page:
    """One generated page, written to ``path``: a report of run directories (``runs``), a
    release history (``history``: a directory made by `bench-pause history`), or a
    comparison (``compare``: BASE NEW [NEW...], as `bench-pause compare` takes them)."""

    path: str  # under docs/: a report's index.md, a history's directory
    runs: list[str] = field(default_factory=list)  # relative to the repository root
    history: str | None = None
    compare: list[str] = field(default_factory=list)
    scale: list[str] = field(default_factory=list)  # runs the DP model reads its inputs and checks from
    title: str = "bench-pause results"
    include: str | None = None  # a hand-written Markdown file placed after the title
    answers: str | None = None  # the results directory the table of answers is computed from
    # A history that goes on from another (its page's path): each page links the other and
    # shows the release they share measured in both.
    follows: str | None = None


def pages(docs: Path) -> list[Page]:
    path = Path(docs) / PAGES
    if not path.exists():
        raise ScenarioError(f"{path}: no such file (it lists the runs each generated page is made of)")
    listed = [Page(**p) for p in json.loads(path.read_text())]
    histories = {p.path for p in listed if p.history}
    for p in listed:
        if p.follows is not None and (not p.history or p.follows not in histories):
            raise ScenarioError(f"{path}: {p.path} follows {p.follows!r}, which is not a history page of it")
    return listed


def build(docs: Path, root: Path, out: Path | None = None, say=print) -> list[Path]:
    """Rebuild every page of ``docs``/pages.json from the runs under ``root`` (the repository)
    into ``out`` (default: ``docs`` itself). Paths in pages.json are relative to ``root``."""
    from bench_pause import compare, history, report, results, scale
    out = Path(out or docs)
    root = Path(root)
    written = []
    listed = pages(docs)
    by_path = {p.path: p for p in listed}
    for page in listed:
        if page.history:
            chain = [by_path[page.follows]] if page.follows else []  # pages() checked it names a history
            chain += [p for p in listed if p.follows == page.path]
            others = [(os.path.relpath(Path(p.path) / "index.md", page.path), root / p.history) for p in chain]
            written += history.publish(root / page.history, out / page.path, chain=others)
        elif page.compare:
            sides = [compare.load_side(results.run_dirs(root / p)) for p in page.compare]
            th = compare.Thresholds()
            written.append(compare.write_markdown([compare.compare(sides[0], new, th) for new in sides[1:]], th,
                                                  out / page.path))
        else:
            listed_runs = page.scale or page.runs
            dirs = [d for r in listed_runs for d in results.run_dirs(root / r)]
            missing = [r for r in listed_runs if not results.run_dirs(root / r)]
            if missing:
                raise ScenarioError(f"{PAGES}: {page.path} names runs that hold no run directory: {', '.join(missing)}")
            target = out / page.path
            if page.scale:
                written.append(scale.write(dirs, target, title=page.title))
            else:
                written.append(report.write(dirs, target.parent, title=page.title,
                                            include=root / page.include if page.include else None,
                                            answers=root / page.answers if page.answers else None,
                                            name=target.name))
        say(f"wrote {written[-1]}")
    return written
