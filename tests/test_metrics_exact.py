"""Metric definitions on traces built by hand, with exact answers.

Times are chosen so each metric has one right value: two requests of 4 tokens, a keep
pause called at t=10.000 after request 0's second token, returning at 10.030, resume
called at 11.050 (a 1.0 s hold asked for, 1.020 s held: the sleep overshot by 20 ms).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench_pause import metrics, trace as tr

SCENARIO = {"backend": "offline", "dp_size": 1, "mode": "keep", "pause_point": "tokens:2", "max_tokens": 4,
            "concurrency": 2, "hold_s": 1.0, "clear_cache": False, "arrivals": 0, "cycle": "pause"}


def frames(tokens: list[tuple], events: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """tokens: (request, t, engine_t or nan, n_tokens=1, ids=None); events: (name, request, t, detail)."""
    t = tr.Trace()
    for request, when, engine_t, *rest in tokens:
        n, ids = (rest[0] if rest else 1), (rest[1] if len(rest) > 1 else None)
        t.token(request, n, None if math.isnan(engine_t) else engine_t, ids)
        t.tokens[-1] = (*t.tokens[-1][:3], when, *t.tokens[-1][4:])
    for name, request, when, detail in events:
        t.event(name, request, detail, t=when)
    return t.tokens_frame(), t.events_frame()


NAN = math.nan
CONTROL = [(tr.SUBMIT, 0, 9.900, ""), (tr.SUBMIT, 1, 9.900, ""),
           (tr.PAUSE_CALL, -1, 10.000, ""), (tr.PAUSE_RETURN, -1, 10.030, ""),
           (tr.RESUME_CALL, -1, 11.050, ""), (tr.RESUME_RETURN, -1, 11.052, "")]
# Request 0: tokens at 9.980 and 9.990, one more at 10.008 (made before the engine froze),
# then 11.070 after resume. Request 1: 9.985, 9.995, then 11.060, 11.075.
KEEP_TOKENS = [(0, 9.980, 9.979), (1, 9.985, 9.984), (0, 9.990, 9.989), (1, 9.995, 9.994),
               (0, 10.008, 10.006), (1, 11.060, 11.058), (0, 11.070, 11.069), (1, 11.075, 11.074)]
FINISHED = [(tr.FINISH, 0, 11.080, "length"), (tr.FINISH, 1, 11.080, "length")]


def keep_trace(tokens=KEEP_TOKENS, finished=FINISHED):
    return frames(tokens, CONTROL + finished)


def test_keep_trace_exact_values():
    v = metrics.compute(*keep_trace(), SCENARIO)
    assert v["pause_api_s"] == pytest.approx(0.030)
    assert v["quiesce_s"] == pytest.approx(0.008)  # last token before the freeze, client clock
    assert v["quiesce_engine_s"] == pytest.approx(0.006)
    assert v["leak_tokens"] == 0
    assert v["hold_actual_s"] == pytest.approx(1.020)
    assert v["gap_s"] == pytest.approx(11.070 - 10.008)
    # The gap beyond the hold that happened: pause cost + resume cost, not the overshoot.
    assert v["gap_excess_s"] == pytest.approx((11.070 - 10.008) - 1.020)
    assert v["resume_api_s"] == pytest.approx(0.002)
    assert v["resume_ttft_s"] == pytest.approx(0.010)  # request 1 at 11.060
    assert v["resume_all_s"] == pytest.approx(0.020)  # request 0 at 11.070 is the last back
    assert v["resume_engine_s"] == pytest.approx(0.008)
    assert v["tokens_received"] == v["tokens_expected"] == 8
    assert v["ok"] and not v["missed"] and v["held_requests"] == 0
    assert json.loads(v["finish_reasons"]) == {"length": 2}


def test_gap_excess_ignores_sleep_overshoot():
    """The same engine behaviour with a hold that overshot by 20 ms more gives the same
    gap_excess_s: only the pause and resume costs count."""
    shift = 0.020
    control = [(n, r, t + shift if n in (tr.RESUME_CALL, tr.RESUME_RETURN) else t, d) for n, r, t, d in CONTROL]
    tokens = [(r, t + shift if t > 11 else t, e + shift if e > 11 else e) for r, t, e in KEEP_TOKENS]
    finished = [(n, r, t + shift, d) for n, r, t, d in FINISHED]
    late = metrics.compute(*frames(tokens, control + finished), SCENARIO)
    base = metrics.compute(*keep_trace(), SCENARIO)
    assert late["gap_excess_s"] == pytest.approx(base["gap_excess_s"])
    assert late["hold_actual_s"] == pytest.approx(base["hold_actual_s"] + shift)


def test_engine_clock_metrics_pick_tokens_by_the_engine_clock():
    # A token made by the engine before the pause call (engine 9.999) reaches the client
    # during the pause call (10.004): on the engine's clock the engine made nothing after
    # the call, so quiesce_engine_s is 0, never negative.
    tokens = [(0, 9.980, 9.979), (1, 9.985, 9.984), (0, 9.990, 9.989), (1, 10.004, 9.999),
              (0, 10.008, 9.9995), (1, 11.060, 11.058), (0, 11.070, 11.069), (1, 11.075, 11.074)]
    v = metrics.compute(*keep_trace(tokens), SCENARIO)
    assert v["quiesce_engine_s"] == 0.0
    assert v["quiesce_s"] == pytest.approx(0.008)
    # A token the engine made after the resume call but that the client saw first is the
    # engine's first after resume, whatever order they reached the client in.
    tokens = [*KEEP_TOKENS[:5], (1, 11.060, 11.061), (0, 11.070, 11.055), (1, 11.075, 11.074)]
    assert metrics.compute(*keep_trace(tokens), SCENARIO)["resume_engine_s"] == pytest.approx(0.005)


def test_a_request_that_ran_through_the_pause_is_a_leak_not_a_missed_pause():
    # The engine ignored the pause: request 0 goes on at 10.040 and 10.050 and finishes
    # by length before the resume. That must be a leak and not ok, never "missed".
    tokens = [(0, 9.980, 9.979), (1, 9.985, 9.984), (0, 9.990, 9.989), (1, 9.995, 9.994),
              (0, 10.040, 10.039), (1, 10.045, 10.044), (0, 10.050, 10.049), (1, 10.055, 10.054)]
    finished = [(tr.FINISH, 0, 10.051, "length"), (tr.FINISH, 1, 10.056, "length")]
    v = metrics.compute(*keep_trace(tokens, finished), SCENARIO)
    assert v["leak_tokens"] == 4
    assert not v["missed"] and not v["ok"]


def test_a_request_already_done_when_the_pause_came_is_missed():
    # Every token arrived before the pause call: the pause had nothing to stop.
    tokens = [(0, 9.980, NAN), (1, 9.985, NAN), (0, 9.990, NAN), (1, 9.992, NAN), (0, 9.994, NAN),
              (1, 9.996, NAN), (0, 9.997, NAN), (1, 9.998, NAN)]
    finished = [(tr.FINISH, 0, 9.9975, "length"), (tr.FINISH, 1, 9.999, "length")]
    v = metrics.compute(*keep_trace(tokens, finished), SCENARIO)
    assert v["missed"] and v["leak_tokens"] == 0
    assert math.isnan(v["quiesce_engine_s"]) and math.isnan(v["resume_engine_s"])  # HTTP: no engine clock


def test_abort_contract_exact():
    tokens = KEEP_TOKENS[:5]
    finished = [(tr.FINISH, 0, 10.020, "abort"), (tr.FINISH, 1, 10.021, "abort")]
    v = metrics.compute(*keep_trace(tokens, finished), {**SCENARIO, "mode": "abort"})
    assert v["ok"] and v["leak_tokens"] == 0 and math.isnan(v["gap_s"]) and math.isnan(v["resume_all_s"])
    # One request that ends by length while the other was aborted breaks abort.
    finished = [(tr.FINISH, 0, 10.020, "abort"), (tr.FINISH, 1, 11.080, "length")]
    assert not metrics.compute(*keep_trace(KEEP_TOKENS, finished), {**SCENARIO, "mode": "abort"})["ok"]


WAIT = {**SCENARIO, "mode": "wait"}
# Both requests drain inside the pause call (10.000-10.030): their last tokens at 10.010 and
# 10.020 (engine 10.009, 10.019), finishes at 10.011 and 10.021.
WAIT_TOKENS = [*KEEP_TOKENS[:4], (0, 10.010, 10.009), (1, 10.015, 10.014), (0, 10.020, 10.019),
               (1, 10.022, 10.021)]
WAIT_FINISHED = [(tr.FINISH, 0, 10.021, "length"), (tr.FINISH, 1, 10.023, "length")]


def test_wait_contract_exact():
    v = metrics.compute(*keep_trace(WAIT_TOKENS, WAIT_FINISHED), WAIT)
    assert v["ok"] and v["leak_tokens"] == v["late_tokens"] == 0 and v["late_s"] == 0.0
    assert v["quiesce_s"] == pytest.approx(0.022) and v["quiesce_engine_s"] == pytest.approx(0.021)


def test_a_drained_token_delivered_after_the_pause_returned_is_late_not_leaked():
    """Request 1's last token, made at 10.021 inside the pause call, reaches an HTTP client
    (no engine clock) 8 ms after the pause returned, its finish with it (seen on a starved
    2-core host): late, and the contract held. Made after the return (engine clock), it is a
    leak. Finishing only after the resume call, it was not drained: not ok."""
    http = [*WAIT_TOKENS[:7], (1, 10.038, NAN)]
    finished = [WAIT_FINISHED[0], (tr.FINISH, 1, 10.038, "length")]
    v = metrics.compute(*keep_trace(http, finished), WAIT)
    assert v["ok"] and v["leak_tokens"] == 0
    assert v["late_tokens"] == 1 and v["late_s"] == pytest.approx(0.008)
    made_after = [*WAIT_TOKENS[:7], (1, 10.038, 10.035)]
    v = metrics.compute(*keep_trace(made_after, finished), WAIT)
    assert not v["ok"] and v["leak_tokens"] == 1 and v["late_tokens"] == 0
    after_resume = [*WAIT_TOKENS[:7], (1, 11.060, NAN)]
    v = metrics.compute(*keep_trace(after_resume, [WAIT_FINISHED[0], (tr.FINISH, 1, 11.061, "length")]), WAIT)
    assert not v["ok"] and v["leak_tokens"] == v["late_tokens"] == 0
    # Keep mode has no late tokens: the same arrival is a leak.
    v = metrics.compute(*keep_trace(http, finished), SCENARIO)
    assert v["leak_tokens"] == 1 and v["late_tokens"] == 0 and not v["ok"]


def test_two_servers_paused_together_name_the_slowest():
    """The same keep trace as two servers, one request each (request i on server i % 2): the
    pause's detail lists each server's return (10.012 and 10.030), the framework's pause is
    the later one, and request 1's server resumed first."""
    pause = json.dumps({"returns": [10.012, 10.030], "answers": ["200", "200"]})
    resume = json.dumps({"returns": [11.052, 11.051], "answers": ["200", "200"]})
    control = [(n, r, t, pause if n == tr.PAUSE_RETURN else resume if n == tr.RESUME_RETURN else d)
               for n, r, t, d in CONTROL]
    v = metrics.compute(*frames(KEEP_TOKENS, control + FINISHED), {**SCENARIO, "backend": "http", "servers": 2})
    assert v["pause_api_s"] == pytest.approx(0.030)
    assert v["pause_spread_s"] == pytest.approx(0.018) and v["worst_server"] == 1
    per_server = json.loads(v["per_server"])
    assert per_server["0"]["pause_api_s"] == pytest.approx(0.012)
    assert per_server["1"]["resume_api_s"] == pytest.approx(0.001)
    assert per_server["0"]["quiesce_s"] == pytest.approx(0.008)  # request 0's token at 10.008
    assert per_server["1"]["resume_ttft_s"] == pytest.approx(0.010)  # request 1 at 11.060
    ranks = json.loads(v["per_rank"])
    assert {k: r["server"] for k, r in ranks.items()} == {"0": 0, "1": 1}
    # One server: nothing per server, and no spread to report.
    one = metrics.compute(*keep_trace(), SCENARIO)
    assert json.loads(one["per_server"]) == {} and math.isnan(one["pause_spread_s"]) and one["worst_server"] == -1


def test_routing_over_servers_and_ranks_reaches_every_rank():
    from bench_pause.scenario import route
    assert [route(i, 2, 2) for i in range(4)] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [route(i, 1, 2) for i in range(3)] == [(0, 0), (0, 1), (0, 0)]  # as before: i % dp_size


# A weight_sync keep cycle on KEEP_TOKENS' timeline: the engine held set A (token 7) and
# gets set B (token 9). Probe 10.031-10.034 (the worker's clock 10.032), push start
# 10.035-10.040, update to 10.540 (2e8 bytes), finish 10.545; request 2 (the check) after
# the resume, tokens at 11.065 and 11.068.
SYNC_CONTROL = [*CONTROL, (tr.IDLE_CALL, -1, 10.031, ""),
                (tr.IDLE_RETURN, -1, 10.034, json.dumps([{"rank": 0, "pid": 1, "t": 10.032}])),
                (tr.SYNC_START_CALL, -1, 10.035, json.dumps({"set": "B", "bytes": 2e8, "new": [9], "old": [7]})),
                (tr.SYNC_START_RETURN, -1, 10.040, ""), (tr.SYNC_UPDATE_RETURN, -1, 10.540, ""),
                (tr.SYNC_FINISH_RETURN, -1, 10.545, ""), (tr.SUBMIT, 2, 11.053, "")]
SYNC_SCENARIO = {**SCENARIO, "cycle": "weight_sync"}


def sync_trace(wrong_after: bool = False, wrong_before: bool = False):
    tokens = [(r, t, e, 1, [7 if t < 10.5 else 9]) for r, t, e in KEEP_TOKENS]
    tokens += [(2, 11.065, 11.064, 1, [9]), (2, 11.068, 11.067, 3, [9, 9, 7 if wrong_after else 9])]
    if wrong_before:
        tokens[0] = (*tokens[0][:4], [9])
    return frames(tokens, SYNC_CONTROL + FINISHED + [(tr.FINISH, 2, 11.070, "length")])


def test_weight_sync_exact_values():
    v = metrics.compute(*sync_trace(), SYNC_SCENARIO)
    assert v["idle_s"] == pytest.approx(0.002)  # worker clock 10.032 after the pause return 10.030
    assert v["sync_start_s"] == pytest.approx(0.005) and v["sync_update_s"] == pytest.approx(0.500)
    assert v["sync_finish_s"] == pytest.approx(0.005) and v["sync_s"] == pytest.approx(0.510)
    assert v["sync_bytes"] == 2e8 and v["sync_gbps"] == pytest.approx(0.4)
    assert v["dark_s"] == pytest.approx(11.060 - 10.008)  # last token before the pause return to the first after
    assert v["new_weight_tokens"] == 3 + 4 and v["wrong_weight_tokens"] == 0
    assert v["tokens_expected"] == v["tokens_received"] == 12 and v["ok"]
    # A trace from before transfers were recorded was pushed through files (shm), no trainer memory.
    assert v["sync_transfer"] == "shm" and math.isnan(v["trainer_gpu_bytes"])


def test_weight_sync_over_ipc_records_the_transfer_and_the_trainers_memory():
    tokens, events = sync_trace()
    start = events["event"] == tr.SYNC_START_CALL
    events.loc[start, "detail"] = json.dumps({"set": "B", "bytes": 2e8, "new": [9], "old": [7], "transfer": "ipc_packed"})
    events.loc[events["event"] == tr.SYNC_UPDATE_RETURN, "detail"] = json.dumps(
        {"updates": 3, "gpu_bytes": 2**30, "gpu_bytes_collected": 2**30})
    v = metrics.compute(tokens, events, SYNC_SCENARIO)
    assert v["sync_transfer"] == "ipc_packed" and v["trainer_gpu_bytes"] == 2**30 and v["ok"]


@pytest.mark.parametrize("where", ["after", "before"])
def test_weight_sync_a_token_from_the_wrong_weights_fails(where):
    v = metrics.compute(*sync_trace(wrong_after=where == "after", wrong_before=where == "before"), SYNC_SCENARIO)
    assert v["wrong_weight_tokens"] == 1 and not v["ok"] and v["leak_tokens"] == 0


def test_weight_sync_metrics_are_nan_for_a_plain_pause():
    v = metrics.compute(*keep_trace(), SCENARIO)
    assert all(math.isnan(v[k]) for k in ("idle_s", "sync_s", "dark_s", "wrong_weight_tokens", "trainer_gpu_bytes"))
    assert v["sync_transfer"] == ""


def test_vllms_own_timing_of_the_push_is_what_its_histogram_added():
    """An HTTP push: the server's histogram before the measurement (one earlier push: start
    3 ms, 2 updates 0.9 s, finish 4 ms) and after (start +4 ms, 3 updates +0.480 s, finish
    +3 ms): vLLM's own figures sit beside the suite's, which add the HTTP round trips."""
    tokens, events = sync_trace()
    before = {"init": [0.010, 1], "start": [0.003, 1], "update": [0.900, 2], "finish": [0.004, 1]}
    after = {"init": [0.010, 1], "start": [0.007, 2], "update": [1.380, 5], "finish": [0.007, 2]}
    ops = pd.DataFrame([(tr.WEIGHT_OPS, -1, 9.800, json.dumps(before)), (tr.WEIGHT_OPS, -1, 11.090, json.dumps(after))],
                       columns=events.columns)
    v = metrics.compute(tokens, pd.concat([ops.iloc[:1], events, ops.iloc[1:]], ignore_index=True), SYNC_SCENARIO)
    assert v["vllm_sync_start_s"] == pytest.approx(0.004) and v["vllm_sync_update_s"] == pytest.approx(0.480)
    assert v["vllm_sync_finish_s"] == pytest.approx(0.003) and v["vllm_sync_updates"] == 3
    assert v["vllm_sync_update_s"] < v["sync_update_s"] and v["ok"]
    # In-process (offline) vLLM records none: NaN, the suite's own figures unchanged.
    v = metrics.compute(tokens, events, SYNC_SCENARIO)
    assert all(math.isnan(v[k]) for k in ("vllm_sync_start_s", "vllm_sync_update_s", "vllm_sync_updates"))
    assert v["sync_update_s"] == pytest.approx(0.500)


def test_the_weight_operation_histogram_is_read_off_prometheus_text():
    from bench_pause import vllm_compat
    text = "\n".join([
        '# HELP vllm:rl_weight_update_operation_duration_seconds Duration of one weight-transfer operation.',
        '# TYPE vllm:rl_weight_update_operation_duration_seconds histogram',
        'vllm:rl_weight_update_operation_duration_seconds_bucket{le="0.01",operation="start"} 1.0',
        'vllm:rl_weight_update_operation_duration_seconds_count{operation="start"} 2.0',
        'vllm:rl_weight_update_operation_duration_seconds_sum{operation="start"} 0.0125',
        'vllm:rl_weight_update_operation_duration_seconds_created{operation="start"} 1.7e9',
        'vllm:rl_weight_update_operation_duration_seconds_count{operation="update"} 6.0',
        'vllm:rl_weight_update_operation_duration_seconds_sum{operation="update"} 1.5',
        'vllm:num_preemptions_total{engine="0",model_name="m"} 4.0'])
    assert vllm_compat.weight_ops(text) == {"start": [0.0125, 2.0], "update": [1.5, 6.0]}
    assert vllm_compat.counters(text) == {"preemptions": {"0": 4.0}, "weight_ops": {"start": [0.0125, 2.0],
                                                                                    "update": [1.5, 6.0]}}
    assert vllm_compat.weight_ops("") == {}


@pytest.mark.parametrize("mode", ["abort", "wait", "keep"])
def test_an_arrival_refused_during_the_pause_is_the_contract_of_abort_and_wait_only(mode):
    """vLLM 0.33 on refuses a request sent during an abort or wait pause (it held it until
    the resume before); keep still queues it. One arrival (request 2) sent at 10.100, refused."""
    if mode == "abort":
        tokens, finished = KEEP_TOKENS[:5], [(tr.FINISH, 0, 10.020, "abort"), (tr.FINISH, 1, 10.021, "abort")]
    elif mode == "wait":
        tokens, finished = WAIT_TOKENS, WAIT_FINISHED
    else:
        tokens, finished = KEEP_TOKENS, FINISHED
    arrival = [(tr.SUBMIT, 2, 10.100, ""), (tr.FINISH, 2, 10.104, tr.REJECTED)]
    v = metrics.compute(*keep_trace(tokens, finished + arrival), {**SCENARIO, "mode": mode, "arrivals": 1})
    assert v["rejected_requests"] == 1 and v["leak_tokens"] == 0
    assert v["ok"] == (mode != "keep")
    assert v["tokens_expected"] == (3 if mode == "keep" else 2) * 4


def test_sleep_cycle_exact_values():
    """A level-1 keep sleep woken in two calls: the sleep is the pause (10.000 to 10.030),
    the weights come back 11.050 to 11.090, the KV cache's wake resumes 11.100 to 11.104.
    The GPU holds 70 GiB on one worker before, 6 GiB asleep, 70 GiB after."""
    gib = 2**30

    def memory(phase: str, t: float, used: float) -> tuple:
        return (tr.MEMORY, -1, t, json.dumps({"phase": phase, "workers": [{"rank": 0, "used": used * gib}]}))
    control = [memory("before", 9.800, 70), (tr.SUBMIT, 0, 9.900, ""), (tr.SUBMIT, 1, 9.900, ""),
               (tr.PAUSE_CALL, -1, 10.000, ""), (tr.PAUSE_RETURN, -1, 10.030, ""), memory("asleep", 10.040, 6),
               (tr.WAKE_CALL, -1, 11.050, ""), (tr.WAKE_RETURN, -1, 11.090, ""),
               (tr.RESUME_CALL, -1, 11.100, ""), (tr.RESUME_RETURN, -1, 11.104, ""), memory("after", 11.200, 70)]
    tokens = [(0, 9.980, NAN), (1, 9.985, NAN), (0, 9.990, NAN), (1, 9.995, NAN),
              (1, 11.130, NAN), (0, 11.150, NAN), (1, 11.155, NAN), (0, 11.160, NAN)]
    sleep = {**SCENARIO, "cycle": "sleep", "clear_cache": True, "sleep_level": 1, "wake": "split"}
    finished = [(tr.FINISH, 0, 11.170, "length"), (tr.FINISH, 1, 11.170, "length")]
    v = metrics.compute(*frames(tokens, control + finished), sleep)
    assert v["pause_api_s"] == pytest.approx(0.030)  # the sleep call
    assert v["wake_weights_s"] == pytest.approx(0.040)
    assert v["resume_api_s"] == pytest.approx(0.004)  # the wake that resumed scheduling
    assert v["resume_ttft_s"] == pytest.approx(0.030) and v["resume_all_s"] == pytest.approx(0.050)
    assert v["hold_actual_s"] == pytest.approx(1.070)  # the weights' wake is inside the dark time
    assert (v["mem_before_bytes"], v["mem_asleep_bytes"], v["mem_after_bytes"]) == (70 * gib, 6 * gib, 70 * gib)
    assert v["mem_freed_bytes"] == 64 * gib
    assert v["leak_tokens"] == 0 and v["ok"]
    # A pause cycle has none of them.
    plain = metrics.compute(*keep_trace(), SCENARIO)
    assert all(math.isnan(plain[k]) for k in ("wake_weights_s", "mem_before_bytes", "mem_freed_bytes"))


@pytest.mark.parametrize("stray", [None, "before", "after"])
def test_a_sleep_that_kept_its_weights_is_checked_against_the_set_it_held(stray):
    """A level-1 keep sleep on KEEP_TOKENS' timeline, the engine holding set A (token 7):
    every token, before the sleep and after the wake, must be 7, the check request (2)
    after the wake included; a token 9 (the other set) anywhere is a wrong-weight token
    and fails the cycle. No push: the push's figures stay NaN."""
    held = (tr.WEIGHTS_HELD, -1, 9.850, json.dumps({"set": "A", "tokens": [7]}))
    tokens = [(r, t, e, 1, [7]) for r, t, e in KEEP_TOKENS]
    tokens += [(2, 11.065, 11.064, 1, [7]), (2, 11.068, 11.067, 3, [7, 7, 7])]
    if stray == "before":
        tokens[0] = (*tokens[0][:4], [9])
    elif stray == "after":
        tokens[-1] = (*tokens[-1][:4], [7, 7, 9])
    events = [held, *CONTROL, (tr.SUBMIT, 2, 11.053, ""), *FINISHED, (tr.FINISH, 2, 11.070, "length")]
    sleep = {**SCENARIO, "cycle": "sleep", "clear_cache": True, "sleep_level": 1, "wake": "all"}
    v = metrics.compute(*frames(tokens, events), sleep)
    assert v["new_weight_tokens"] == 3 + 4 - (stray == "after")  # requests 0 and 1 after the wake, 2
    assert v["wrong_weight_tokens"] == (0 if stray is None else 1)
    assert v["ok"] == (stray is None) and v["leak_tokens"] == 0
    assert v["dark_s"] == pytest.approx(11.060 - 10.008)
    assert v["tokens_expected"] == v["tokens_received"] == 12
    assert all(math.isnan(v[k]) for k in ("sync_s", "sync_bytes", "idle_s"))
    # Without the check request the cycle is not served in full.
    short = metrics.compute(*frames(tokens[:-1], events[:-1]), sleep)
    assert not short["ok"]


def test_sleep_memory_unread_on_a_cpu_is_nan():
    """Workers without CUDA answer used=None: no figure, rather than 0 bytes freed."""
    control = [(tr.MEMORY, -1, 9.8, json.dumps({"phase": "before", "workers": [{"rank": 0, "used": None}]})),
               *CONTROL]
    v = metrics.compute(*frames(KEEP_TOKENS, control + FINISHED), {**SCENARIO, "cycle": "sleep"})
    assert math.isnan(v["mem_before_bytes"]) and math.isnan(v["mem_freed_bytes"])
