"""Does the weight_sync idle probe mean "no step in progress"? A check on a real engine.

The probe (transfer_worker.BenchPauseWorker.bench_pause_idle) is a collective RPC; the
engine core serves those between steps. If so, a probe sent while the engine generates
must wait for the step in progress, and one sent while paused must not. This starts the
default model's engine (offline backend), then times 40 probes each way: paused, and
while 16 streams generate. It prints call-to-answer p50 / p90 / max and the decode step
time. Run: .venv/bin/python tools/idle-probe-check.py [MODEL] (a preset or a model
directory; the host's default model without one).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time

from bench_pause import vllm_compat, weight_sync
from bench_pause.backends.base import Timeouts
from bench_pause.backends.offline import OfflineSession
from bench_pause.measure import prompts
from bench_pause.model import default_model, resolve_model
from bench_pause.trace import Trace


def tails(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs) * 1e3:.2f} / p90 {xs[int(0.9 * (len(xs) - 1))] * 1e3:.2f} / max {xs[-1] * 1e3:.2f} ms"


WAITED: list[float] = []  # each answer's device synchronisation, by the phase printed last


async def probe(session: OfflineSession) -> float:
    t0 = time.monotonic()
    answers = await asyncio.wait_for(session.idle_probe(), 30)
    WAITED.extend(a.get("waited", float("nan")) for a in answers)
    return time.monotonic() - t0


async def main() -> None:
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # this process may hold CUDA already
    gpu = vllm_compat.on_gpu()
    model = resolve_model(sys.argv[1]) if len(sys.argv) > 1 else default_model(gpu, vllm_compat.gpu_memory_gib())
    config = vllm_compat.engine_config(model, [weight_sync.engine_args("shm")], gpu)
    session = OfflineSession(config, 1, Timeouts())
    await session.start()
    try:
        rng = random.Random(0)
        await session.pause("keep", False)
        paused = [await probe(session) for _ in range(40)]
        paused_waits = list(WAITED)
        WAITED.clear()
        await session.resume()
        trace = Trace()
        streams = [asyncio.create_task(session.stream(i, p, 1500, trace, lambda r, n: None))
                   for i, p in enumerate(prompts(16, rng))]
        await asyncio.sleep(1.0)
        running = []
        for _ in range(40):
            running.append(await probe(session))
            await asyncio.sleep(rng.uniform(0, 0.01))
        for s in streams:
            s.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        first = trace.tokens_frame()
        steps = first[first["request"] == 0]["t"].diff().dropna()
        print(f"vLLM {vllm_compat.vllm_version()}, {'GPU' if gpu else 'CPU'}")
        print(f"paused:     {tails(paused)}; the device sync inside: {tails(paused_waits)}")
        print(f"generating: {tails(running)}; the device sync inside: {tails(WAITED)}  "
              f"(16 streams; decode step p50 {steps.median() * 1e3:.2f} ms)")
    finally:
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
