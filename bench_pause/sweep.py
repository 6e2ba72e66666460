"""The sweep runner: one engine per (backend, dp size) group, cells in seeded random order.

``plan`` validates everything a user can get wrong before any engine starts (so bad
input costs a second, not a start-up). ``run`` then starts each group's engine once,
discards a warm-up pause (kept on disk, marked ``warmup``), measures every cell, and
appends each measurement to the run directory as it finishes. A dead or hung engine is
recorded against the cell that saw it and restarted (or the sweep stops, with
``fail_fast``). Sessions are closed on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from bench_pause import meta, metrics, results, vllm_compat, weight_sync
from bench_pause.backends.base import Session, StartupFailed, Timeouts
from bench_pause.measure import attempts, measure
from bench_pause.model import default_model, resolve_model
from bench_pause.results import META, RunDir, read_meta, write_json
from bench_pause.scenario import Grid, Scenario, ScenarioError, group_by_engine

Say = Callable[[str], None]
# Engines in a row that may break before finishing a cell before a group is given up:
# without this bound, a fault that hits every warm-up would restart engines forever.
MAX_STALLS = 2


@dataclass
class SweepConfig:
    grid: Grid
    out: Path
    model: str | None = None
    engine_args: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    seed: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    resume: bool = False
    fail_fast: bool = False
    profile: str | None = None
    transfer: str | None = None  # how a weight_sync cycle pushes (weight_sync.TRANSFERS); None: by host


@dataclass
class Plan:
    config: SweepConfig
    engine: vllm_compat.EngineConfig | None
    groups: dict[tuple[str, int], list[Scenario]]
    total: int
    skipped: list[str]
    sync_model: str | None = None  # the model whose weight sets a weight_sync cycle pushes
    transfer: str | None = None  # and how (weight_sync.TRANSFERS)
    trainer: weight_sync.Placement = field(default_factory=weight_sync.Placement)  # where the trainer holds the sets


def _check_out_dir(out: Path) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"output {out} exists and is not a directory")
    existing = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScenarioError(f"output directory {out} is not writable")
    if out.exists() and not os.access(out, os.R_OK):
        raise ScenarioError(f"output directory {out} is not readable")


def plan(cfg: SweepConfig, say: Say = print) -> Plan:
    """Validate the sweep and work out what to run; raises ScenarioError/VllmError."""
    scenarios = cfg.grid.scenarios()
    _check_out_dir(cfg.out)
    if not cfg.resume and (Path(cfg.out) / results.RUNS).exists():
        # Appending would mix two runs under the meta.json of the second (it happened: a
        # GPU run into the directory of an earlier one).
        raise ScenarioError(f"{cfg.out} already holds a run: --resume continues it, or measure into a new --out")
    if cfg.urls:
        if len(set(cfg.grid.dp_sizes)) > 1 and "http" in cfg.grid.backends:
            raise ScenarioError("with --url the server's data parallelism is fixed: give one --dp")
        if len(set(cfg.urls)) < len(cfg.urls):
            raise ScenarioError("the same --url is given twice")
        for url in cfg.urls:
            warning = exposure_warning(url)
            if warning:
                say(f"[yellow]warning:[/yellow] {warning}")
        scenarios = [dataclasses.replace(sc, servers=len(cfg.urls)) if sc.backend == "http" else sc
                     for sc in scenarios]
    engine, sync_model, transfer, placement = None, None, cfg.transfer, weight_sync.Placement()
    # Weight sets are staged for a cycle that pushes them, and for a sleep sweep given
    # --transfer: its sleeps that keep the weights then check them (measure.measure).
    sleeps = any(sc.cycle == "sleep" for sc in scenarios)
    syncs = any(sc.pushes for sc in scenarios) or bool(transfer and sleeps)
    if transfer and not syncs:
        raise ScenarioError("--transfer says how the weight_sync cycle (or a sleep) pushes weights: "
                            "add --cycle weight_sync")
    if syncs and cfg.urls:
        raise ScenarioError("the weight_sync cycle and a sleep that pushes or checks weights start their own "
                            "engines (they set --weight-transfer-config and --worker-extension-cls): drop --url")
    if syncs and weight_sync.OWN_FLAGS & _flags_given(cfg.engine_args):
        raise ScenarioError("the weight_sync cycle sets --weight-transfer-config and --worker-extension-cls "
                            "itself: drop them from --engine-args")
    if any(sc.backend == "offline" for sc in scenarios) or not cfg.urls:
        # A mistyped model fails before vLLM is imported (seconds on a small host).
        model = resolve_model(cfg.model) if cfg.model else ""
        api = vllm_compat.pause_api()
        vllm_compat.check_modes(api, list(cfg.grid.modes))
        gpu = vllm_compat.on_gpu()
        model = model or default_model(gpu, vllm_compat.gpu_memory_gib())
        if gpu:
            gpus = vllm_compat.gpu_count()
            too_big = sorted({sc.dp_size for sc in scenarios if sc.dp_size > gpus})
            if too_big:
                say(f"skipping dp size {', '.join(map(str, too_big))}: this host has {gpus} GPU(s)")
                scenarios = [sc for sc in scenarios if sc.dp_size <= gpus]
        extra, defaults = [], {}
        if syncs:
            transfer = transfer or ("ipc" if gpu else "shm")
            extra, defaults, placement = _sync_engine_flags(model, transfer, gpu, scenarios, say)
            sync_model = model
        if sleeps:
            extra += _sleep_engine_flags(scenarios, cfg.engine_args, gpu, syncs)
        engine = vllm_compat.engine_config(model, [*cfg.engine_args, *extra], gpu, defaults)
        if syncs and weight_sync.nccl(transfer):
            placement = _own_trainer_gpu(engine, scenarios)
    done = set()
    if cfg.resume:
        recorded = read_meta(cfg.out).get("vllm_version")
        if recorded and recorded != vllm_compat.vllm_version():
            raise ScenarioError(f"--resume: {cfg.out} was measured with vLLM {recorded}, this is "
                                f"{vllm_compat.vllm_version()}; measure into a new --out")
        runs = RunDir(cfg.out).runs
        if len(runs):
            measured = results.measured(runs)
            done = {tuple(r) for r in measured[Scenario.columns()].itertuples(index=False)}
    todo = [sc for sc in scenarios if tuple(sc.as_dict().values()) not in done]
    skipped = [f"{len(scenarios) - len(todo)} cells already measured"] if done else []
    return Plan(cfg, engine, group_by_engine(todo, cfg.seed), len(todo), skipped, sync_model, transfer, placement)


def _sync_engine_flags(model: str, transfer: str, gpu: bool, scenarios: list[Scenario],
                       say: Say) -> tuple[list[str], dict[str, list[str]], weight_sync.Placement]:
    """What a weight_sync sweep adds to the engine's flags (its backend and worker
    extension) and to their defaults (the memory share that leaves room on the engine's
    GPU for the trainer's copy over CUDA IPC, for NCCL's packed buffers), and where the
    trainer holds its sets (host memory: packed IPC where they do not fit the GPU beside
    an engine); ScenarioError for what cannot run."""
    from bench_pause import trainer  # torch: only for a sweep that pushes weights
    vllm_compat.check_weight_transfer()
    try:
        trainer_bytes = trainer.check(model)
    except ValueError as exc:
        raise ScenarioError(f"weight_sync: {exc}") from exc
    defaults, placement = {}, weight_sync.Placement()
    if transfer != "shm":
        backend = "NCCL" if weight_sync.nccl(transfer) else "CUDA IPC"
        if not gpu:
            raise ScenarioError(f"--transfer {transfer} is vLLM's {backend}: it needs a CUDA GPU (use --transfer shm)")
        total = int(vllm_compat.gpu_memory_gib() * 2**30)
        if weight_sync.nccl(transfer):
            if trainer_bytes + weight_sync.HEADROOM_BYTES > total:
                raise ScenarioError(f"--transfer {transfer}: the trainer's two sets ({trainer_bytes / 2**30:.0f} GiB) "
                                    f"do not fit its GPU of {total / 2**30:.0f} GiB")
            # On the engine's GPU: vLLM's receive buffers (packed) or one tensor at a time.
            share = weight_sync.gpu_share(weight_sync.PACKED_NUM_BUFFERS * weight_sync.PACKED_BUFFER_BYTES, total)
        else:
            if any(sc.dp_size > 1 for sc in scenarios):
                raise ScenarioError(f"--transfer {transfer}: CUDA IPC reaches the workers on the trainer's GPU only; "
                                    "use --dp 1, --transfer nccl or --transfer shm")
            try:
                share = weight_sync.gpu_share(trainer_bytes, total)
            except ScenarioError:
                if transfer != "ipc_packed":
                    raise
                say(f"the trainer's sets ({trainer_bytes / 2**30:.0f} GiB) do not fit the GPU beside an engine: "
                    "it holds them in pinned host memory and packs them onto the GPU per push")
                # On the GPU then: its packed buffer (vLLM's 1 GiB), allocated per push.
                share, placement = weight_sync.gpu_share(weight_sync.PACKED_BUFFER_BYTES, total), \
                    weight_sync.Placement(host=True)
        defaults["gpu_memory_utilization"] = ["--gpu-memory-utilization", str(share)]
    return [weight_sync.engine_args(transfer)], defaults, placement


def _flags_given(engine_args: list[str]) -> set[str]:
    """The flags (and words) of every --engine-args string, ``--flag=value`` as ``--flag``."""
    return {tok.split("=")[0] for part in engine_args for tok in shlex.split(part)}


def _sleep_engine_flags(scenarios: list[Scenario], engine_args: list[str], gpu: bool, syncs: bool) -> list[str]:
    """What a sleep sweep adds to the engine's flags: vLLM's sleep mode where a level frees
    memory (its CUDA memory pool), and the worker extension that reads each GPU's memory
    (transfer_worker; a sweep that pushes weights sets it already, with the weight transfer
    a level-2 sleep pushes through). Levels 1 and 2 on a CPU are refused here, before any
    engine starts."""
    vllm_compat.check_sleep()
    levels = {sc.sleep_level for sc in scenarios if sc.cycle == "sleep"}
    if levels & {1, 2} and not gpu:
        raise ScenarioError("sleep levels 1 and 2 need a GPU: vLLM's CPU platform has no sleep mode (it refuses "
                            "--enable-sleep-mode, and its workers ignore sleep, so nothing is freed); "
                            "use --sleep-level 0 here")
    given = _flags_given(engine_args)
    if "--worker-extension-cls" in given:
        raise ScenarioError("the sleep cycle sets --worker-extension-cls itself (it reads the GPU's memory "
                            "through it): drop it from --engine-args")
    flags = [] if syncs else [shlex.join(["--worker-extension-cls", weight_sync.EXTENSION])]
    if levels & {1, 2} and "--enable-sleep-mode" not in given:
        flags.append("--enable-sleep-mode")
    return flags


def _own_trainer_gpu(engine: vllm_compat.EngineConfig, scenarios: list[Scenario]) -> weight_sync.Placement:
    """An NCCL trainer's GPU: the first one the largest engine of the sweep leaves."""
    ea = engine.async_engine_args(1)
    workers = int(ea.tensor_parallel_size) * int(ea.pipeline_parallel_size)
    engine_gpus = max(sc.dp_size for sc in scenarios) * workers if scenarios else workers
    return weight_sync.Placement(gpu=weight_sync.own_gpu(vllm_compat.gpu_count(), engine_gpus), workers=workers)


def exposure_warning(url: str) -> str:
    """Why measuring ``url`` is a risk, or '' for a loopback server. A dev-mode server runs
    code sent to it (/collective_rpc, weight updates): it must not be reachable from a network."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return ""
    return (f"{url} is not a loopback address: a server with VLLM_SERVER_DEV_MODE=1 runs code sent to "
            "/collective_rpc and its weight-update routes for anyone who reaches it; keep it on a "
            "private network or tunnel it to 127.0.0.1")


def _session(p: Plan, backend: str, dp_size: int) -> Session:
    cfg = p.config
    if backend == "offline":
        from bench_pause.backends.offline import OfflineSession
        return OfflineSession(p.engine, dp_size, cfg.timeouts)
    if len(cfg.urls) > 1:
        from bench_pause.backends.fleet import FleetSession
        return FleetSession(cfg.urls, dp_size, cfg.timeouts, cfg.out)
    from bench_pause.backends.http import HttpSession
    url = cfg.urls[0] if cfg.urls else None
    return HttpSession(p.engine if not url else None, dp_size, cfg.timeouts, cfg.out, url=url)


class Progress:
    """What the runner reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int) -> None: ...
    def cell(self, label: str) -> None: ...
    def advance(self) -> None: ...
    def say(self, text: str) -> None: ...


@dataclass
class Outcome:
    run_dir: RunDir
    measured: int = 0
    failed: int = 0
    engine_failures: list[str] = field(default_factory=list)
    stopped_early: bool = False


async def run(p: Plan, progress: Progress | None = None, stop: asyncio.Event | None = None) -> Outcome:
    """Run the planned sweep; every measurement is on disk as soon as it is made. Once
    ``stop`` is set the sweep raises CancelledError before its next cell (closing its engine)."""
    progress = progress or Progress()
    cfg = p.config
    rundir = RunDir(cfg.out)
    info = read_meta(cfg.out) if cfg.resume else {}
    info.update(meta.environment())
    info.setdefault("started", meta.now())
    info.setdefault("engines", [])
    info.update({
        "model": p.engine.model if p.engine else None,
        "engine_args": list(p.engine.args) if p.engine else None,
        "engine": p.engine.summary() if p.engine else None,
        "pause_api": vllm_compat.pause_api() if p.engine else None,
        "metrics_version": metrics.VERSION, "seed": cfg.seed, "profile": cfg.profile,
        "grid": dataclasses.asdict(cfg.grid), "urls": cfg.urls, "timeouts": cfg.timeouts.__dict__, "skipped": p.skipped,
    })
    info.setdefault("runs", []).append({"started": meta.now(), "cells": p.total, "resume": cfg.resume})
    meta_path = Path(cfg.out) / META
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(meta_path, info)
    rng = random.Random(cfg.seed)
    outcome = Outcome(rundir)
    staged = None
    if p.sync_model and p.total:
        progress.say(f"staging the weight sets (the trainer, transfer {p.transfer})")
        if weight_sync.TRANSFERS[p.transfer] == "ipc":  # set before any engine starts: its processes inherit it
            os.environ[weight_sync.IPC_ENV] = "1"
        staged = await asyncio.to_thread(weight_sync.stage, p.sync_model, p.transfer, p.trainer)
        info.update(weight_transfer=p.transfer, weight_sets=[dataclasses.asdict(s) for s in staged.sets],
                    trainer_device=staged.device)
        write_json(meta_path, info)
    progress.start(p.total)
    try:
        for (backend, dp_size), cells in p.groups.items():
            queue, stalls = list(cells), 0
            while queue:
                _check(stop)
                if stalls == MAX_STALLS:
                    message = (f"{backend} dp{dp_size}: {MAX_STALLS} engines in a row broke before finishing "
                               f"a cell; {len(queue)} cells not measured")
                    outcome.engine_failures.append(message)
                    progress.say(f"[red]{message}[/red]")
                    break
                session = _session(p, backend, dp_size)
                engine_no = len(info["engines"])
                entry = {"engine": engine_no, "backend": backend, "dp_size": dp_size, "started": meta.now()}
                info["engines"].append(entry)
                progress.say(f"starting {backend} engine (dp {dp_size})")
                try:
                    await session.start()
                except (StartupFailed, RuntimeError) as exc:
                    entry.update(error=str(exc).splitlines()[0], retries=session.info.retries)
                    write_json(meta_path, info)  # Session.start already stopped what it started
                    outcome.engine_failures.append(f"{backend} dp{dp_size}: {exc}")
                    progress.say(f"[red]{backend} dp {dp_size} engine failed to start:[/red] {exc}")
                    break
                entry.update(startup_s=session.info.startup_s if session.launches else None,
                             retries=session.info.retries, **session.info.extra)
                if info.get("model") is None:  # a server given by --url: what it reports, else unknown
                    server = session.info.extra.get("server") or (
                        session.info.extra.get("servers") or [{}])[0].get("server", {})
                    info.update(model=server.get("model") or session.info.model or "unknown",
                                engine=server or "unknown", engine_args="unknown (a server started elsewhere: --url)")
                write_json(meta_path, info)
                before = len(queue)
                try:
                    if staged:
                        try:
                            await weight_sync.attach(session, staged, cfg.timeouts)
                        except (RuntimeError, TimeoutError) as exc:  # a trainer gone, an NCCL group not formed
                            entry.update(error=f"weight transfer: {exc}".splitlines()[0])
                            write_json(meta_path, info)
                            outcome.engine_failures.append(f"{backend} dp{dp_size}: weight transfer: {exc}")
                            progress.say(f"[red]{backend} dp {dp_size}: the weight transfer did not attach:[/red] {exc}")
                            break
                    queue = await _run_cells(session, queue, rundir, engine_no, cfg, rng, progress, outcome, stop)
                finally:
                    await session.close()
                stalls = stalls + 1 if len(queue) == before else 0
                if queue and cfg.fail_fast:
                    outcome.stopped_early = True
                    return outcome
    finally:
        if staged:
            staged.remove(keep_log=Path(cfg.out) / "trainer.log")
        rundir.consolidate()
        info["finished"] = meta.now()
        info["measured"] = len(results.measured(rundir.runs))
        write_json(meta_path, info)
    return outcome


def _check(stop: asyncio.Event | None) -> None:
    """Stop at a cell boundary once a signal asked to (a swallowed cancel must not run on)."""
    if stop is not None and stop.is_set():
        raise asyncio.CancelledError("stopped by a signal")


async def _run_cells(session: Session, queue: list[Scenario], rundir: RunDir, engine_no: int,
                     cfg: SweepConfig, rng: random.Random, progress: Progress, outcome: Outcome,
                     stop: asyncio.Event | None) -> list[Scenario]:
    """Measure cells on one engine until done or the engine breaks; returns what is left."""
    pause_index = 0
    warm = queue[0]
    progress.cell(f"warm-up: {warm.label}")
    m = await measure(session, warm, cfg.timeouts, rng)
    rundir.append(m, {"warmup": True, "engine": engine_no, "pause_index": pause_index})
    pause_index += 1
    if m.engine_broken:
        progress.say(f"[red]engine broke during warm-up:[/red] {m.metrics['error']}")
        return queue
    while queue:
        _check(stop)
        sc = queue.pop(0)
        progress.cell(sc.label)
        t0, attempt = time.monotonic(), 0
        async for m in attempts(session, sc, cfg.timeouts, rng):  # a missed pause is measured again
            rundir.append(m, {"warmup": False, "engine": engine_no, "pause_index": pause_index,
                              "wall_s": time.monotonic() - t0, "attempt": attempt})
            pause_index += 1
            t0, attempt = time.monotonic(), attempt + 1
        outcome.measured += 1
        progress.advance()
        if m.metrics["error"]:
            outcome.failed += 1
            progress.say(f"[red]{sc.label}: {m.metrics['error']}[/red]")
        if m.engine_broken:
            progress.say("restarting the engine" if not cfg.fail_fast else "stopping (--fail-fast)")
            return queue
    return queue
