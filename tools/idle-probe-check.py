"""Does the weight_sync idle probe mean "no step in progress"? A check on a real engine.

The probe (transfer_worker.BenchPauseWorker.bench_pause_idle) is a collective RPC; the
engine core serves those between steps. If so, a probe sent while the engine generates
must wait for the step in progress, and one sent while paused must not. This starts the
default model's engine (offline backend), then times 40 probes each way: paused, and
while 16 streams generate. It prints call-to-answer p50 / p90 / max and the decode step
time. Run: .venv/bin/python tools/idle-probe-check.py
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from bench_pause import vllm_compat, weight_sync
from bench_pause.backends.base import Timeouts
from bench_pause.backends.offline import OfflineSession
from bench_pause.measure import prompts
from bench_pause.model import default_model
from bench_pause.trace import Trace


def tails(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs) * 1e3:.2f} / p90 {xs[int(0.9 * (len(xs) - 1))] * 1e3:.2f} / max {xs[-1] * 1e3:.2f} ms"


async def probe(session: OfflineSession) -> float:
    t0 = time.monotonic()
    await asyncio.wait_for(session.idle_probe(), 30)
    return time.monotonic() - t0


async def main() -> None:
    gpu = vllm_compat.on_gpu()
    config = vllm_compat.engine_config(default_model(gpu, vllm_compat.gpu_memory_gib()), [weight_sync.ENGINE_ARGS], gpu)
    session = OfflineSession(config, 1, Timeouts())
    await session.start()
    try:
        rng = random.Random(0)
        await session.pause("keep", False)
        paused = [await probe(session) for _ in range(40)]
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
        print(f"paused:     {tails(paused)}")
        print(f"generating: {tails(running)}  (16 streams; decode step p50 {steps.median() * 1e3:.2f} ms)")
    finally:
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
