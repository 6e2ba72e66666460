"""The client's side of a ``weight_sync`` cycle: stage the trainer's weight sets, set the
engine up for them, and push one set through vLLM's weight-transfer API while paused.

Data flow: the sweep stages both sets once (``stage``: the trainer runs as its own
process), starts engines with ``ENGINE_ARGS``, calls ``attach`` on every new engine (vLLM's
``init_weight_transfer_engine``), and ``measure`` calls ``push`` between the pause and the
resume. Each push loads the set the engine does not hold (A, B, A, ...), so every cycle
changes the tokens the engine makes, and the trace says which set each token came from:
``push`` records the old and the new set's tokens with its first event (metrics reads them).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_pause import trace as tr
from bench_pause.backends.base import Session, Timeouts
from bench_pause.scenario import ScenarioError

BACKEND = "bench_shm"  # transfer_worker.BACKEND, without importing vLLM here
EXTENSION = "bench_pause.transfer_worker.BenchPauseWorker"
# As one --engine-args string (the sweep splits those like a shell).
ENGINE_ARGS = shlex.join(["--weight-transfer-config", json.dumps({"backend": BACKEND}),
                          "--worker-extension-cls", EXTENSION])
OWN_FLAGS = {"--weight-transfer-config", "--worker-extension-cls"}


@dataclass(frozen=True)
class WeightSet:
    """One staged set (bench_pause.trainer writes it): its files in push order (the tensors
    both sets share, in chunks, then its own), the tokens greedy decoding can emit with it,
    and the bytes a push moves."""

    name: str
    paths: tuple[str, ...]
    tokens: tuple[int, ...]
    bytes: int


@dataclass
class Staged:
    """Both weight sets, staged in ``dir`` (shared memory where the host has it)."""

    sets: list[WeightSet]
    dir: Path

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class EngineWeights:
    """What one engine holds: which staged set (None: the model's own weights)."""

    staged: Staged
    loaded: int | None = None

    def next(self) -> tuple[WeightSet | None, int]:
        """The set loaded now (None: the model's own) and the index of the one to push."""
        old = None if self.loaded is None else self.staged.sets[self.loaded]
        return old, 0 if self.loaded is None else 1 - self.loaded


def stage(model: str, timeout_s: float = 900.0) -> Staged:
    """Run the trainer (``python -m bench_pause.trainer``) to write both sets; a model it
    cannot mark, or one with no weight files, is a ScenarioError (before any engine)."""
    shm = Path("/dev/shm")
    out = Path(tempfile.mkdtemp(prefix="bench-pause-weights-", dir=shm if shm.is_dir() else None))
    try:
        done = subprocess.run([sys.executable, "-m", "bench_pause.trainer", model, str(out)],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise ScenarioError(f"the trainer did not stage the weight sets within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise ScenarioError(f"weight_sync: the trainer could not stage {model}: {lines[-1]}")
    sets = [WeightSet(s["name"], tuple(s["paths"]), tuple(s["tokens"]), s["bytes"]) for s in json.loads(done.stdout)]
    return Staged(sets, out)


async def attach(session: Session, staged: Staged, timeouts: Timeouts) -> None:
    """Set a freshly started engine up for pushes (vLLM's ``init_weight_transfer_engine``)."""
    await asyncio.wait_for(session.weight_update("init", {}), timeouts.pause)
    session.weights = EngineWeights(staged)


async def push(session: Session, trace: tr.Trace, timeouts: Timeouts) -> None:
    """Push the set the engine does not hold: start, one update per file, finish, each
    bounded by a timeout."""
    weights: EngineWeights | None = session.weights
    if weights is None:
        raise RuntimeError("weight_sync on an engine that was not attached (weight_sync.attach)")
    old, index = weights.next()
    new = weights.staged.sets[index]
    trace.event(tr.SYNC_START_CALL, detail=json.dumps(
        {"set": new.name, "bytes": new.bytes, "chunks": len(new.paths), "new": list(new.tokens),
         "old": list(old.tokens) if old else None}))
    weights.loaded = None  # unknown until the push finishes
    await asyncio.wait_for(session.weight_update("start"), timeouts.pause)
    trace.event(tr.SYNC_START_RETURN)
    for path in new.paths:
        await asyncio.wait_for(session.weight_update("update", {"path": path}), timeouts.sync)
    trace.event(tr.SYNC_UPDATE_RETURN)
    await asyncio.wait_for(session.weight_update("finish"), timeouts.pause)
    trace.event(tr.SYNC_FINISH_RETURN)
    weights.loaded = index


async def idle_probe(session: Session, trace: tr.Trace, timeouts: Timeouts) -> None:
    """Ask every worker to synchronise its device and say when it had (transfer_worker)."""
    trace.event(tr.IDLE_CALL)
    answers = await asyncio.wait_for(session.idle_probe(), timeouts.pause)
    trace.event(tr.IDLE_RETURN, detail=json.dumps(answers))
