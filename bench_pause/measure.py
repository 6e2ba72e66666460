"""The measurement protocol: provoke one pause on a running session and record it.

Written once against :class:`bench_pause.backends.base.Session`: submit ``concurrency``
streams, wait for the pause point on the first one, pause, hold, resume, and wait for
every stream to end. Every wait is bounded; a timeout or a dead engine becomes the
measurement's ``error`` with its partial trace kept, and marks the session for restart.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pandas as pd

from bench_pause import metrics, trace as tr
from bench_pause.backends.base import Session, Timeouts
from bench_pause.model import corpus
from bench_pause.scenario import Scenario

_WORDS = corpus(4000, seed=1)


@dataclass
class Measurement:
    """One measured pause: its scenario, its raw trace and what it cost."""

    scenario: Scenario
    tokens: pd.DataFrame
    events: pd.DataFrame
    metrics: dict
    engine_broken: bool


def prompts(n: int, rng: random.Random, words: int = 24) -> list[str]:
    """Distinct prompts, so no request is served from another's prefix cache."""
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) + "." for _ in range(n)]


async def _until_pause_point(reached: asyncio.Event, tasks: list[asyncio.Task], timeout: float) -> None:
    waiter = asyncio.create_task(reached.wait())
    try:
        done, _ = await asyncio.wait({waiter, *tasks}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if reached.is_set():
        return
    if not done:
        raise asyncio.TimeoutError()
    for task in done:
        if task is not waiter and task.exception() is not None:
            raise task.exception()
    raise RuntimeError("a stream ended before the pause point")


async def _until_admitted(session: Session, tasks: list[asyncio.Task], timeout: float) -> None:
    """Until every request is in the engine. A request that already finished counts: on a
    fast engine a short request can complete before the next poll sees it admitted."""
    deadline = asyncio.get_running_loop().time() + timeout
    while session.admitted() + sum(t.done() for t in tasks) < len(tasks):
        if asyncio.get_running_loop().time() > deadline:
            raise asyncio.TimeoutError()
        await asyncio.sleep(0.0005)


async def _dies_soon(session: Session, grace_s: float = 2.0) -> bool:
    """Whether the engine is dead or dies within ``grace_s``: a dropped connection is
    often seen before the server's process has finished exiting."""
    for _ in range(int(grace_s / 0.1)):
        if not session.alive():
            return True
        await asyncio.sleep(0.1)
    return not session.alive()


async def measure(session: Session, sc: Scenario, timeouts: Timeouts, rng: random.Random) -> Measurement:
    """Run one scenario on ``session``; never raises for engine faults, records them."""
    trace = tr.Trace()
    need = sc.point.tokens_before(sc.max_tokens)
    reached = asyncio.Event()

    def on_count(request: int, count: int) -> None:
        if request == 0 and count >= need:
            reached.set()

    tasks = [asyncio.create_task(session.stream(i, p, sc.max_tokens, trace, on_count))
             for i, p in enumerate(prompts(sc.concurrency, rng))]
    phase, error, broken = "pause point", "", False
    try:
        if need == 0:
            await _until_admitted(session, tasks, timeouts.stream)
        else:
            await _until_pause_point(reached, tasks, timeouts.stream)
        phase = "pause"
        trace.event(tr.PAUSE_CALL)
        detail = await asyncio.wait_for(session.pause(sc.mode, sc.clear_cache), timeouts.pause)
        trace.event(tr.PAUSE_RETURN, detail=detail)
        phase = "hold"
        await asyncio.sleep(sc.hold_s)
        phase = "resume"
        trace.event(tr.RESUME_CALL)
        detail = await asyncio.wait_for(session.resume(), timeouts.resume)
        trace.event(tr.RESUME_RETURN, detail=detail)
        phase = "streams"
        await asyncio.wait_for(asyncio.gather(*tasks), timeouts.stream)
        phase = "is_paused"
        if await asyncio.wait_for(session.is_paused(), timeouts.resume):
            error, broken = "engine still paused after resume", True
    except asyncio.TimeoutError:
        error, broken = f"timeout: {phase}", True
    except Exception as exc:  # an engine fault is a result, not a crash of the sweep
        error, broken = f"{phase}: {type(exc).__name__}: {exc}".strip(), True
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if error and await _dies_soon(session):
        error = f"engine died ({error})"
    tokens, events = trace.tokens_frame(), trace.events_frame()
    values = metrics.compute(tokens, events, sc.mode, sc.max_tokens, sc.concurrency, sc.hold_s, error=error)
    return Measurement(sc, tokens, events, values, broken)
