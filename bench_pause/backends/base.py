"""What every backend provides to the measurement: streams, pause, resume, liveness.

A session is one running engine (or server). The measurement protocol in
:mod:`bench_pause.measure` is written once against this interface, so the in-process
engine and the HTTP server are measured by the same code.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Callable

from bench_pause import procs
from bench_pause.trace import Trace

# Called with (request, tokens received so far) after every streamed output.
OnCount = Callable[[int, int], None]


class EngineDied(RuntimeError):
    """The engine or server process is gone; the session must be restarted."""


class StartupFailed(RuntimeError):
    """The engine or server did not come up within its timeout (after retries)."""


@dataclass
class Timeouts:
    """Every wait on the engine is bounded by one of these (seconds)."""

    startup: float = 300.0
    pause: float = 60.0
    resume: float = 60.0
    stream: float = 120.0
    sync: float = 600.0  # one weight_sync push of a full weight set


@dataclass
class SessionInfo:
    """Facts about one engine start, recorded in meta.json."""

    backend: str
    dp_size: int
    model: str
    startup_s: float = float("nan")  # stays NaN for a server started elsewhere (--url)
    retries: int = 0
    extra: dict = field(default_factory=dict)


class Session(abc.ABC):
    """One running engine, measured through one backend."""

    backend: str
    # False for a server someone else started (--url): connecting to it is no start-up.
    launches = True
    # What a weight_sync push loads next (weight_sync.EngineWeights); set by weight_sync.attach.
    weights = None

    def __init__(self, info: SessionInfo, timeouts: Timeouts) -> None:
        self.info = info
        self.timeouts = timeouts
        self._shm_before: set[str] | None = None  # /dev/shm before the engine started

    async def start(self) -> None:
        """Start the engine, retrying once: first starts sometimes hang (FACTS.md)."""
        last: Exception | None = None
        if self._shm_before is None:
            self._shm_before = procs.shm_names()
        for attempt in range(2):
            t0 = time.monotonic()
            try:
                await self._start()
            except StartupFailed as exc:
                last = exc
                await self.close()
                self.info.retries = attempt + 1
                continue
            except BaseException:  # an error, Ctrl-C or SIGTERM mid-start: leave no process behind
                await self.close()
                raise
            if self.launches:
                self.info.startup_s = time.monotonic() - t0
            return
        raise StartupFailed(f"{self.backend} engine did not start after 2 tries: {last}")

    @abc.abstractmethod
    async def _start(self) -> None:
        """Start once; raise StartupFailed on timeout or early exit."""

    @abc.abstractmethod
    async def stream(self, request: int, prompt: str, max_tokens: int, trace: Trace,
                     on_count: OnCount, rank: int | None = None, ids: bool = False) -> None:
        """Submit one request and record its tokens, prompt length and finish reason into
        ``trace``; ``rank`` routes it to one data-parallel rank (None: vLLM's balancer);
        ``ids``: record the token ids too (a weight_sync cycle reads them)."""

    @abc.abstractmethod
    async def counters(self) -> dict[str, dict]:
        """vLLM's cumulative counters (vllm_compat.counters): ``preemptions`` per engine
        index, ``weight_ops`` (seconds, count) per weight-transfer operation; each {} if
        unreadable."""

    @abc.abstractmethod
    def admitted(self) -> int:
        """How many submitted requests the engine (or server) has taken in so far.

        A ``prefill`` pause is called once every request is in, so that it finds them
        in the engine rather than arriving while paused.
        """

    @abc.abstractmethod
    async def pause(self, mode: str, clear_cache: bool) -> str:
        """Pause generation; returns a detail string recorded with the event."""

    @abc.abstractmethod
    async def resume(self) -> str:
        """Resume generation; returns a detail string recorded with the event."""

    @abc.abstractmethod
    async def is_paused(self) -> bool: ...

    async def sleep(self, level: int, mode: str) -> str:
        """Put the engine to sleep (vLLM's ``sleep(level, mode)``: a pause in ``mode``, then at
        level 1 or 2 its memory freed); returns a detail string recorded with the event."""
        raise NotImplementedError(f"the {self.backend} backend cannot sleep")

    async def wake_up(self, tags: list[str] | None) -> str:
        """vLLM's ``wake_up(tags)`` (None: everything asleep); scheduling resumes once every
        tag is back. Returns a detail string recorded with the event."""
        raise NotImplementedError(f"the {self.backend} backend cannot wake up")

    @staticmethod
    def wakes_all(tags: list[str] | None) -> bool:
        """Whether a wake_up with ``tags`` is the one that resumes scheduling (the sleep
        cycle's last: everything, the KV cache after the weights, or a level-0 sleep's)."""
        return tags is None or bool({"kv_cache", "scheduling"} & set(tags))

    async def memory(self) -> list[dict]:
        """Every worker's device memory in use (``bench_pause_memory``, transfer_worker), by
        collective RPC."""
        raise NotImplementedError(f"the {self.backend} backend cannot read its workers' memory")

    async def weight_update(self, step: str, info: dict | None = None) -> str:
        """One call of vLLM's weight-transfer API: ``init`` (with its init info), ``start``,
        ``update`` (with the update info) or ``finish``; a weight_sync cycle's push."""
        raise NotImplementedError(f"the {self.backend} backend cannot push weights")

    async def idle_probe(self) -> list[dict]:
        """Every worker's answer to ``bench_pause_idle`` (transfer_worker), by collective RPC."""
        raise NotImplementedError(f"the {self.backend} backend cannot probe its workers")

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the engine's processes are still running."""

    async def close(self) -> None:
        """Stop the engine and every process it started, then unlink the shared memory they
        left (:func:`bench_pause.procs.unlink_orphans`). Safe to call twice."""
        await self._close()
        if self._shm_before is not None:
            procs.unlink_orphans(self._shm_before)

    @abc.abstractmethod
    async def _close(self) -> None:
        """Stop the engine and every process it started. Safe to call twice."""

    async def __aenter__(self) -> "Session":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
