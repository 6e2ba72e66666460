"""Several vLLM servers paused as one: how an RL framework that outgrew one machine sees it.

Frameworks that run one server per node (SkyRL, prime-rl) send ``/pause`` to every server
at once, hold, and ``/resume`` them all; the trainer waits for the slowest. A fleet is a
list of :class:`~bench_pause.backends.http.HttpSession` attached to running servers
(``--url`` given more than once). Requests go round robin over the servers (see
:func:`bench_pause.scenario.route`); a pause or resume is issued to all of them together
and returns when the last answered, with each server's return time in its detail, so the
metrics can name the slowest server.
"""

from __future__ import annotations

import asyncio
import json
import time

from bench_pause.backends.base import OnCount, Session, SessionInfo, Timeouts
from bench_pause.backends.http import HttpSession
from bench_pause.scenario import route
from bench_pause.trace import Trace


class FleetSession(Session):
    backend = "http"
    launches = False  # servers started elsewhere (--url)

    def __init__(self, urls: list[str], dp_size: int, timeouts: Timeouts, log_dir: object) -> None:
        super().__init__(SessionInfo("http", dp_size, ""), timeouts)
        self.servers = [HttpSession(None, dp_size, timeouts, log_dir, url=url) for url in urls]

    async def _start(self) -> None:
        await asyncio.gather(*(s._start() for s in self.servers))
        models = {s.model_id for s in self.servers}
        self.info.model = " ".join(sorted(models))
        self.info.extra = {"urls": [s.url for s in self.servers],
                           "servers": [s.info.extra for s in self.servers]}

    async def stream(self, request: int, prompt: str, max_tokens: int, trace: Trace,
                     on_count: OnCount, rank: int | None = None, ids: bool = False) -> None:
        server, _ = route(request, len(self.servers), self.info.dp_size)
        await self.servers[server].stream(request, prompt, max_tokens, trace, on_count, rank, ids)

    def admitted(self) -> int:
        return sum(s.admitted() for s in self.servers)

    async def _all(self, calls: list) -> str:
        """Run one call per server concurrently; the detail records when each returned."""
        async def timed(call) -> tuple[float, str]:
            answer = await call
            return time.monotonic(), answer

        done = await asyncio.gather(*(timed(c) for c in calls))
        return json.dumps({"returns": [t for t, _ in done], "answers": [a for _, a in done]})

    async def pause(self, mode: str, clear_cache: bool) -> str:
        return await self._all([s.pause(mode, clear_cache) for s in self.servers])

    async def resume(self) -> str:
        return await self._all([s.resume() for s in self.servers])

    async def is_paused(self) -> bool:
        return any(await asyncio.gather(*(s.is_paused() for s in self.servers)))

    async def counters(self) -> dict[str, dict]:
        """Each server's preemptions under its global rank numbers (server * dp_size + rank);
        no weight operations (a fleet of servers started elsewhere takes no weight_sync)."""
        out: dict[str, float] = {}
        for k, counts in enumerate(await asyncio.gather(*(s.counters() for s in self.servers))):
            for engine, value in counts["preemptions"].items():
                out[str(k * self.info.dp_size + int(engine))] = value
        return {"preemptions": out, "weight_ops": {}}

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)

    async def _close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers))
