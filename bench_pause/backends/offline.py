"""The in-process backend: vLLM's AsyncLLM, driven on this event loop.

Engine-side timestamps come from ``RequestOutput.metrics.last_token_ts`` (the engine
core's CLOCK_MONOTONIC), copied at each yield because vLLM updates the object in place.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

from bench_pause import procs, vllm_compat
from bench_pause.backends.base import OnCount, Session, SessionInfo, StartupFailed, Timeouts
from bench_pause.trace import FINISH, PROMPT, REJECTED, SUBMIT, Trace
from bench_pause.vllm_compat import EngineConfig


class OfflineSession(Session):
    backend = "offline"

    def __init__(self, config: EngineConfig, dp_size: int, timeouts: Timeouts) -> None:
        super().__init__(SessionInfo("offline", dp_size, config.model), timeouts)
        self.config = config
        self.api = vllm_compat.pause_api()
        self.refused = vllm_compat.refusals()
        self._paused = False  # between a pause call and the return of the resume call
        self.engine = None
        self._pids: set[int] = set()

    async def _start(self) -> None:
        engine_args = self.config.async_engine_args(self.info.dp_size)
        before = procs.descendants()
        timed_out = threading.Event()

        def watchdog() -> None:
            # AsyncLLM's constructor blocks until the engine core's handshake; killing the
            # children it spawned makes that handshake fail instead of hanging forever.
            timed_out.set()
            procs.stop(procs.descendants() - before, grace_s=2.0)

        timer = threading.Timer(self.timeouts.startup, watchdog)
        timer.start()
        try:
            self.engine = vllm_compat.async_llm_class().from_engine_args(engine_args)
        except Exception as exc:
            self._pids = procs.descendants() - before
            if timed_out.is_set():
                raise StartupFailed(f"no engine after {self.timeouts.startup:.0f} s") from exc
            raise
        finally:
            timer.cancel()
        self._pids = procs.descendants() - before

    async def stream(self, request: int, prompt: str, max_tokens: int, trace: Trace,
                     on_count: OnCount, rank: int | None = None, ids: bool = False) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                                output_kind=RequestOutputKind.DELTA)
        finish = "none"
        trace.event(SUBMIT, request)
        prompt_seen, sent_paused = False, self._paused
        try:
            async for out in self.engine.generate(prompt, params, request_id=f"{uuid.uuid4().hex}-{request}",
                                                  data_parallel_rank=rank):
                if not prompt_seen and out.prompt_token_ids is not None:
                    trace.event(PROMPT, request, detail=str(len(out.prompt_token_ids)))
                    prompt_seen = True
                completion = out.outputs[0]
                n = len(completion.token_ids)
                if n:
                    m = out.metrics
                    engine_t = getattr(m, "last_token_ts", 0.0) if m is not None else 0.0
                    on_count(request, trace.token(request, n, engine_t or None,
                                                  list(completion.token_ids) if ids else None))
                if out.finished:
                    finish = str(completion.finish_reason)
        except self.refused:
            if not sent_paused:
                raise
            finish = REJECTED  # sent during an abort or wait pause, refused (0.33 on)
        trace.event(FINISH, request, detail=finish)

    def admitted(self) -> int:
        # Requests are registered here right before they are sent to the engine core, on
        # the same socket as the pause call, so the engine sees them first.
        return vllm_compat.unfinished_requests(self.engine)

    async def pause(self, mode: str, clear_cache: bool) -> str:
        self._paused = True
        await vllm_compat.call_pause(self.engine, self.api, mode, clear_cache)
        return ""

    async def resume(self) -> str:
        await vllm_compat.before_resume()
        await self.engine.resume_generation()
        self._paused = False
        return ""

    async def is_paused(self) -> bool:
        return bool(await self.engine.is_paused())

    async def sleep(self, level: int, mode: str) -> str:
        await vllm_compat.before_pause()
        self._paused = True
        await self.engine.sleep(level=level, mode=mode)
        return ""

    async def wake_up(self, tags: list[str] | None) -> str:
        last = self.wakes_all(tags)
        if last:
            await vllm_compat.before_resume()
        awake = await self.engine.wake_up(tags)  # whether fully awake from 0.32, None before
        if last:
            self._paused = False
        return "" if awake is None else json.dumps({"fully_awake": bool(awake)})

    async def memory(self) -> list[dict]:
        return list(await self.engine.collective_rpc("bench_pause_memory"))

    async def weight_update(self, step: str, info: dict | None = None) -> str:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest
        if step == "init":
            await self.engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info=info or {}))
        elif step == "start":
            await self.engine.start_weight_update()
        elif step == "update":
            await self.engine.update_weights(WeightTransferUpdateRequest(update_info=info or {}))
        elif step == "finish":
            await self.engine.finish_weight_update()
        else:
            raise ValueError(f"no weight-transfer step {step!r}")
        return ""

    async def idle_probe(self) -> list[dict]:
        return list(await self.engine.collective_rpc("bench_pause_idle"))

    async def counters(self) -> dict[str, dict]:
        # vLLM's Prometheus logger keeps its counters in this process's default registry.
        from prometheus_client import REGISTRY, generate_latest
        return vllm_compat.counters(generate_latest(REGISTRY).decode())

    def alive(self) -> bool:
        if self.engine is None or not procs.alive(self._pids):
            return False
        return not vllm_compat.engine_dead(self.engine)

    async def _close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            # vLLM's shutdown stops the engine core before it cancels the output handler, which
            # meanwhile logs the core's death as an ERROR with a traceback on every engine switch
            # of a sweep; nothing is in flight here, so the handler goes first.
            handler = getattr(engine, "output_handler", None)
            if handler is not None:
                handler.cancel()
            try:
                await asyncio.wait_for(asyncio.to_thread(engine.shutdown), timeout=30)
            except Exception:  # a dead engine may fail to shut down cleanly; the stop below is what counts
                pass
        procs.stop({p for p in self._pids if procs.alive({p})}, grace_s=10.0)
        self._pids = set()
