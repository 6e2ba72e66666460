"""What a result was measured on: versions, device, host, model and engine arguments."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sys

from bench_pause import vllm_compat


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict:
    """Host and software facts recorded in every meta.json."""
    import torch

    return {
        "bench_pause_version": _version("bench-pause"),
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
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
