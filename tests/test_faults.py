"""Faults: a sweep survives them, loses nothing, and leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench_pause import procs, results, sweep
from bench_pause.backends.base import Timeouts
from bench_pause.scenario import Grid

from .conftest import bench_pause, own_vllm

pytestmark = pytest.mark.engine


class KillEngineAfter(sweep.Progress):
    """Kills the sweep's own engine (never the shared test engines) once ``n`` cells are measured."""

    def __init__(self, n: int, backend: str) -> None:
        self.n, self.backend, self.done, self.killed = n, backend, 0, []

    def advance(self) -> None:
        self.done += 1
        if self.done != self.n:
            return
        for pid, cmd in own_vllm().items():
            if self.backend == "http" and "api_server" in cmd:
                os.killpg(pid, signal.SIGKILL)
                self.killed.append(pid)
            elif self.backend == "offline" and "EngineCore" in cmd and pid in procs.descendants():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)


# The restart is the sweep's, whatever the backend: it is checked once, offline; HTTP checks
# that a killed server is seen and, with --fail-fast, that the sweep stops there.
@pytest.mark.parametrize("backend,fail_fast", [("http", True), ("offline", False)])
def test_engine_dying_mid_sweep_keeps_measurements(engine_config, loop, tmp_path, backend, fail_fast):
    # 256 tokens, as the quick profile: long enough on a slow 2-core host that the pause lands
    # while the request is still running (a missed pause leaves no cell to count here).
    grid = Grid(backends=(backend,), modes=("keep",), max_tokens=(256,), holds=(0.2,), repeats=4)
    cfg = sweep.SweepConfig(grid=grid, out=tmp_path, model=engine_config.model, fail_fast=fail_fast,
                            timeouts=Timeouts(startup=300, pause=20, resume=20, stream=20))
    progress = KillEngineAfter(2, backend)
    t0 = time.monotonic()
    outcome = loop.run_until_complete(sweep.run(sweep.plan(cfg), progress))
    print(f"{backend} fail_fast={fail_fast}: recovered and finished in {time.monotonic() - t0:.1f} s")
    assert progress.killed
    runs = results.load(tmp_path)[0]
    measured = results.measured(runs)
    # Which cell the kill lands in depends on how many attempts a starved host missed (a cell
    # whose attempts all missed has no measured row), so the check is by property, not position:
    # one measured pause carries the error, every one before it is ok and kept.
    failed = measured[measured["error"].fillna("") != ""]
    assert len(failed) == 1 and not failed["ok"].iloc[0]
    at = measured.index.get_loc(failed.index[0])
    assert measured["ok"].iloc[:at].all()
    meta = results.read_meta(tmp_path)
    if fail_fast:
        assert outcome.stopped_early and at == len(measured) - 1 and len(meta["engines"]) == 1
    else:
        # A second engine was started and everything it measured is ok.
        assert len(meta["engines"]) == 2 and (runs["engine"] == 1).any() and measured["ok"].iloc[at + 1:].all()


class DelayFirstCell(sweep.Progress):
    """Sets the version adapter's test hook (a delay before each pause call) for the first
    measured cell only, so exactly one pause outlasts --pause-timeout."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch, self.cells = monkeypatch, 0

    def cell(self, label: str) -> None:
        if label.startswith("warm-up"):
            self.monkeypatch.delenv("BENCH_PAUSE_INJECT_PAUSE_DELAY_S", raising=False)
            return
        self.cells += 1
        if self.cells == 1:
            self.monkeypatch.setenv("BENCH_PAUSE_INJECT_PAUSE_DELAY_S", "3")
        else:
            self.monkeypatch.delenv("BENCH_PAUSE_INJECT_PAUSE_DELAY_S", raising=False)


def test_a_pause_that_does_not_return_in_time_is_recorded_and_the_engine_restarted(
        engine_config, loop, tmp_path, monkeypatch):
    # The edge cycle a hang is likeliest in: a second pause while the first is in progress.
    grid = Grid(backends=("offline",), modes=("keep",), max_tokens=(32,), holds=(0.1,), cycles=("double_pause",),
                repeats=2)
    cfg = sweep.SweepConfig(grid=grid, out=tmp_path, model=engine_config.model,
                            timeouts=Timeouts(startup=300, pause=1, resume=5, stream=30))
    t0 = time.monotonic()
    outcome = loop.run_until_complete(sweep.run(sweep.plan(cfg), DelayFirstCell(monkeypatch)))
    print(f"pause timeout: recovered and finished in {time.monotonic() - t0:.1f} s")
    runs, _, events, meta = results.load(tmp_path)
    measured = results.measured(runs)
    assert list(measured["error"]) == ["timeout: pause", ""]
    assert measured["ok"].tolist() == [False, True]
    assert len(meta["engines"]) == 2 and outcome.failed == 1
    # The failed measurement's partial trace is kept: submitted, tokens, the pause call.
    failed = events[events["measurement"] == measured["measurement"].iloc[0]]
    assert {"submit", "pause_call"} <= set(failed["event"]) and "pause_return" not in set(failed["event"])


def test_a_fault_in_every_warm_up_gives_up_instead_of_looping(engine_config, loop, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_PAUSE_INJECT_PAUSE_DELAY_S", "3")
    grid = Grid(backends=("offline",), modes=("keep",), max_tokens=(32,), holds=(0.1,), repeats=2)
    cfg = sweep.SweepConfig(grid=grid, out=tmp_path, model=engine_config.model,
                            timeouts=Timeouts(startup=300, pause=1, resume=5, stream=30))
    outcome = loop.run_until_complete(sweep.run(sweep.plan(cfg)))
    assert len(results.read_meta(tmp_path)["engines"]) == sweep.MAX_STALLS
    assert outcome.engine_failures and "not measured" in outcome.engine_failures[0]


def test_a_stalled_stream_times_out(offline_session, measure_on):
    from bench_pause.scenario import Scenario
    m = measure_on(offline_session, Scenario("offline", 1, "keep", "tokens:5", 1500, 1, 0.1, True),
                   Timeouts(stream=0.5))
    assert m.metrics["error"] == "timeout: streams" and not m.metrics["ok"]
    assert m.engine_broken and len(m.tokens) > 5


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches the command as in a terminal: a test run started in the background of a
    script (`make test &`) ignores SIGINT, and a child would inherit that and never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bench_pause_proc(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench_pause", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal)


def wait_rows(path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if len(pd.read_parquet(path / "runs.parquet")) >= n:
                return
        except (FileNotFoundError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("the sweep made no progress")


def test_interrupt_keeps_results_and_resume_completes(tmp_path):
    """Ctrl-C (SIGTERM, as a scheduler sends it, is checked through `interleave`, which
    forwards it to its run: tests/test_interleave.py)."""
    args = ["run", "--backend", "offline", "--mode", "keep", "abort", "--max-tokens", "32", "--hold", "0.3",
            "--repeats", "3", "--out", str(tmp_path)]
    proc = bench_pause_proc(*args)
    wait_rows(tmp_path, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    runs = pd.read_parquet(tmp_path / "runs.parquet")  # valid Parquet, every finished cell in it
    before = len(results.measured(runs))
    assert 2 <= before < 6
    assert results.read_meta(tmp_path)["vllm_version"]
    assert not own_vllm()
    r = bench_pause(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    measured = results.measured(runs)
    assert len(measured) == 6
    assert measured.groupby(["mode", "repeat"]).size().eq(1).all()


def test_url_without_pause_endpoints_fails_in_one_line(tmp_path):
    """A server without VLLM_SERVER_DEV_MODE answers 404 on /is_paused."""
    from aiohttp import web

    from bench_pause.backends.http import free_port

    async def serve_and_run() -> subprocess.CompletedProcess:
        app = web.Application()
        app.router.add_get("/health", lambda _: web.Response(text="ok"))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench_pause", "run", "--backend", "http", "--url", f"http://127.0.0.1:{port}",
                "--out", str(tmp_path / "x"), stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            return proc.returncode, err.decode()
        finally:
            await runner.cleanup()

    code, err = asyncio.run(serve_and_run())
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "VLLM_SERVER_DEV_MODE=1" in lines[0]


def test_two_sweeps_at_once_do_not_collide(tmp_path):
    args = ["run", "--backend", "http", "--mode", "keep", "--max-tokens", "128", "--hold", "0.2", "--repeats", "2"]
    a = bench_pause_proc(*args, "--out", str(tmp_path / "a"))
    b = bench_pause_proc(*args, "--out", str(tmp_path / "b"))
    for proc in (a, b):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    urls = [results.read_meta(tmp_path / n)["engines"][0]["url"] for n in ("a", "b")]
    assert urls[0] != urls[1]
    for n in ("a", "b"):
        runs = pd.read_parquet(tmp_path / n / "runs.parquet")
        # two servers on a small host starve the clients: a missed pause may be measured again
        assert runs["ok"].all() and set(runs.loc[~runs["warmup"], "repeat"]) == {0, 1}


def test_interrupt_during_server_start_up_leaves_nothing(tmp_path):
    proc = bench_pause_proc("run", "--backend", "http", "--mode", "keep", "--out", str(tmp_path))
    deadline = time.monotonic() + 120
    while not [c for c in own_vllm().values() if "api_server" in c]:
        assert time.monotonic() < deadline and proc.poll() is None, "the server never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert not own_vllm()
