"""What a pause cost, computed from one trace. Pure functions: no engine needed.

All durations are seconds. Column names of :func:`compute` are the interface other
modules (summary, plots, compare, asv) read.

Definitions (client clock unless the name says ``engine``):

- ``pause_api_s``: pause call to its return.
- ``quiesce_s``: pause call to the last token delivered between the call and its
  return (0 when no token came in that window): how long the engine kept producing.
- ``leak_tokens``: tokens that arrived after the pause returned and before resume was
  called, late ones (below) aside. A correct engine delivers none.
- ``late_tokens``, ``late_s``: wait mode only (0 otherwise): tokens of the drained requests
  (in flight at the pause call) that reached the client after the pause returned, and
  pause return to the last of them. vLLM makes them before its pause returns but orders
  their delivery before the return only by a 20 ms sleep it calls not needed for
  correctness (``AsyncLLM.pause_generation``); over HTTP they travel on another connection,
  and a starved 2-core host delivered a drained request's last chunk 8 ms after the pause
  response (seen). Where the engine clock is recorded (offline), a token it made after the
  pause returned is a leak, never late; over HTTP the client cannot tell the two apart,
  which is why the wait contract also asks the drained requests to finish before the
  resume call.
- ``gap_s``: the first request's inter-token gap spanning the pause: its first token
  after the resume call minus its last token before it (its submit time when it had
  none, i.e. a ``prefill`` pause). NaN when it never produced a token after resume.
- ``hold_actual_s``: the hold that happened, pause return to resume call. The scenario's
  ``hold_s`` is the hold asked for; the sleep between them overshoots it by a little.
- ``gap_excess_s``: ``gap_s - hold_actual_s``, what the pause and the resume added beyond
  the hold that happened (sleep overshoot is not a pause cost).
- ``resume_api_s``, ``resume_ttft_s``: resume call to its return / to the first token
  of any request after it.
- ``resume_all_s``: resume call to the first token of the *last* request to come back,
  over the requests unfinished at the resume: when every stream is moving again.
- ``quiesce_engine_s``: pause call to the engine-side timestamp of the last token the
  engine made between the pause call and its return (0 when none): tokens are picked by
  the engine's clock, not by when they reached the client (offline only; NaN over HTTP).
- ``resume_engine_s``: resume call to the engine-side timestamp of the first token the
  engine made after it (offline only): the resume cost without the output path back to
  the client.
- ``preemptions``: requests the engine preempted during the measurement, from vLLM's own
  ``vllm:num_preemptions`` counter, read before the requests are sent and after every
  stream ended. Not around the pause alone, because it cannot be: vLLM counts a preemption
  when the preempted request's next output reaches the front end (the PREEMPTED event rides
  on its EngineCoreOutput, ``vllm/v1/metrics/stats.py``), so a pause's preemptions appear
  only after the resume. The loads here stay far below the KV cache, so nothing else
  preempts: every clear_cache=False keep pause committed shows 0. A keep pause with
  ``clear_cache=True`` preempts every running request; NaN where it cannot be read.
- ``reprefill_tokens``: an estimate of the tokens the engine recomputes to bring the
  preempted requests back: vLLM re-prefills a preempted request's prompt plus what it
  had generated, and a cleared cache holds none of it. The sum over the requests in
  flight at the pause call (held ones aside) when the engine preempted at least that
  many, 0 when it preempted none, NaN when it preempted only some (which ones cannot be
  told). vLLM
  counts only first prefills in ``vllm:prompt_tokens``, so this cannot be read off it.
- ``missed``: the first request was finished before the pause could act on it (it ended
  before the pause call, or in keep/abort mode ran to its length before the resume with
  no token delivered while paused: its last tokens were already on their way): the pause
  stopped nothing, so gap and resume figures are undefined. The sweep measures such a
  cell again; statistics leave missed measurements out. A measurement that leaked is
  never missed: an engine that ignores a pause shows up as a leak, not as a gap in the data.
- ``arrivals_admitted_s``, ``arrivals_ttft_s``: for requests submitted while paused
  (``arrivals``): first submission to all of them being taken in, and resume call to
  the first token of the slowest of them. They must not get a token before the resume
  (any would be counted in ``leak_tokens``).
- ``second_call_s``: the duplicate call of an edge cycle (a pause while a pause is in
  progress, or a resume while not paused), call to return.
- ``quiesce_worst_s``, ``resume_ttft_worst_s`` and ``per_rank`` (JSON): with data
  parallelism, request ``i`` is routed to rank ``i % dp_size`` (with several servers, see
  :func:`bench_pause.scenario.route`; ranks are numbered server by server); per rank, the
  quiesce, the first token after resume and the preemptions. The worst rank is what a
  trainer waiting on every rank sees.
- ``per_server`` (JSON), ``pause_spread_s``, ``worst_server``: with several servers paused
  together (``servers`` > 1), each server's pause and resume call to return, quiesce and
  first token after resume (its worst rank); the slowest server's pause minus the fastest's
  (what the trainer waits beyond the fastest), and which server was slowest. ``pause_api_s``
  is then the framework's view: the calls to every server, issued together, until the last
  returned. NaN / -1 with one server.
- ``itl_median_s``, ``itl_max_s``: the first request's per-token latency outside the
  pause, to tell a pause effect from a background stall.
- ``held_requests``: requests that got no token before the resume call and were served
  after it: queued in the engine when the pause came (vLLM's wait mode drains only the
  running requests; a waiting one is held like in keep), or, in abort mode, not yet in
  the engine when it aborted.
- ``tokens_expected``, ``tokens_received``, ``finish_reasons``.
- ``rejected_requests``: requests sent during the pause that the engine refused (finish
  reason ``rejected``): vLLM 0.33 and later refuse them in abort and wait mode (in-process
  ``RetryableRequestError``, HTTP 503) where earlier releases held them until the resume.
- A ``weight_sync`` cycle (NaN in every other): right after the pause returns, the idle
  probe, then a push of a full weight set through vLLM's weight-transfer API, then the hold's
  rest; after the resume one more request is sent, to be served by the new weights.
  ``idle_s``: pause return to the latest clock any worker returned from the probe (it
  synchronises the device and runs between engine steps: transfer_worker), what the
  trainer would wait beyond the pause call before the device is its own; per worker in
  the ``idle_return`` event. ``sync_start_s``, ``sync_update_s``, ``sync_finish_s``: each
  call of the push, call to return; ``sync_s``: start call to finish return;
  ``sync_bytes`` and ``sync_gbps`` (bytes over the update call, GB/s). ``dark_s``: no token
  produced: the last token delivered before the pause returned (any request; the first
  submit when none) to the first after the resume call. ``new_weight_tokens``: tokens
  after the resume made by the new set; ``wrong_weight_tokens``: tokens after the resume
  made by anything else, plus tokens before the pause call not made by the old set (when
  the engine held a known set). Which set made a token is read off its id
  (bench_pause.trainer). ``sync_transfer``: how the push went (weight_sync.TRANSFERS;
  ``shm`` for traces that do not say); ``trainer_gpu_bytes``: GPU memory the trainer held
  after the push, its weight sets included where they live on the GPU (CUDA IPC, NCCL; NaN
  where not recorded): a packed buffer that stays allocated after every push shows as growth.
  ``vllm_sync_start_s``, ``vllm_sync_update_s``, ``vllm_sync_finish_s``: the same calls as
  vLLM's server timed them (its histogram ``vllm:rl_weight_update_operation_duration_seconds``,
  the seconds it added during the measurement; ``update`` summed over the push's updates,
  ``vllm_sync_updates`` of them), a cross-check of the suite's figures, which add the HTTP
  round trip; NaN where vLLM records none (in-process AsyncLLM, releases without it).
- A ``sleep`` cycle (NaN in every other): vLLM's ``sleep(level, mode)`` is the pause and
  the ``wake_up`` that resumes scheduling is the resume, so every pause metric above reads
  them (``pause_api_s``: the sleep call; ``resume_api_s``: that wake call; the contract of
  the mode alike). ``wake_weights_s``: a split wake's first call, the weights back, call
  to return. ``mem_before_bytes``, ``mem_asleep_bytes``, ``mem_after_bytes``: the GPU
  memory in use (every process on the engine's GPUs, summed over its workers) before the
  requests, once the sleep returned and after every stream ended; ``mem_freed_bytes``:
  before minus asleep, what a colocated trainer gains. A level-2 sleep pushes the next weight
  set between its two wake calls (the push's figures and the weight check as for a
  weight_sync, ``idle_s`` aside), and its ``ok`` asks what a weight_sync's does. A sleep at
  level 0 or 1 keeps its weights: where the engine can hold a staged set (the sweep stages
  them: a level-2 sleep in it, or ``--transfer``), the set it held before the sleep is both
  the old and the new set of the check (``new_weight_tokens``, ``wrong_weight_tokens``,
  ``dark_s``; one more request after the wake), and ``ok`` asks the same of it.
- ``ok``: the mode's contract held. keep: no leak, every token delivered, every request
  finished by length. abort: no leak, every request unfinished at the pause call ended
  with ``abort``, except one held (it reached the engine only after the abort, as a
  starved HTTP server's request can; it is then served in full after the resume). wait: no
  leak, every token delivered, and every request either finished (by length) before the
  resume call or was held (see ``held_requests``). In every mode, requests
  that arrived during the pause, every request of an ``idle`` cycle (sent after the
  resume) and a weight_sync's request after the resume are served in full; a weight_sync
  also needs ``wrong_weight_tokens`` 0 and ``new_weight_tokens`` above 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from bench_pause import trace as tr
from bench_pause.scenario import pushes, route

# Bumped when a definition changes; meta.json records it (`bench-pause recompute` updates
# it with the metrics). 2: gap_excess_s against the hold that happened, engine-clock
# metrics selected by the engine's clock, a leak never counted as missed. 3: several
# servers paused together (per_server, pause_spread_s, worst_server). 4: the weight_sync
# cycle's metrics. 6: a wait pause's drained tokens delivered after its return are late,
# not leaked, and the wait contract asks them to finish before the resume call. 7: vLLM's
# own timing of the push's operations beside the suite's (vllm_sync_*); arrivals refused
# during an abort or wait pause (rejected_requests) are that mode's contract on 0.33 on.
# 8: the sleep cycle's metrics (wake_weights_s, mem_*_bytes).
VERSION = 8

# The metrics a benchmark tracks, with their units: what summaries, plots and asv show.
HEADLINE = {
    "pause_api_s": "s",
    "quiesce_s": "s",
    "gap_excess_s": "s",
    "resume_ttft_s": "s",
    "resume_all_s": "s",
    "leak_tokens": "tokens",
}


def _event_time(events: pd.DataFrame, name: str) -> float:
    hits = events.loc[events["event"] == name, "t"]
    return float(hits.iloc[0]) if len(hits) else math.nan


def _finishes(events: pd.DataFrame) -> dict[int, tuple[float, str]]:
    fin = events[events["event"] == tr.FINISH]
    return {int(r): (float(t), str(d)) for r, t, d in zip(fin["request"], fin["t"], fin["detail"])}


def _itl(first: pd.DataFrame, gap_bounds: tuple[float, float]) -> tuple[float, float]:
    """Per-token latency of one request's stream outside the pause gap."""
    if len(first) < 2:
        return math.nan, math.nan
    t = first["t"].to_numpy()
    n = first["n_tokens"].to_numpy()
    dt = np.diff(t) / np.maximum(n[1:], 1)
    inside = (t[:-1] >= gap_bounds[0]) & (t[1:] <= gap_bounds[1])
    outside = dt[~inside]
    if not len(outside):
        return math.nan, math.nan
    return float(np.median(outside)), float(np.max(outside))


def _counters(events: pd.DataFrame) -> dict[str, float]:
    """Per-engine preemptions during the measurement, from the two ``counters`` events."""
    rows = events.loc[events["event"] == tr.COUNTERS, "detail"]
    if len(rows) < 2:
        return {}
    first, last = json.loads(rows.iloc[0]), json.loads(rows.iloc[-1])
    return {engine: last[engine] - first.get(engine, 0.0) for engine in last}


def _first_after(tokens: pd.DataFrame, t0: float) -> float:
    after = tokens.loc[tokens["t"] >= t0, "t"]
    return float(after.min() - t0) if len(after) else math.nan


def _last_comeback(tokens: pd.DataFrame, requests: Iterable[int], t0: float) -> float:
    """From ``t0`` to the first token of the last of ``requests`` to get one after it;
    NaN when there are none or one never got a token."""
    firsts = [_first_after(tokens[tokens["request"] == r], t0) for r in requests]
    return max(firsts) if firsts and not any(math.isnan(f) for f in firsts) else math.nan


def _per_rank(tokens: pd.DataFrame, requests: range, servers: int, dp_size: int, preempted: dict[str, float],
              pause_call: float, pause_ret: float, resume_call: float) -> dict[str, dict]:
    """Per data-parallel rank, numbered ``server * dp_size + rank``."""
    out = {}
    for server in range(servers):
        for rank in range(dp_size):
            key = str(server * dp_size + rank)
            ids = [r for r in requests if route(r, servers, dp_size) == (server, rank)]
            mine = tokens[tokens["request"].isin(ids)]
            window = mine.loc[(mine["t"] >= pause_call) & (mine["t"] <= pause_ret), "t"]
            out[key] = {
                "server": server,
                "requests": len(ids),
                "quiesce_s": float(window.max() - pause_call) if len(window) else 0.0,
                "resume_ttft_s": _first_after(mine, resume_call),
                "preemptions": preempted.get(key, math.nan) if preempted else math.nan,
            }
    return out


def _worst(per_rank: dict[str, dict], key: str) -> float:
    values = [v[key] for v in per_rank.values() if v["requests"] and not math.isnan(v[key])]
    return max(values) if values else math.nan


def _server_returns(events: pd.DataFrame, name: str, servers: int) -> list[float]:
    """Each server's return time of a call sent to several servers at once (the event's
    detail lists them, see backends.fleet); NaN for each where it is not recorded."""
    hits = events.loc[events["event"] == name, "detail"]
    try:
        returns = json.loads(str(hits.iloc[0]))["returns"] if len(hits) else []
    except (ValueError, KeyError, TypeError):
        returns = []
    return [float(t) for t in returns] if len(returns) == servers else [math.nan] * servers


def _per_server(events: pd.DataFrame, per_rank: dict[str, dict], servers: int,
                calls: tuple[float, float]) -> dict[str, dict]:
    pauses = _server_returns(events, tr.PAUSE_RETURN, servers)
    resumes = _server_returns(events, tr.RESUME_RETURN, servers)
    out = {}
    for k in range(servers):
        ranks = {key: v for key, v in per_rank.items() if v["server"] == k}
        out[str(k)] = {"pause_api_s": pauses[k] - calls[0], "resume_api_s": resumes[k] - calls[1],
                       "quiesce_s": _worst(ranks, "quiesce_s"), "resume_ttft_s": _worst(ranks, "resume_ttft_s")}
    return out


def _ids(tokens: pd.DataFrame) -> list[list[int]]:
    """Each output's token ids; [] where none were recorded (traces before version 4 have no column)."""
    if "ids" not in tokens:
        return [[] for _ in range(len(tokens))]
    return [[int(i) for i in v.split(",")] if isinstance(v, str) and v else [] for v in tokens["ids"]]


# vLLM's weight-transfer operations and the metric each one's seconds go to.
VLLM_OPS = {"start": "vllm_sync_start_s", "update": "vllm_sync_update_s", "finish": "vllm_sync_finish_s"}


def _vllm_ops(events: pd.DataFrame) -> dict[str, float]:
    """vLLM's own seconds per push operation during the measurement, from the two
    ``weight_ops`` events (its cumulative histogram before and after); {} without them."""
    rows = events.loc[events["event"] == tr.WEIGHT_OPS, "detail"]
    if len(rows) < 2:
        return {}
    first, last = json.loads(rows.iloc[0]), json.loads(rows.iloc[-1])

    def added(op: str, which: int) -> float:
        return last[op][which] - first.get(op, [0.0, 0.0])[which] if op in last else math.nan
    return {**{name: added(op, 0) for op, name in VLLM_OPS.items()}, "vllm_sync_updates": added("update", 1)}


def _sleep(events: pd.DataFrame) -> dict:
    """The sleep cycle's own metrics (module docstring); NaN where the trace has none."""
    used: dict[str, float] = {}
    for detail in events.loc[events["event"] == tr.MEMORY, "detail"]:
        read = json.loads(str(detail))
        values = [w.get("used") for w in read["workers"]]
        used[read["phase"]] = float(sum(values)) if values and None not in values else math.nan
    before, asleep = used.get("before", math.nan), used.get("asleep", math.nan)
    return {"wake_weights_s": _event_time(events, tr.WAKE_RETURN) - _event_time(events, tr.WAKE_CALL),
            "mem_before_bytes": before, "mem_asleep_bytes": asleep,
            "mem_after_bytes": used.get("after", math.nan), "mem_freed_bytes": before - asleep}


def _weight_sync(tokens: pd.DataFrame, events: pd.DataFrame, pause_call: float, pause_ret: float,
                 resume_call: float, first_submit: float) -> dict:
    """The weight_sync metrics (module docstring), and a sleep's weight check; NaN for
    every other cycle."""
    nan = math.nan
    out = dict.fromkeys(("idle_s", "sync_start_s", "sync_update_s", "sync_finish_s", "sync_s", "sync_bytes",
                         "sync_gbps", "dark_s", "new_weight_tokens", "wrong_weight_tokens", "trainer_gpu_bytes",
                         *VLLM_OPS.values(), "vllm_sync_updates"), nan)
    out["sync_transfer"] = ""
    start = events.loc[events["event"] == tr.SYNC_START_CALL, "detail"]
    held = events.loc[events["event"] == tr.WEIGHTS_HELD, "detail"]
    if len(start):
        sets = json.loads(str(start.iloc[0]))
        new, old = set(sets["new"]), set(sets["old"]) if sets.get("old") is not None else None
    elif len(held):  # a sleep that kept its weights: the set before is the set after
        new = old = set(json.loads(str(held.iloc[0]))["tokens"])
    else:
        return out
    t = tokens["t"]
    before_pause = t[t <= pause_ret]
    after = t[t >= resume_call]
    last = float(before_pause.max()) if len(before_pause) else first_submit
    right = wrong = 0
    token_ids = _ids(tokens)
    for when, ids in zip(t, token_ids):
        if when >= resume_call:
            right += sum(i in new for i in ids)
            wrong += sum(i not in new for i in ids)
        elif when < pause_call and old is not None:
            wrong += sum(i not in old for i in ids)
    checked = any(token_ids)  # a trace recorded without ids cannot say which weights made a token
    out.update({
        "dark_s": float(after.min()) - last if len(after) else nan,
        "new_weight_tokens": float(right) if checked else nan,
        "wrong_weight_tokens": float(wrong) if checked else nan,
    })
    if not len(start):
        return out
    out.update(_vllm_ops(events))
    pushed = events.loc[events["event"] == tr.SYNC_UPDATE_RETURN, "detail"]
    done = json.loads(str(pushed.iloc[0])) if len(pushed) and str(pushed.iloc[0]) else {}
    start_call = _event_time(events, tr.SYNC_START_CALL)
    start_ret = _event_time(events, tr.SYNC_START_RETURN)
    update_ret = _event_time(events, tr.SYNC_UPDATE_RETURN)
    finish_ret = _event_time(events, tr.SYNC_FINISH_RETURN)
    idle = events.loc[events["event"] == tr.IDLE_RETURN, "detail"]
    clocks = [float(a["t"]) for a in json.loads(str(idle.iloc[0]))] if len(idle) else []
    update = update_ret - start_ret
    out.update({
        "idle_s": max(clocks) - pause_ret if clocks else nan,
        "sync_start_s": start_ret - start_call,
        "sync_update_s": update,
        "sync_finish_s": finish_ret - update_ret,
        "sync_s": finish_ret - start_call,
        "sync_bytes": float(sets["bytes"]),
        "sync_gbps": sets["bytes"] / update / 1e9 if update > 0 else nan,
        "sync_transfer": str(sets.get("transfer", "shm")),
        "trainer_gpu_bytes": float(done.get("gpu_bytes", nan)),
    })
    return out


def compute(tokens: pd.DataFrame, events: pd.DataFrame, scenario: Mapping, error: str = "") -> dict:
    """Metrics of one measured pause from its token and event tables.

    ``scenario`` holds the scenario's columns (a :class:`~bench_pause.scenario.Scenario`
    as a dict, or a stored run row); axes added later default to what older runs did.
    """
    mode, max_tokens = str(scenario["mode"]), int(scenario["max_tokens"])
    concurrency = int(scenario["concurrency"])
    dp_size, cycle = int(scenario.get("dp_size", 1)), str(scenario.get("cycle", "pause") or "pause")
    servers = int(scenario.get("servers", 1) or 1)
    n_arrivals = int(scenario.get("arrivals", 0) or 0)
    originals, arrivals = range(concurrency), range(concurrency, concurrency + n_arrivals)
    # A weight_sync (and a level-2 sleep, which pushes between its wakes) sends one request
    # after the resume, to be served by the new weights; a sleep that kept a staged set, to
    # be served by that set.
    checked = pushes(cycle, int(scenario.get("sleep_level", 0) or 0)) or (events["event"] == tr.WEIGHTS_HELD).any()
    checks = range(concurrency + n_arrivals, concurrency + n_arrivals + int(checked))

    tokens = tokens.sort_values("t", kind="stable")
    pause_call = _event_time(events, tr.PAUSE_CALL)
    pause_ret = _event_time(events, tr.PAUSE_RETURN)
    resume_call = _event_time(events, tr.RESUME_CALL)
    resume_ret = _event_time(events, tr.RESUME_RETURN)
    finishes = _finishes(events)

    t, engine_t = tokens["t"], tokens["engine_t"]
    in_pause_call = tokens[(t >= pause_call) & (t <= pause_ret)]
    quiesce = float(in_pause_call["t"].max() - pause_call) if len(in_pause_call) else 0.0
    quiesce_engine = math.nan
    if engine_t.notna().any():  # selected and measured on the engine's clock alike
        made = engine_t[(engine_t >= pause_call) & (engine_t <= pause_ret)]
        quiesce_engine = float(made.max() - pause_call) if len(made) else 0.0
    hold_actual = resume_call - pause_ret

    first = tokens[tokens["request"] == 0]
    before = first[first["t"] < resume_call]
    after = first[first["t"] >= resume_call]
    submit0 = events.loc[(events["event"] == tr.SUBMIT) & (events["request"] == 0), "t"]
    prev = float(before["t"].iloc[-1]) if len(before) else (float(submit0.iloc[0]) if len(submit0) else math.nan)
    nxt = float(after["t"].iloc[0]) if len(after) and cycle != "idle" else math.nan
    gap = nxt - prev
    resumed = tokens[t >= resume_call]
    resume_ttft = float(resumed["t"].iloc[0] - resume_call) if len(resumed) else math.nan
    engine_after = engine_t[engine_t >= resume_call]
    resume_engine = float(engine_after.min() - resume_call) if len(engine_after) else math.nan
    itl_median, itl_max = _itl(first, (prev, nxt) if not math.isnan(gap) else (math.inf, -math.inf))

    unfinished = [r for r in originals if finishes.get(r, (math.inf, ""))[0] >= resume_call]
    resume_all = _last_comeback(tokens, unfinished, resume_call)

    preempted = _counters(events)
    preemptions = float(sum(preempted.values())) if preempted else math.nan
    prompts = events[events["event"] == tr.PROMPT]
    prompt_tokens = {int(r): int(d) for r, d in zip(prompts["request"], prompts["detail"])}
    started_before_resume = set(tokens.loc[t < resume_call, "request"].unique())
    held = {r for r in originals if r not in started_before_resume and r in set(tokens["request"])}
    # Requests in flight at the pause call and running in the engine (a held one was not).
    in_flight = [r for r in originals if finishes.get(r, (math.inf, ""))[0] >= pause_call and r not in held]
    while_paused = (t > pause_ret) & (t < resume_call)
    # Drained, and made before the return where the engine clock says (NaN compares false).
    drained = tokens["request"].isin(in_flight if mode == "wait" and cycle != "idle" else [])
    late = while_paused & drained & ~(engine_t > pause_ret)
    leak = int(tokens.loc[while_paused & ~late, "n_tokens"].sum())
    reprefill = math.nan
    if preemptions == 0:
        reprefill = 0.0
    elif in_flight and preemptions >= len(in_flight):  # every request in flight was preempted
        reprefill = float(sum(prompt_tokens.get(r, 0) + tokens.loc[(tokens["request"] == r) & (t <= pause_ret),
                                                                      "n_tokens"].sum() for r in in_flight))

    per_rank = _per_rank(tokens, originals, servers, dp_size, preempted, pause_call, pause_ret, resume_call)
    per_server = _per_server(events, per_rank, servers, (pause_call, resume_call)) if servers > 1 else {}
    server_pauses = [v["pause_api_s"] for v in per_server.values()]
    spread, worst_server = math.nan, -1
    if server_pauses and not any(math.isnan(p) for p in server_pauses):
        spread, worst_server = max(server_pauses) - min(server_pauses), int(np.argmax(server_pauses))

    received = int(tokens["n_tokens"].sum())
    # Arrivals the engine refused (abort and wait on 0.33 on: their contract) are owed no token.
    rejected = [r for r in arrivals if finishes.get(r, (0, ""))[1] == tr.REJECTED]
    admitted_arrivals = [r for r in arrivals if r not in rejected]
    expected = (concurrency + n_arrivals - (len(rejected) if mode != "keep" else 0) + len(checks)) * max_tokens
    per_request = tokens.groupby("request")["n_tokens"].sum()
    reasons = Counter(reason for _, reason in finishes.values())
    everyone_finished = all(r in finishes for r in [*originals, *arrivals, *checks])

    def served(requests: Iterable[int]) -> bool:
        return all(per_request.get(r, 0) == max_tokens and finishes.get(r, (0, ""))[1] == "length" for r in requests)

    fin0 = finishes.get(0)
    missed = cycle != "idle" and fin0 is not None and leak == 0 and (
        fin0[0] < pause_call or (mode != "wait" and fin0[1] == "length" and fin0[0] < resume_call))

    arrivals_ttft = _last_comeback(tokens, arrivals, resume_call)
    submits = events.loc[(events["event"] == tr.SUBMIT) & events["request"].isin(list(arrivals)), "t"]
    admitted = _event_time(events, tr.ADMITTED)
    arrivals_admitted = admitted - float(submits.min()) if len(submits) else math.nan

    second_call = math.nan
    for call, ret in ((tr.PAUSE_CALL_2, tr.PAUSE_RETURN_2), (tr.RESUME_CALL_2, tr.RESUME_RETURN_2)):
        if (events["event"] == call).any():
            second_call = _event_time(events, ret) - _event_time(events, call)

    synced = _weight_sync(tokens, events, pause_call, pause_ret, resume_call,
                          float(submit0.iloc[0]) if len(submit0) else math.nan)
    if error:
        ok = False
    elif checks and not (served(checks) and synced["wrong_weight_tokens"] == 0 and synced["new_weight_tokens"] > 0):
        ok = False
    elif cycle == "idle" or mode == "keep":  # an idle cycle's requests come after the resume
        ok = leak == 0 and everyone_finished and served([*originals, *arrivals])
    elif mode == "abort":  # a request that reached the engine only after the abort is held
        ok = (leak == 0 and everyone_finished and all(finishes[r][1] == "abort" for r in in_flight)
              and served([*held, *admitted_arrivals]))
    else:  # wait: running requests drain before the pause returns; queued ones are held
        ok = (leak == 0 and everyone_finished and served([*originals, *admitted_arrivals])
              and all(finishes[r][0] < resume_call or r in held for r in originals))

    return {
        "pause_api_s": pause_ret - pause_call,
        "quiesce_s": quiesce,
        "quiesce_engine_s": quiesce_engine,
        "leak_tokens": leak,
        "late_tokens": int(tokens.loc[late, "n_tokens"].sum()),
        "late_s": float(t[late].max() - pause_ret) if late.any() else 0.0,
        "gap_s": gap,
        "hold_actual_s": hold_actual,
        "gap_excess_s": gap - hold_actual,
        "resume_api_s": resume_ret - resume_call,
        "resume_ttft_s": resume_ttft,
        "resume_all_s": resume_all,
        "resume_engine_s": resume_engine,
        "preemptions": preemptions,
        "reprefill_tokens": reprefill,
        "missed": bool(missed),
        "arrivals_admitted_s": arrivals_admitted,
        "arrivals_ttft_s": arrivals_ttft,
        "second_call_s": second_call,
        "quiesce_worst_s": _worst(per_rank, "quiesce_s"),
        "resume_ttft_worst_s": _worst(per_rank, "resume_ttft_s"),
        "per_rank": json.dumps(per_rank),
        "per_server": json.dumps(per_server),
        "pause_spread_s": spread,
        "worst_server": worst_server,
        "itl_median_s": itl_median,
        "itl_max_s": itl_max,
        "held_requests": len(held),
        "rejected_requests": len(rejected),
        "tokens_expected": expected,
        "tokens_received": received,
        "finish_reasons": json.dumps(dict(sorted(reasons.items()))),
        **synced,
        **_sleep(events),
        "ok": bool(ok),
        "error": error,
    }


def for_measurement(tokens: pd.DataFrame, events: pd.DataFrame, run: pd.Series | dict) -> dict:
    """:func:`compute` for a stored measurement whose scenario columns are in ``run``."""
    return compute(tokens, events, run, error=str(run.get("error", "") or ""))
