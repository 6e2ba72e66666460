"""`compare` on real measurements: a known injected slowdown is found, one version against
itself is not flagged, and the command's exit status, Markdown and plot follow.

Each side is four "runs" of pauses measured in turn on the shared real engine (base, same
and slow interleaved, so slow drift of the host cannot tell them apart); the slow side has
the version adapter's test hook adding 50 ms before every pause and every resume call. The
requests are long (160 tokens) so the delayed pause still finds the first request running: at
32 tokens a fast host (1.3 ms a token) finished it inside the 50 ms and every slowed pause
missed, leaving the slow side without cells (CI, stop 23). They share one engine, so this checks the machinery on real traces; the calibration across real
engine runs is `interleave`'s, committed under results/ (README).
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bench_pause import compare, meta, vllm_compat
from bench_pause.results import META, RunDir, write_json
from bench_pause.scenario import Scenario

from .conftest import bench_pause

pytestmark = pytest.mark.engine
RUNS, REPEATS, DELAY, MAX_TOKENS = 4, 3, 0.05, 160


def _scenarios() -> list[Scenario]:
    return [Scenario("offline", 1, mode, "tokens:5", MAX_TOKENS, 1, 0.1, True, repeat=r)
            for r in range(REPEATS) for mode in ("keep", "abort")]


@pytest.fixture(scope="module")
def sides(offline_session, measure_on, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    extra = {"warmup": False, "engine": 0, "pause_index": 0}
    for run in range(RUNS):
        for name in ("base", "same", "slow"):
            mp = pytest.MonkeyPatch()
            if name == "slow":
                mp.setenv(vllm_compat.INJECT_ENV, str(DELAY))
                mp.setenv(vllm_compat.INJECT_RESUME_ENV, str(DELAY))
            try:
                d = tmp / name / f"r{run + 1:02d}"
                d.mkdir(parents=True)
                write_json(d / META, {**meta.environment(), "started": meta.now()})
                rd = RunDir(d)
                for sc in _scenarios():
                    m = measure_on(offline_session, sc)
                    assert not m.metrics["missed"], f"{name} r{run + 1}: every pause missed its request: {sc}"
                    rd.append(m, extra)
                rd.consolidate()
            finally:
                mp.undo()
    (tmp / compare.PLAN).write_text(json.dumps({"variants": [{"name": n} for n in ("base", "same", "slow")]}))
    return tmp


def test_injected_slowdown_is_flagged_with_its_size(sides):
    base, _, slow = compare.comparison_sides(sides)
    assert (base.n, slow.n) == (RUNS, RUNS) and slow.metas[0]["injected_resume_delay_s"] == DELAY
    c = compare.compare(base, slow)
    t = c.tests[c.tests["level"] == "group"].set_index(["mode", "metric"])
    for key in [("keep", "pause_api_s"), ("abort", "pause_api_s"), ("keep", "resume_ttft_s")]:
        row = t.loc[key]
        assert row["verdict"] == "regression", (key, row.to_dict())
        assert row["ci_low"] < DELAY * 1.5 and row["ci_high"] > DELAY * 0.6, (key, row.to_dict())
    assert c.regressed


def test_same_version_is_not_flagged(sides):
    base, same, _ = compare.comparison_sides(sides)
    c = compare.compare(base, same)
    assert not c.regressed, c.regressions
    assert not len(c.missing) and not len(c.breaks)


def test_compare_command_exit_status_and_outputs(sides, tmp_path):
    slow = bench_pause("compare", sides, "--md", tmp_path / "c.md", "--plot", tmp_path / "plot", timeout=120)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    text = (tmp_path / "c.md").read_text()
    assert "## slow" in text and "**regression**" in text and "## same" in text
    assert (tmp_path / "plot" / "versions.png").stat().st_size > 10_000
    same = bench_pause("compare", sides / "base", sides / "same", timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr
    improved = bench_pause("compare", sides, "--base", "slow", timeout=120)  # faster is never a failure
    assert improved.returncode == 0 and "improvement" in improved.stdout, improved.stdout + improved.stderr


def test_missing_cells_and_contract_breaks_are_listed(sides, tmp_path):
    for r in range(1, RUNS + 1):
        shutil.copytree(sides / "same" / f"r{r:02d}", tmp_path / "edited" / f"r{r:02d}")
        f = tmp_path / "edited" / f"r{r:02d}" / "runs.parquet"
        runs = pd.read_parquet(f)
        runs = runs[runs["mode"] != "abort"].copy()
        if r == 2:
            runs.loc[runs.index[0], ["leak_tokens", "ok"]] = [2, False]
        runs.to_parquet(f)
    c = compare.compare(compare.load_side(sorted((sides / "base").iterdir())),
                        compare.load_side(sorted((tmp_path / "edited").iterdir())))
    assert any("abort" in m for m in c.missing)
    assert list(c.breaks["leak_new"]) == [2] and c.regressed
