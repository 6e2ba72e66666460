"""Tables show tails, and a stall is listed, never averaged away: hand-built runs with
known exact answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench_pause import summary
from bench_pause.scenario import Scenario


def runs_of(values: list[float], metric: str = "resume_all_s", clear_cache: bool = True, warmup_first: bool = True,
            start: int = 0) -> pd.DataFrame:
    """One keep cell, one row per value of ``metric`` (the others 10 ms); the first a warm-up."""
    sc = Scenario("offline", 1, "keep", "tokens:50", 200, 8, 1.0, clear_cache).as_dict()
    rows = []
    for i, v in enumerate(values):
        row = {**sc, "repeat": i, "measurement": start + i, "warmup": warmup_first and i == 0, "engine": 0,
               "pause_index": i, "missed": False, "ok": True, "leak_tokens": 0, "preemptions": 8.0,
               "itl_median_s": 0.008}
        for m in summary.TIMING:
            row[m] = 0.010
        row[metric] = v
        rows.append(row)
    return pd.DataFrame(rows)


def test_cells_show_p50_p90_and_max_of_the_measured_pauses():
    # warm-up 0.9 s is left out; measured 10..100 ms
    runs = runs_of([0.9] + [i / 100 for i in range(1, 11)])
    table = summary.cells(runs)
    assert len(table) == 1
    r = table.iloc[0]
    assert r["n"] == 10
    assert r["resume_all_s_p50"] == pytest.approx(0.055)
    assert r["resume_all_s_p90"] == pytest.approx(0.091)  # numpy's linear interpolation
    assert r["resume_all_s_max"] == pytest.approx(0.100)
    header, body = summary.rows(table)
    assert body[0][header.index("resume→all ms")] == "55.0 / 91.0 / 100.0"


def test_a_stall_is_counted_and_listed_with_its_pause():
    # The others' p50 = 20 ms; 0.8 s is > 5 x that and > 100 ms beyond: a stall. 0.11 s is
    # > 5 x but only 90 ms beyond: not one. One row per pause, numbered from 1.
    runs = runs_of([0.01, 0.02, 0.02, 0.02, 0.11, 0.8, 0.02, 0.02], warmup_first=False)
    found = summary.stalls(runs)
    assert list(found["measurement"]) == [5]
    row = found.iloc[0]
    assert (row["resume_all_s"], row["resume_all_s_ref"], row["resume_all_s_stall"], row["pause"]) == (0.8, 0.02, True, 6)
    assert not row["pause_api_s_stall"]
    assert summary.cells(runs).iloc[0]["stalls"] == 1


def test_a_cell_of_two_pauses_can_show_a_stall():
    # A warm-up, then 0.97 s and 40 ms: each judged against the other, so the 0.97 s stalls
    # (its cell's own median, 0.505 s, would have hidden it).
    found = summary.stalls(runs_of([0.5, 0.97, 0.04]))
    assert list(found["resume_all_s"]) == [0.97] and list(found["resume_all_s_ref"]) == [0.04]
    assert summary.stalls(runs_of([0.5, 0.97])).empty  # one measured pause: nothing to judge it by


def test_stalls_are_judged_within_their_run():
    # The same cell in two runs: 0.3 s is a stall beside its own run's 20 ms pauses, while
    # the other run's pauses (all ~0.3 s) are its normal.
    a = runs_of([0.02, 0.02, 0.02, 0.3], warmup_first=False).assign(run="a")
    b = runs_of([0.3, 0.31, 0.29, 0.3], warmup_first=False, start=10).assign(run="b")
    found = summary.stalls(pd.concat([a, b], ignore_index=True))
    assert list(zip(found["run"], found["measurement"])) == [("a", 3)]


def test_no_stall_in_a_tight_cell_or_below_the_absolute_margin():
    assert not len(summary.stalls(runs_of([0.02] * 6, warmup_first=False)))
    # 10 x the p50 but 45 ms beyond it: noise a trainer never feels
    assert not len(summary.stalls(runs_of([0.005] * 5 + [0.05], warmup_first=False)))


def test_the_first_pause_after_start_is_reported_beside_its_cell():
    runs = runs_of([0.9, 0.02, 0.03, 0.04])
    first = summary.first_pauses(runs)
    assert len(first) == 1
    assert first.iloc[0]["resume_all_s"] == 0.9 and first.iloc[0]["resume_all_s_cell_p50"] == pytest.approx(0.03)
    assert math.isnan(summary.first_pauses(runs_of([0.9])).iloc[0]["resume_all_s_cell_p50"])


def test_a_run_says_which_cells_broke_their_contract_and_why():
    runs = runs_of([0.01] * 4)
    http = runs.assign(backend="http", mode="abort", measurement=runs["measurement"] + 10)
    runs.loc[2, ["ok", "leak_tokens"]] = [False, 3]
    http.loc[1:2, "ok"] = False
    http["finish_reasons"] = '{"abort": 1, "none": 1}'
    lines = summary.not_ok_lines(pd.concat([runs, http], ignore_index=True))
    # The warm-up is no measured pause; the known HTTP abort case points to its finding.
    assert lines[0].startswith("2 x http dp1 abort @tokens:50 max200 c8 hold1: the known HTTP case")
    assert lines[1] == "1 x offline dp1 keep @tokens:50 max200 c8 hold1: 3 token(s) leaked through the pause"
    assert len(lines) == 2 and summary.not_ok_lines(runs_of([0.01] * 3)) == []
