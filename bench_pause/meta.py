"""What a result was measured on: versions, device, host, model and engine arguments."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench_pause import vllm_compat


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def commit() -> str:
    """The bench-pause commit: $BENCH_PAUSE_COMMIT (set it where the checkout travels without
    .git, as on a lent GPU host), else git's HEAD of this checkout (``+dirty`` with local
    changes), else "unknown"."""
    if os.environ.get("BENCH_PAUSE_COMMIT"):
        return os.environ["BENCH_PAUSE_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment() -> dict:
    """Host and software facts recorded in every meta.json."""
    import torch

    return {
        "bench_pause_version": _version("bench-pause"),
        "bench_pause_commit": commit(),
        "vllm_version": vllm_compat.vllm_version(),
        "vllm_distribution": vllm_compat.vllm_distribution(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "device": vllm_compat.device_name(),
        "gpu_count": vllm_compat.gpu_count(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "injected_pause_delay_s": vllm_compat.injected_pause_delay(),
        "injected_resume_delay_s": vllm_compat.injected_resume_delay(),
        # vLLM reads settings from its environment too (VLLM_MOE_ROUTING_SIMULATION_STRATEGY,
        # VLLM_USE_V2_MODEL_RUNNER, ...): they belong with the engine arguments.
        "vllm_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_")},
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def execution(meta: dict) -> str:
    """``CUDA graphs``, ``eager`` or ``CPU``: from meta.json, or for runs recorded before it
    said so, from their engine flags (the last of --enforce-eager / --no-enforce-eager);
    ``unknown`` for a server started elsewhere that did not say."""
    engine = meta.get("engine")
    if isinstance(engine, dict) and engine.get("execution"):
        return engine["execution"]
    if engine == "unknown" or isinstance(engine, dict) and meta.get("urls"):
        return "unknown"
    if not meta.get("gpu_count"):
        return "CPU"
    flags = [a for a in meta.get("engine_args") or [] if a in ("--enforce-eager", "--no-enforce-eager")]
    return "eager" if flags and flags[-1] == "--enforce-eager" else "CUDA graphs"


def injected_delays(meta: dict) -> list[str]:
    """The test hook's delays a run was measured with, e.g. ``+5 ms before pause``."""
    return [f"+{meta[k] * 1e3:g} ms before {what}" for k, what in
            (("injected_pause_delay_s", "pause"), ("injected_resume_delay_s", "resume")) if meta.get(k)]


def model_name(meta: dict) -> str:
    """The model's directory or id without its path: what every label calls the model."""
    return Path(str(meta.get("model", "?"))).name


def setup_label(meta: dict) -> str:
    """What a figure may not mix: device, vLLM version, model and how the engine runs."""
    model = model_name(meta)
    injected = [f"{delay} (injected)" for delay in injected_delays(meta)]
    return ", ".join([f"{meta.get('device', '?')}, vLLM {meta.get('vllm_version', '?')}, {model}, {execution(meta)}",
                      *injected])
