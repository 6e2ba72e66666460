"""The trace of one measured pause: every token arrival and every control event.

Times are client ``time.monotonic()`` seconds. Engine-side timestamps (vLLM's
``RequestOutput.metrics``) are CLOCK_MONOTONIC on the same host, so they are
comparable; they are NaN where the backend does not expose them (HTTP).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd

from bench_pause.scenario import Scenario

# ``ids``: the output's token ids, comma-separated, where the cycle asked for them (a
# weight_sync tells which weights made each token by its id); "" elsewhere.
TOKEN_COLUMNS = ["request", "index", "n_tokens", "t", "engine_t", "ids"]
EVENT_COLUMNS = ["event", "request", "t", "detail"]

# Control events, in the order they normally happen.
SUBMIT = "submit"
PAUSE_CALL = "pause_call"
PAUSE_RETURN = "pause_return"
RESUME_CALL = "resume_call"
RESUME_RETURN = "resume_return"
FINISH = "finish"
# A FINISH detail of our own: the engine refused the request (vLLM 0.33 on refuses requests
# sent during an abort or wait pause, with RetryableRequestError in-process, HTTP 503).
REJECTED = "rejected"
# Facts recorded beside them: a request's prompt length (detail), all requests submitted
# during a pause taken in by the engine, the duplicate calls of the edge cycles, and the
# engine's preemption counters per engine (JSON) before and after the measurement.
PROMPT = "prompt"
ADMITTED = "admitted"
PAUSE_CALL_2 = "pause_call_2"
PAUSE_RETURN_2 = "pause_return_2"
RESUME_CALL_2 = "resume_call_2"
RESUME_RETURN_2 = "resume_return_2"
COUNTERS = "counters"
# A weight_sync cycle, between the pause and the resume: the idle probe (its detail: each
# worker's answer, JSON) and the push's three calls (the start's detail: the sets, JSON).
IDLE_CALL = "idle_call"
IDLE_RETURN = "idle_return"
SYNC_START_CALL = "sync_start_call"
SYNC_START_RETURN = "sync_start_return"
SYNC_UPDATE_RETURN = "sync_update_return"
SYNC_FINISH_RETURN = "sync_finish_return"
# A sleep cycle: its sleep is recorded as the pause call and return, and the wake_up that
# resumes scheduling as the resume call and return; a split wake's first call (the weights)
# beside them. Each GPU's memory in use (the workers' answers, JSON) before the sleep,
# asleep and after the wake: the detail {"phase": ..., "workers": [...]}.
WAKE_CALL = "wake_call"
WAKE_RETURN = "wake_return"
MEMORY = "memory"
# A sleep that keeps the weights (levels 0 and 1) on an engine holding a staged set: which
# one (its detail: {"set": ..., "tokens": [...]}), recorded before the requests.
WEIGHTS_HELD = "weights_held"
# vLLM's own weight-operation histogram (sum, count per operation; JSON) before and after
# the measurement, where the engine exposes it (its HTTP routes).
WEIGHT_OPS = "weight_ops"


@dataclass
class Trace:
    """Mutable recorder used while a measurement runs; frozen into DataFrames after."""

    tokens: list[tuple[int, int, int, float, float, str]] = field(default_factory=list)
    events: list[tuple[str, int, float, str]] = field(default_factory=list)
    _counts: dict[int, int] = field(default_factory=dict)

    def token(self, request: int, n_tokens: int, engine_t: float | None = None,
              ids: list[int] | None = None) -> int:
        """Record one streamed output carrying ``n_tokens`` new tokens; returns the running count."""
        now = time.monotonic()
        index = self._counts.get(request, 0)
        self._counts[request] = index + n_tokens
        self.tokens.append((request, index, n_tokens, now, math.nan if engine_t is None else engine_t,
                            ",".join(map(str, ids)) if ids else ""))
        return index + n_tokens

    def event(self, name: str, request: int = -1, detail: str = "", t: float | None = None) -> float:
        now = time.monotonic() if t is None else t
        self.events.append((name, request, now, detail))
        return now

    def tokens_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.tokens, columns=TOKEN_COLUMNS)
        return df.astype({"request": "int64", "index": "int64", "n_tokens": "int64",
                          "t": "float64", "engine_t": "float64", "ids": "string"})

    def events_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.events, columns=EVENT_COLUMNS)
        return df.astype({"event": "string", "request": "int64", "t": "float64", "detail": "string"})


@dataclass
class Measurement:
    """One measured pause: its scenario, its frozen trace and what it cost."""

    scenario: Scenario
    tokens: pd.DataFrame
    events: pd.DataFrame
    metrics: dict
    engine_broken: bool
