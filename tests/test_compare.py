"""`compare` flags a known injected slowdown and does not flag two runs of one version.

The slowdown is real engine time plus the version adapter's test hook
(BENCH_PAUSE_INJECT_PAUSE_DELAY_S), which delays every pause call; the runs are measured
on the shared real engine.
"""

from __future__ import annotations

import random

import pytest

from bench_pause import compare, meta
from bench_pause.backends.base import Timeouts
from bench_pause.measure import measure
from bench_pause.results import META, RunDir, write_json
from bench_pause.scenario import Scenario

from .conftest import bench_pause

pytestmark = pytest.mark.engine
REPEATS = 8


def _scenarios() -> list[Scenario]:
    return [Scenario("offline", 1, mode, "tokens:5", 32, 1, 0.1, True, repeat=r)
            for r in range(REPEATS) for mode in ("keep", "abort")]


def _dirs(tmp_path, names):
    out = {}
    for name in names:
        (tmp_path / name).mkdir()
        out[name] = RunDir(tmp_path / name)
        write_json(tmp_path / name / META, {**meta.environment(), "started": meta.now()})
    return out


@pytest.fixture(scope="module")
def runs(offline_session, loop, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    dirs = _dirs(tmp, ["base", "same", "slow"])
    rng = random.Random(0)
    extra = {"warmup": False, "engine": 0, "pause_index": 0}
    # base and same alternate, so slow drift of the host cannot tell them apart.
    for sc in _scenarios():
        for name in ("base", "same"):
            dirs[name].append(loop.run_until_complete(measure(offline_session, sc, Timeouts(), rng)), extra)
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_PAUSE_INJECT_PAUSE_DELAY_S", "0.01")
    try:
        for sc in _scenarios():
            dirs["slow"].append(loop.run_until_complete(measure(offline_session, sc, Timeouts(), rng)), extra)
    finally:
        mp.undo()
    return tmp


def test_injected_slowdown_is_flagged(runs):
    c = compare.compare(runs / "base", runs / "slow")
    regressed = c.regressions
    flagged = set(zip(regressed["mode"], regressed["metric"]))
    assert ("keep", "pause_api_s") in flagged and ("abort", "pause_api_s") in flagged
    row = c.cells[(c.cells["mode"] == "keep") & (c.cells["metric"] == "pause_api_s")].iloc[0]
    assert row["new_median"] - row["base_median"] > 0.008 and row["p_value"] < 0.01
    assert c.regressed


def test_same_version_is_not_flagged(runs):
    c = compare.compare(runs / "base", runs / "same")
    assert not c.regressed, c.regressions
    assert not len(c.missing) and not len(c.contract)


def test_compare_command_exit_status_and_outputs(runs, tmp_path):
    def cli(*args):
        return bench_pause("compare", *args, timeout=120)
    slow = cli(runs / "base", runs / "slow", "--md", tmp_path / "c.md", "--plot", tmp_path / "plot")
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "REGRESSION" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "plot" / "versions.png").stat().st_size > 10_000
    same = cli(runs / "base", runs / "same")
    assert same.returncode == 0, same.stdout + same.stderr


def test_missing_cells_and_contract_changes_are_listed(runs, tmp_path):
    import pandas as pd
    import shutil
    shutil.copytree(runs / "same", tmp_path / "edited")
    r = pd.read_parquet(tmp_path / "edited" / "runs.parquet")
    r = r[r["mode"] != "abort"].copy()
    r.loc[r.index[0], "leak_tokens"] = 2
    r.loc[r.index[0], "ok"] = False
    r.to_parquet(tmp_path / "edited" / "runs.parquet")
    c = compare.compare(runs / "base", tmp_path / "edited")
    assert any("abort" in m for m in c.missing)
    assert len(c.contract) == 1 and c.regressed
