"""What a pause cost, computed from one trace. Pure functions: no engine needed.

All durations are seconds. Column names of :func:`compute` are the interface other
modules (summary, plots, compare, asv) read.

Definitions (client clock unless the name says ``engine``):

- ``pause_api_s``: pause call to its return.
- ``quiesce_s``: pause call to the last token delivered between the call and its
  return (0 when no token came in that window): how long the engine kept producing.
- ``leak_tokens``: tokens that arrived after the pause returned and before resume was
  called. A correct engine delivers none.
- ``gap_s``: the first request's inter-token gap spanning the pause: its first token
  after the resume call minus its last token before it (its submit time when it had
  none, i.e. a ``prefill`` pause). NaN when it never produced a token after resume.
- ``gap_excess_s``: ``gap_s - hold_s``, what the pause added beyond the hold.
- ``resume_api_s``, ``resume_ttft_s``: resume call to its return / to the first token
  of any request after it.
- ``itl_median_s``, ``itl_max_s``: the first request's per-token latency outside the
  pause, to tell a pause effect from a background stall.
- ``held_requests``: requests that got no token before the resume call and were served
  after it: queued in the engine when the pause came (vLLM's wait mode drains only the
  running requests; a waiting one is held like in keep).
- ``tokens_expected``, ``tokens_received``, ``finish_reasons``.
- ``ok``: the mode's contract held. keep: no leak, every token delivered, every request
  finished by length. abort: no leak, every request unfinished at the pause call ended
  with ``abort``. wait: no leak, every token delivered, and every request either finished
  before the pause returned or was held (see ``held_requests``).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd

from bench_pause import trace as tr

# The metrics a benchmark tracks, with their units: what summaries, plots and asv show.
HEADLINE = {
    "pause_api_s": "s",
    "quiesce_s": "s",
    "gap_excess_s": "s",
    "resume_ttft_s": "s",
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


def compute(tokens: pd.DataFrame, events: pd.DataFrame, mode: str, max_tokens: int,
            concurrency: int, hold_s: float, error: str = "") -> dict:
    """Metrics of one measured pause from its token and event tables."""
    tokens = tokens.sort_values("t", kind="stable")
    pause_call = _event_time(events, tr.PAUSE_CALL)
    pause_ret = _event_time(events, tr.PAUSE_RETURN)
    resume_call = _event_time(events, tr.RESUME_CALL)
    resume_ret = _event_time(events, tr.RESUME_RETURN)
    finishes = _finishes(events)

    t = tokens["t"]
    in_pause_call = tokens[(t >= pause_call) & (t <= pause_ret)]
    quiesce = float(in_pause_call["t"].max() - pause_call) if len(in_pause_call) else 0.0
    quiesce_engine = math.nan
    if len(in_pause_call) and in_pause_call["engine_t"].notna().any():
        quiesce_engine = float(in_pause_call["engine_t"].max() - pause_call)
    elif "engine_t" in tokens and tokens["engine_t"].notna().any():
        quiesce_engine = 0.0
    leak = int(tokens.loc[(t > pause_ret) & (t < resume_call), "n_tokens"].sum())

    first = tokens[tokens["request"] == 0]
    before = first[first["t"] < resume_call]
    after = first[first["t"] >= resume_call]
    submit0 = events.loc[(events["event"] == tr.SUBMIT) & (events["request"] == 0), "t"]
    prev = float(before["t"].iloc[-1]) if len(before) else (float(submit0.iloc[0]) if len(submit0) else math.nan)
    nxt = float(after["t"].iloc[0]) if len(after) else math.nan
    gap = nxt - prev
    resumed = tokens[t >= resume_call]
    resume_ttft = float(resumed["t"].iloc[0] - resume_call) if len(resumed) else math.nan
    itl_median, itl_max = _itl(first, (prev, nxt) if not math.isnan(gap) else (math.inf, -math.inf))

    started_before_resume = set(tokens.loc[t < resume_call, "request"].unique())
    held = {r for r in range(concurrency) if r not in started_before_resume and r in set(tokens["request"])}
    received = int(tokens["n_tokens"].sum())
    expected = concurrency * max_tokens
    per_request = tokens.groupby("request")["n_tokens"].sum()
    reasons = Counter(reason for _, reason in finishes.values())
    everyone_finished = len(finishes) == concurrency
    all_tokens = received == expected and all(per_request.get(r, 0) == max_tokens for r in range(concurrency))

    if error:
        ok = False
    elif mode == "keep":
        ok = leak == 0 and all_tokens and everyone_finished and set(reasons) == {"length"}
    elif mode == "abort":
        running = [r for r in range(concurrency) if finishes.get(r, (math.inf, ""))[0] >= pause_call]
        ok = leak == 0 and everyone_finished and all(finishes[r][1] == "abort" for r in running)
    else:  # wait: running requests drain before the pause returns; queued ones are held
        ok = (leak == 0 and all_tokens and everyone_finished
              and all(ft <= pause_ret or r in held for r, (ft, _) in finishes.items()))

    return {
        "pause_api_s": pause_ret - pause_call,
        "quiesce_s": quiesce,
        "quiesce_engine_s": quiesce_engine,
        "leak_tokens": leak,
        "gap_s": gap,
        "gap_excess_s": gap - hold_s,
        "resume_api_s": resume_ret - resume_call,
        "resume_ttft_s": resume_ttft,
        "itl_median_s": itl_median,
        "itl_max_s": itl_max,
        "held_requests": len(held),
        "tokens_expected": expected,
        "tokens_received": received,
        "finish_reasons": json.dumps(dict(sorted(reasons.items()))),
        "ok": bool(ok),
        "error": error,
    }


def for_measurement(tokens: pd.DataFrame, events: pd.DataFrame, run: pd.Series | dict) -> dict:
    """:func:`compute` for a stored measurement whose scenario columns are in ``run``."""
    return compute(tokens, events, run["mode"], int(run["max_tokens"]), int(run["concurrency"]),
                   float(run["hold_s"]), error=str(run.get("error", "") or ""))
