"""The client's side of a ``weight_sync`` cycle: stage the trainer's weight sets, set the
engine up for them, and push one set through vLLM's weight-transfer API while paused.

Data flow: the sweep stages both sets once (``stage``: the trainer runs as its own
process), starts engines with ``engine_args(transfer)``, calls ``attach`` on every new
engine (vLLM's ``init_weight_transfer_engine``), and ``measure`` calls ``push`` between the
pause and the resume.

Transfers (``TRANSFERS``): ``ipc`` and ``ipc_packed`` are vLLM's own CUDA-IPC backend, fed
by a trainer process that holds both sets on the engine's GPU (unpacked: one update whose
handles point at the trainer's tensors; packed: vLLM's reused IPC buffer, one update per
buffer); ``nccl`` and ``nccl_packed`` are vLLM's NCCL backend, the trainer on a GPU of its
own broadcasting to every worker while the engine's one update receives (unpacked: one
broadcast per tensor; packed: vLLM's double-buffered 1 GiB chunks); ``shm`` is
bench-pause's host-memory backend for hosts without CUDA (transfer_worker). Each push
loads the set the engine does not hold (A, B, A, ...), so every cycle changes the tokens
the engine makes, and the trace says which set each token came from: ``push`` records the
old and the new set's tokens with its first event (metrics reads them).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from bench_pause import trace as tr
from bench_pause import vllm_compat
from bench_pause.backends.base import Session, Timeouts
from bench_pause.scenario import ScenarioError

# Each transfer and vLLM's backend that receives it (bench_shm: transfer_worker.BACKEND).
TRANSFERS = {"shm": "bench_shm", "ipc": "ipc", "ipc_packed": "ipc", "nccl": "nccl", "nccl_packed": "nccl"}
EXTENSION = "bench_pause.transfer_worker.BenchPauseWorker"
OWN_FLAGS = {"--weight-transfer-config", "--worker-extension-cls"}
# vLLM's IPC backend unpickles the trainer's handles only where this is set (engine side).
IPC_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"
# GPU memory kept free beside the trainer's sets and the engine's share: CUDA contexts, the
# packed buffers, the layers a reload has in flight.
HEADROOM_BYTES = 8 << 30
PACKED_BUFFER_BYTES = 1 << 30  # vLLM's packed IPC buffer (packed_tensor.DEFAULT_PACKED_BUFFER_SIZE_BYTES)
PACKED_NUM_BUFFERS = 2  # and how many of them packed NCCL cycles through (DEFAULT_PACKED_NUM_BUFFERS)


def nccl(transfer: str) -> bool:
    """Whether ``transfer`` is vLLM's NCCL backend: a trainer on a GPU of its own, in one
    collective with every worker."""
    return TRANSFERS[transfer] == "nccl"


def engine_args(transfer: str) -> str:
    """The engine flags a weight_sync cycle needs, as one --engine-args string (the sweep
    splits those like a shell)."""
    return shlex.join(["--weight-transfer-config", json.dumps({"backend": TRANSFERS[transfer]}),
                       "--worker-extension-cls", EXTENSION])


def gpu_share(trainer_bytes: int, total_bytes: int) -> float:
    """The ``--gpu-memory-utilization`` an engine can take beside a trainer holding
    ``trainer_bytes`` on its GPU (at most vLLM's default 0.9); ScenarioError where the
    two do not fit."""
    share = math.floor((total_bytes - trainer_bytes - HEADROOM_BYTES) / total_bytes * 20) / 20
    if share < 0.2:
        raise ScenarioError(f"weight_sync over CUDA IPC: the trainer's two sets ({trainer_bytes / 2**30:.0f} GiB) "
                            f"and an engine do not fit one GPU of {total_bytes / 2**30:.0f} GiB; "
                            "use --transfer ipc_packed (the trainer in host memory) or shm")
    return min(share, 0.9)


def own_gpu(count: int, engine_gpus: int) -> int:
    """The GPU an NCCL trainer takes, by index among the ``count`` visible: the first after
    the ``engine_gpus`` the engine takes; ScenarioError where none is left (NCCL refuses
    two ranks of one group on one device)."""
    if count <= engine_gpus:
        raise ScenarioError(f"--transfer nccl: the trainer needs a GPU of its own beside the engine's {engine_gpus}, "
                            f"and {count} are visible: measure a smaller --dp")
    return engine_gpus


@dataclass(frozen=True)
class Placement:
    """Where the trainer holds its sets: on the engine's GPU (the default), in pinned host
    memory (``host``: packed IPC where the GPU has no room for them), or on a GPU of its own
    (``gpu``, by index: NCCL, whose group has 1 + dp x ``workers`` ranks). The trainer sees
    the GPUs the engine sees, as a trainer beside vLLM on one node does (NCCL then finds
    the direct path between the two devices)."""

    host: bool = False
    gpu: int | None = None
    workers: int = 1  # the engine's workers per data-parallel rank (tensor x pipeline parallel)


@dataclass(frozen=True)
class WeightSet:
    """One staged set (bench_pause.trainer writes it): its files in push order (the tensors
    both sets share, in chunks, then its own), the tokens greedy decoding can emit with it,
    and the bytes a push moves."""

    name: str
    paths: tuple[str, ...]
    tokens: tuple[int, ...]
    bytes: int


class Trainer:
    """A trainer serving pushes over CUDA IPC or NCCL (``python -m bench_pause.trainer
    --serve``): JSON lines each way over its stdin and stdout, every read bounded by a
    timeout."""

    def __init__(self, model: str, transfer: str, placement: Placement, log: Path) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "bench_pause.trainer", model, "--serve", transfer,
               *(["--host-memory"] if placement.host else []),
               *(["--device", str(placement.gpu)] if placement.gpu is not None else [])]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        self._buf = bytearray()

    def send(self, message: dict | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        try:
            self.proc.stdin.write(text.encode() + b"\n")
        except BrokenPipeError as exc:
            raise RuntimeError(f"the trainer exited: {self.last_words()}") from exc

    def read(self, timeout_s: float) -> dict:
        """The next message; RuntimeError with the trainer's last words if it exits or says
        "error", TimeoutError if it is silent for ``timeout_s``."""
        deadline, fd = time.monotonic() + timeout_s, self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"the trainer said nothing for {timeout_s:.0f} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the trainer exited: {self.last_words()}")
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"the trainer failed: {message['error']}")
        return message

    def last_words(self) -> str:
        """Its log's last error line (torch warns after it when a process dies holding IPC
        blocks), else its last line."""
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "no output")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close its stdin (it ends its loop and frees the GPU); kill it if it lingers."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout_s)


@dataclass
class Staged:
    """Both weight sets: files in ``dir`` (shared memory where the host has it), or held
    by a serving ``trainer`` (CUDA IPC, NCCL; ``dir`` keeps its log)."""

    sets: list[WeightSet]
    dir: Path
    transfer: str = "shm"
    trainer: Trainer | None = None
    placement: Placement = field(default_factory=Placement)
    device: dict = field(default_factory=dict)  # where the trainer holds them; its GPU's memory then

    def remove(self, keep_log: Path | None = None) -> None:
        """Stop the trainer (its log copied to ``keep_log``: why it failed, if it did) and
        delete what was staged."""
        if self.trainer is not None:
            self.trainer.stop()
            if keep_log is not None and self.trainer.log.exists():
                shutil.copyfile(self.trainer.log, keep_log)
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


def stage(model: str, transfer: str = "shm", placement: Placement = Placement(), timeout_s: float = 900.0) -> Staged:
    """Run the trainer (``python -m bench_pause.trainer``): write both sets (shm) or start
    it serving them (ipc, nccl) from where ``placement`` says and wait until it holds them;
    a model it cannot mark, or one with no weight files, is a ScenarioError (before any
    engine)."""
    if transfer != "shm":
        out = Path(tempfile.mkdtemp(prefix="bench-pause-trainer-"))
        trainer = Trainer(model, transfer, placement, out / "trainer.log")
        try:
            ready = trainer.read(timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            trainer.stop()
            shutil.rmtree(out, ignore_errors=True)
            raise ScenarioError(f"weight_sync: the trainer could not hold {model} on the GPU: {exc}") from exc
        sets = [WeightSet(s["name"], (), tuple(s["tokens"]), s["bytes"]) for s in ready["sets"]]
        return Staged(sets, out, transfer, trainer, placement,
                      {"memory": "host" if placement.host else "gpu", "gpu": placement.gpu,
                       **{k: ready[k] for k in ("device_bytes", "free", "total")}})
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _collective(trainer: Trainer, *calls: Awaitable) -> list:
    """Both sides of one NCCL collective, the engine's call and the trainer's answer, run
    together (each blocks until the other joins). Where either fails the other is left
    blocked in NCCL: the trainer is stopped (its reader returns, later pushes report it
    gone) and the first failure is raised; the measurement then restarts the engine."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        await asyncio.to_thread(trainer.stop, 1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def attach(session: Session, staged: Staged, timeouts: Timeouts) -> None:
    """Set a freshly started engine up for pushes (vLLM's ``init_weight_transfer_engine``;
    over NCCL, a new group of the trainer, rank 0, and every worker of this engine)."""
    backend, packed = TRANSFERS[staged.transfer], staged.transfer.endswith("_packed")
    buffers = {"packed_buffer_size_bytes": PACKED_BUFFER_BYTES, "packed_num_buffers": PACKED_NUM_BUFFERS}
    if nccl(staged.transfer):
        init = {"master_address": "127.0.0.1", "master_port": _free_port(),
                "world_size": 1 + session.info.dp_size * staged.placement.workers}
        info = vllm_compat.engine_init_info(backend, packed, {**init, "rank_offset": 1}, buffers)
        await asyncio.to_thread(staged.trainer.send, {"init": init})
        await _collective(staged.trainer, asyncio.wait_for(session.weight_update("init", info), timeouts.pause),
                          asyncio.to_thread(staged.trainer.read, timeouts.pause))
    else:
        info = vllm_compat.engine_init_info(backend, packed, {}, buffers)
        await asyncio.wait_for(session.weight_update("init", info), timeouts.pause)
    session.weights = EngineWeights(staged)


async def _updates_from_trainer(session: Session, trainer: Trainer, index: int, timeouts: Timeouts) -> dict:
    """Have the trainer push set ``index`` (vLLM's IPC or NCCL sender), passing each of its
    updates to the engine; the number of updates and what the trainer said when done.
    Over IPC the trainer waits for each update to be loaded (its buffer is reused); over
    NCCL the engine's one update receives while the trainer broadcasts."""
    await asyncio.to_thread(trainer.send, {"send": index})
    updates = 0
    while "done" not in (message := await asyncio.to_thread(trainer.read, timeouts.sync)):
        update = asyncio.wait_for(session.weight_update("update", message["update"]), timeouts.sync)
        updates += 1
        if message.get("collective"):
            _, message = await _collective(trainer, update, asyncio.to_thread(trainer.read, timeouts.sync))
            break
        await update
        await asyncio.to_thread(trainer.send, "ok")
    return {"updates": updates, **{k: v for k, v in message.items() if k != "done"}}


def _attached(session: Session) -> EngineWeights:
    """What the engine holds; RuntimeError where it was never set up for pushes."""
    if session.weights is None:
        raise RuntimeError("weights pushed or checked on an engine that was not attached (weight_sync.attach)")
    return session.weights


async def push(session: Session, trace: tr.Trace, timeouts: Timeouts) -> None:
    """Push the set the engine does not hold: start, its updates (one per staged file, or
    as many as the trainer sends: CUDA IPC, NCCL), finish, each bounded by a timeout."""
    weights = _attached(session)
    old, index = weights.next()
    staged = weights.staged
    new = staged.sets[index]
    trace.event(tr.SYNC_START_CALL, detail=json.dumps(
        {"set": new.name, "bytes": new.bytes, "transfer": staged.transfer, "new": list(new.tokens),
         "old": list(old.tokens) if old else None}))
    weights.loaded = None  # unknown until the push finishes
    await asyncio.wait_for(session.weight_update("start"), timeouts.pause)
    trace.event(tr.SYNC_START_RETURN)
    if staged.trainer is not None:
        done = await _updates_from_trainer(session, staged.trainer, index, timeouts)
    else:
        for path in new.paths:
            await asyncio.wait_for(session.weight_update("update", {"path": path}), timeouts.sync)
        done = {"updates": len(new.paths)}
    trace.event(tr.SYNC_UPDATE_RETURN, detail=json.dumps(done))
    await asyncio.wait_for(session.weight_update("finish"), timeouts.pause)
    trace.event(tr.SYNC_FINISH_RETURN)
    weights.loaded = index


async def held(session: Session, trace: tr.Trace, timeouts: Timeouts) -> None:
    """Record which staged set the engine holds (``WEIGHTS_HELD``), for a sleep that keeps
    its weights (levels 0 and 1): the tokens after the wake must come from that same set.
    An engine still on the model's own weights, which no token can tell apart, is first
    given a set (paused, pushed, resumed while idle: the measurement has not begun)."""
    weights = _attached(session)
    if weights.loaded is None:
        await asyncio.wait_for(session.pause("keep", False), timeouts.pause)
        await push(session, tr.Trace(), timeouts)
        await asyncio.wait_for(session.resume(), timeouts.resume)
    kept = weights.staged.sets[weights.loaded]
    trace.event(tr.WEIGHTS_HELD, detail=json.dumps({"set": kept.name, "tokens": list(kept.tokens)}))


async def idle_probe(session: Session, trace: tr.Trace, timeouts: Timeouts) -> None:
    """Ask every worker to synchronise its device and say when it had (transfer_worker)."""
    trace.event(tr.IDLE_CALL)
    answers = await asyncio.wait_for(session.idle_probe(), timeouts.pause)
    trace.event(tr.IDLE_RETURN, detail=json.dumps(answers))
