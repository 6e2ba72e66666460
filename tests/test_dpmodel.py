"""The DP model (issue 33): hand-built parts with exact answers, and the committed runs it
reads its inputs and checks from. Pure: no engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_pause import dpinputs, dpmodel
from bench_pause.dpmodel import V0_26, NEWER, Interconnect, Parts

ROOT = Path(__file__).resolve().parents[1]
NO_NET = Interconnect(host_hop_s=0.0, net_hop_s=0.0)
MS = 1e-3


def parts(**kw) -> Parts:
    base = dict(step_s=5 * MS, dummy_s=5 * MS, spread=0.0, pause_s=30 * MS, resume_s=10 * MS, quiesce_s=10 * MS,
                coordinated=True)
    return Parts(**{**base, **kw})


def test_idle_pause_is_a_whole_window_in_0_26_and_one_forward_after() -> None:
    net = Interconnect(host_hop_s=0.1 * MS, net_hop_s=1 * MS)
    p = dpmodel.predict(parts(pause_s=0.0), 2, V0_26, net, landing=0)
    assert p.pause.p50 == pytest.approx(32 * 5 * MS + 2 * 0.1 * MS)  # 160 ms + the all-reduce
    assert p.pause.p50 == p.pause.p90 == p.pause.max
    assert dpmodel.predict(parts(pause_s=0.0), 2, NEWER, net, landing=0).pause.p50 == pytest.approx(5 * MS + 0.2 * MS)


def test_uniform_landing_quantiles_are_fractions_of_the_window() -> None:
    p = dpmodel.predict(parts(), 1, V0_26, NO_NET, landing=None).pause
    assert (p.p50, p.p90, p.max) == pytest.approx((30 * MS + 16 * 5 * MS, 30 * MS + 28.8 * 5 * MS, 30 * MS + 32 * 5 * MS))
    assert dpmodel.predict(parts(), 1, NEWER, NO_NET, landing=None).pause.max == pytest.approx(30 * MS + 16 * 5 * MS)


def test_fixed_landing_counts_steps_to_the_next_all_reduce() -> None:
    assert dpmodel.dummy_steps(52, V0_26) == 12
    assert dpmodel.dummy_steps(64, V0_26) == 0
    assert dpmodel.dummy_steps(52, NEWER) == 12  # 64 is also a multiple of 16
    assert dpmodel.dummy_steps(50, NEWER) == 14
    assert dpmodel.predict(parts(), 2, V0_26, NO_NET, landing=52).pause.p90 == pytest.approx(30 * MS + 12 * 5 * MS)


def test_dense_ranks_pause_on_their_own() -> None:
    p = dpmodel.predict(parts(coordinated=False, spread=0.1), 3, V0_26, NO_NET, landing=0)
    assert p.pause.p50 == pytest.approx(30 * MS * (1 + 0.1 * 2 / 4))  # the slowest of 3, no window


def test_slowest_rank_and_all_reduce() -> None:
    assert dpmodel.slowest(10.0, 0.2, 1) == 10.0
    assert dpmodel.slowest(10.0, 0.2, 3) == pytest.approx(11.0)  # U(8, 12): the largest of 3 averages 11
    net = Interconnect(host_hop_s=1.0, net_hop_s=10.0, ranks_per_node=8)
    assert [dpmodel.allreduce_s(n, net) for n in (1, 2, 8, 16)] == [0.0, 2.0, 14.0, 300.0]


def test_resume_waits_for_the_slowest_rank_and_gpu_idle_adds_up() -> None:
    p = dpmodel.predict(parts(spread=0.2), 3, V0_26, NO_NET, landing=0)
    assert p.resume_all.p50 == pytest.approx(10 * MS + 0.5 * MS)
    assert p.gpu_idle.p50 == pytest.approx(p.pause.p50 - 10 * MS + p.resume_all.p50)


def test_scaled_parts_grow_by_the_step() -> None:
    s = dpmodel.scaled(parts(step_s=2 * MS, dummy_s=1 * MS), 10)
    assert (s.step_s, s.dummy_s, s.pause_s, s.resume_s) == pytest.approx((20 * MS, 10 * MS, 48 * MS, 28 * MS))


def test_bad_dp_size_and_release_of_versions() -> None:
    with pytest.raises(ValueError):
        dpmodel.predict(parts(), 0, V0_26, NO_NET, landing=0)
    assert dpmodel.release_of("0.26.0") is V0_26
    assert dpmodel.release_of("0.32.0") is NEWER


GPU = ["gpu-h200-v0.26.0-dp1-qwen3-30b-a3b", "gpu-h200-v0.26.0-dp2-qwen3-30b-a3b", "gpu-h200-v0.26.0-dp2-qwen3-8b",
       "gpu-h200-v0.26.0-dp1-qwen3-8b"]


@pytest.fixture(scope="module")
def dirs() -> list[Path]:
    return [ROOT / "results" / name for name in GPU]


def test_checks_on_the_committed_runs_cite_their_runs(dirs: list[Path]) -> None:
    checks = dpinputs.checks(dirs)
    moe = checks[checks["moe"] & (checks["dp_size"] == 2) & (checks["cycle"] == "pause")]
    assert len(moe) and set(checks["verdict"]) <= {"input", "inside", "outside (above)", "outside (below)", "no prediction"}
    assert (checks.loc[checks["dp_size"] == 1, "verdict"] == "input").all()
    assert all("gpu-h200-v0.26.0-dp1-qwen3-30b-a3b" in s for s in moe["sources"])
    assert all("gpu-h200-v0.26.0-dp2-qwen3-8b" in s for s in moe["sources"])  # the dense idle pause


def test_the_dummy_forward_is_the_idle_window_less_a_dense_idle_pause(dirs: list[Path]) -> None:
    sub = dpinputs.subjects(dirs)[0]
    idle = dpinputs.predictions([sub], [2]).query("engine == 'idle' and release == @V0_26.name")
    df = dpinputs.load(dirs)
    moe_idle = df[df["moe"] & (df["cycle"] == "idle")]["pause_api_s"].median()
    assert idle["p50"].iloc[0] == pytest.approx(moe_idle, rel=0.01)  # the calibration recovers its own cell
