"""What bench-pause runs inside vLLM's worker processes for a ``weight_sync`` cycle.

vLLM imports this module in every worker because the engine is started with
``--worker-extension-cls bench_pause.transfer_worker.BenchPauseWorker`` (see
weight_sync.engine_args), before it loads the model; importing it registers the
``bench_shm`` weight-transfer backend, which ``--weight-transfer-config`` then selects, and
on a CUDA host imports vLLM's own ``ipc`` backend (``ipc_engine``: see there why here).

``bench_shm`` is a transport for hosts where vLLM's own (CUDA IPC, NCCL) cannot run, the
CPU among them: the trainer stages a full weight set as a safetensors file in shared
memory (bench_pause.trainer) and each ``update_weights`` call names the file; the worker
reads it and hands every tensor to the model's own ``load_weights`` inside a layerwise
reload, the path vLLM's IPC backend ends in too. Everything around it is vLLM's: ``start_weight_update`` /
``update_weights`` / ``finish_weight_update`` through the worker's weight-transfer
session, over the engine core's collective RPC, in-process or over the dev-mode HTTP
routes.

``bench_pause_idle`` answers the "is the device idle?" probe: it synchronises the worker's
device (CUDA; a no-op on a CPU) and returns the worker's CLOCK_MONOTONIC, comparable with
the client's on one host. The engine core runs collective RPCs between its steps, so the
answer also means no step is in progress (metrics: ``idle_s``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import types
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                   WeightTransferUpdateInfo)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from bench_pause import vllm_compat

BACKEND = "bench_shm"


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    """Nothing to set up: the file is named by each update."""


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    path: str


class SharedMemoryWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    """Loads a staged safetensors file into the model with its ``load_weights``."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo
    supports_draft_weight_update = False

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        pass

    # As vLLM's IPC backend: the checkpoint's tensors go through a layerwise reload, which
    # gives each layer back its loading layout (a CPU linear repacks its weight after
    # loading; loading into the packed one fails) and re-processes it once loaded.
    def start_weight_update(self) -> None:
        start, _ = vllm_compat.reload_hooks()
        start(self.model)

    def finish_weight_update(self) -> None:
        _, finish = vllm_compat.reload_hooks()
        finish(self.model, self.model_config, getattr(self, "device", None))  # 0.26's base keeps none

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        from safetensors import safe_open
        with safe_open(update_info.path, framework="pt", device="cpu") as f:
            self.model.load_weights((name, f.get_tensor(name)) for name in f.keys())

    def shutdown(self) -> None:
        pass

    @staticmethod
    def trainer_send_weights(iterator, trainer_args) -> None:
        """Abstract in vLLM 0.26's base class (0.27 moved it to trainer engines); the
        trainer's side here is bench_pause.trainer, which stages files instead."""
        raise NotImplementedError("bench_shm's trainer stages files: python -m bench_pause.trainer")


if BACKEND not in WeightTransferEngineFactory._registry:
    WeightTransferEngineFactory.register_engine(BACKEND, SharedMemoryWeightTransferEngine)


def ipc_engine() -> types.ModuleType:
    """vLLM's CUDA-IPC weight-transfer module, importable where ray is not installed.

    vLLM 0.26.0's ``ipc_engine`` imports ray at its top but uses it only to send through
    ray actors (``send_mode="ray"``), which bench-pause never does; ray is no requirement of
    the wheel and not on the GPU hosts (later releases dropped the import). Where ray is
    missing, a placeholder module stands in during that one import and is removed after it,
    so nothing else sees a ray that is not there. The worker imports the module here, before
    vLLM's factory looks it up, and the trainer takes it from here too.
    """
    name = "vllm.distributed.weight_transfer.ipc_engine"
    if name in sys.modules or importlib.util.find_spec("ray") is not None:
        return importlib.import_module(name)
    sys.modules["ray"] = types.ModuleType("ray")
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["ray"]


if torch.cuda.is_available():
    ipc_engine()


class BenchPauseWorker:
    """Mixed into vLLM's worker class: the methods a collective RPC can call by name."""

    def bench_pause_idle(self) -> dict:
        """This worker's clock once its device has nothing queued; ``waited``: how long the
        synchronisation took (above a few microseconds, the device was still busy when the
        engine core served the RPC, i.e. between steps)."""
        t0 = time.monotonic()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.monotonic()
        return {"rank": self._bench_pause_rank(), "pid": os.getpid(), "t": t, "waited": t - t0}

    def bench_pause_memory(self) -> dict:
        """The memory in use on this worker's GPU, as the device counts it (every process on
        it: what a colocated trainer could take is what this frees); ``used`` None on a
        host without CUDA."""
        if not torch.cuda.is_available():
            return {"rank": self._bench_pause_rank(), "device": None, "used": None, "total": None}
        free, total = torch.cuda.mem_get_info()
        return {"rank": self._bench_pause_rank(), "device": torch.cuda.current_device(),
                "used": int(total - free), "total": int(total)}

    def _bench_pause_rank(self) -> int:
        parallel = self.vllm_config.parallel_config
        return int(parallel.data_parallel_rank) * int(parallel.world_size) + int(self.rank)
