"""The docs check: the generated pages recompute from the committed runs, and every link and
figure in README.md and docs/ resolves (issue 31). No engine: only results/ and docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench_pause import answers, asv_site, report, site

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _headings(page: Path) -> set[str]:
    return {answers.anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link or image of ``page`` whose file, or whose anchor in a Markdown
    file, does not exist."""
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in _headings(dest):
            bad.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return bad


def test_broken_links_are_found(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# The B page\n")
    page.write_text("[ok](b.md#the-b-page) [gone](c.md) [no anchor](b.md#nope) [web](https://x.org/y)\n")
    assert broken_links(page, tmp_path) == ["a.md: c.md (no such file)", "a.md: b.md#nope (no such heading)"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_figures_resolve(page: Path) -> None:
    assert broken_links(page) == []


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Every generated page rebuilt from results/ at the same place relative to it, so its
    links read the same."""
    root = tmp_path_factory.mktemp("site")
    (root / "results").symlink_to(ROOT / "results")
    (root / "docs").mkdir()
    (root / "docs" / "asv").symlink_to(DOCS / "asv")  # the report links the asv site where it exists
    shot = root / "docs" / report.ASV_SCREENSHOT  # and shows its screenshot
    shot.parent.mkdir(parents=True)
    shot.symlink_to(DOCS / report.ASV_SCREENSHOT)
    for page in site.pages(DOCS):
        if page.include:
            (root / page.include).parent.mkdir(parents=True, exist_ok=True)
            (root / page.include).symlink_to(ROOT / page.include)
    return root / "docs", site.build(DOCS, root, root / "docs", say=lambda _: None)


def test_generated_pages_recompute_from_results(rebuilt: tuple[Path, list[Path]]) -> None:
    out, written = rebuilt
    pages = [p for p in written if p.suffix == ".md"]
    assert pages
    stale = []
    for page in pages:
        committed = DOCS / page.relative_to(out)
        if not committed.exists() or committed.read_text() != page.read_text():
            stale.append(str(committed.relative_to(ROOT)))
    assert stale == [], "run `bench-pause docs` and commit: these pages differ from their rebuild"


def test_answers_open_the_index(rebuilt: tuple[Path, list[Path]]) -> None:
    index = (DOCS / "index.md").read_text()
    head = index.split("\n## ", 2)[1]
    assert head.startswith("Answers")
    for q in answers.QUESTIONS:
        assert q.text in head
    assert "not measured yet" not in head


RUN = "cpu-v0.32.0-weight-sync-tiny"  # a committed run recorded from a real engine


def test_quote_fills_numbers_from_the_runs() -> None:
    import pandas as pd
    from bench_pause import quote, results
    runs = results.measured(pd.read_parquet(ROOT / "results" / RUN / "runs.parquet"))
    keep = runs[runs["mode"] == "keep"]
    text = quote.fill(f"{{{{p50 pause_api_s @ {RUN} mode=keep}}}} ms over {{{{n ok @ {RUN} mode=keep}}}}",
                      ROOT / "results")
    assert text == f"{keep['pause_api_s'].median() * 1e3:.1f} ms over {len(keep)}"
    both = runs[runs["mode"].isin(["keep", "abort"])]
    assert 0 < len(keep) < len(both) < len(runs)  # the run has wait cycles too
    assert quote.fill(f"{{{{max quiesce_s @ {RUN} mode=keep|abort}}}}/{{{{n ok @ {RUN} mode=keep|abort}}}}",
                      ROOT / "results") == f"{both['quiesce_s'].max() * 1e3:.1f}/{len(both)}"
    assert quote.fill(f"{{{{p50 pause_api_s @ {RUN} mode=keep digits=3}}}}",
                      ROOT / "results") == f"{keep['pause_api_s'].median() * 1e3:.3f}"


def test_quote_counts_engine_runs() -> None:
    """`runs` counts run directories, not pauses: the history's releases have one per round."""
    from bench_pause import quote, results
    where = "gpu-h100-history-offline-qwen3-8b-since-0.26/0.34.0,gpu-h100-history-offline-qwen3-8b-since-0.26/0.26.0"
    dirs = [d for part in where.split(",") for d in results.run_dirs(ROOT / "results" / part)]
    assert len(dirs) >= 3
    assert quote.fill(f"{{{{runs ok @ {where}}}}}", ROOT / "results") == str(len(dirs))
    assert quote.fill(f"{{{{runs ok @ {where} mode=wait}}}}", ROOT / "results") == str(len(dirs))


@pytest.mark.parametrize("placeholder, says", [
    ("{{p50 pause_api_s @ no-such-run}}", "no run directory"),
    (f"{{{{p50 no_such_metric @ {RUN}}}}}", "not a column"),
    (f"{{{{p50 pause_api_s @ {RUN} mode=nope}}}}", "no pause matches"),
    (f"{{{{p99 pause_api_s @ {RUN}}}}}", "use one of"),
])
def test_a_quote_that_names_nothing_fails(placeholder: str, says: str) -> None:
    from bench_pause import quote
    from bench_pause.scenario import ScenarioError
    with pytest.raises(ScenarioError, match=says):
        quote.fill(placeholder, ROOT / "results")


def test_the_asv_site_draws_every_stored_benchmark() -> None:
    graphs = DOCS / "asv" / "graphs"
    drawn = {(next(x.name.removeprefix("machine-") for x in p.parents if x.name.startswith("machine-")), p.stem)
             for p in graphs.rglob("*.json") if "summary" not in p.parts}
    stored = asv_site.stored(ROOT / "results" / "asv")
    assert stored, "no stored asv results"
    assert [s for s in stored if s not in drawn] == [], "run `bench-pause asv-publish` and commit docs/asv"
    assert not [p for p in graphs.rglob("*") if "null" in p.name], "a machine without arch/cpu/os/ram"


def test_the_asv_site_calls_no_history_a_regression() -> None:
    # A release history is judged by `compare` (its page's verdicts); asv's commit axis is
    # bench-pause's, and tools/asv-history-newest.py keeps one reading of each history.
    import json
    listed = json.loads((DOCS / "asv" / "regressions.json").read_text())["regressions"]
    assert [r[0] for r in listed if r[0].startswith("history.")] == []
