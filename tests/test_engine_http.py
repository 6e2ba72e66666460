"""The same contracts through vLLM's OpenAI-compatible server, and its failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench_pause import procs, results, sweep
from bench_pause.backends.base import Timeouts
from bench_pause.scenario import Grid, Scenario

pytestmark = pytest.mark.engine


def scenario(mode: str, point: str = "tokens:5", concurrency: int = 1) -> Scenario:
    return Scenario("http", 1, mode, point, 48, concurrency, 0.3, True)


def test_keep_over_http(http_session, measure_on):
    v = measure_on(http_session, scenario("keep", concurrency=2)).metrics
    assert v["error"] == ""
    assert v["leak_tokens"] == 0 and v["gap_s"] >= 0.3
    assert v["tokens_received"] == v["tokens_expected"] == 96
    assert v["ok"]


def test_abort_over_http(http_session, measure_on):
    m = measure_on(http_session, scenario("abort"))
    assert json.loads(m.metrics["finish_reasons"]) == {"abort": 1}
    assert m.metrics["ok"]
    pause = m.events[m.events["event"] == "pause_return"]["detail"].iloc[0]
    assert pause.startswith("200")


def test_wait_over_http(http_session, measure_on):
    m = measure_on(http_session, scenario("wait"))
    ev = m.events.set_index("event")
    assert ev.loc["finish", "t"] <= ev.loc["pause_return", "t"]
    assert m.metrics["ok"]


def test_token_counts_are_exact_per_chunk(http_session, measure_on):
    m = measure_on(http_session, scenario("keep"))
    assert m.tokens["n_tokens"].sum() == 48
    assert m.tokens["index"].is_monotonic_increasing


def bench_pause(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench_pause", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_url_measures_a_running_server(http_session, tmp_path):
    out = tmp_path / "run"
    r = bench_pause("run", "--backend", "http", "--url", http_session.url, "--mode", "keep", "abort",
                    "--max-tokens", "32", "--repeats", "1", "--hold", "0.2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    runs = results.load(out)[0]
    measured = runs[~runs["warmup"]]
    assert set(measured["mode"]) == {"keep", "abort"} and measured["ok"].all()
    meta = results.read_meta(out)
    assert meta["engines"][0]["url"] == http_session.url
    # Nothing was launched, so nothing was stopped: the shared server still answers.
    assert http_session.alive()


def test_url_on_a_closed_port_fails_fast_with_one_line(tmp_path):
    from bench_pause.backends.http import free_port
    t0 = time.monotonic()
    r = bench_pause("run", "--backend", "http", "--url", f"http://127.0.0.1:{free_port()}",
                    "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert time.monotonic() - t0 < 60
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no vLLM server answers" in lines[0]
    assert not (tmp_path / "x" / "runs.parquet").exists()


class KillServerAfter(sweep.Progress):
    """Kills the sweep's server once ``n`` cells are measured (the fault under test)."""

    def __init__(self, n: int) -> None:
        self.n, self.done, self.killed = n, 0, []

    def advance(self) -> None:
        self.done += 1
        if self.done == self.n:
            for pid, cmd in procs.vllm_processes().items():
                if "api_server" in cmd and pid not in self._shared():
                    os.killpg(pid, signal.SIGKILL)
                    self.killed.append(pid)

    @staticmethod
    def _shared() -> set[int]:
        from tests.conftest import _shared_pids
        return _shared_pids


@pytest.mark.parametrize("fail_fast", [True, False])
def test_server_dying_mid_sweep_keeps_measurements(engine_config, loop, tmp_path, fail_fast):
    grid = Grid(backends=("http",), modes=("keep",), max_tokens=(48,), holds=(0.2,), repeats=4)
    cfg = sweep.SweepConfig(grid=grid, out=tmp_path, model=engine_config.model, fail_fast=fail_fast,
                            timeouts=Timeouts(startup=300, pause=20, resume=20, stream=20))
    plan = sweep.plan(cfg)
    progress = KillServerAfter(2)
    outcome = loop.run_until_complete(sweep.run(plan, progress))
    assert progress.killed
    runs = results.load(tmp_path)[0]
    measured = runs[~runs["warmup"]]
    # The two cells before the kill are on disk and fine; the next one records the death.
    assert measured["ok"].iloc[:2].all()
    assert "engine died" in measured["error"].iloc[2] or "Error" in measured["error"].iloc[2]
    meta = results.read_meta(tmp_path)
    if fail_fast:
        assert outcome.stopped_early and len(measured) == 3
        assert len(meta["engines"]) == 1
    else:
        # Restarted and finished the remaining cell on a fresh server.
        assert len(measured) == 4 and measured["ok"].iloc[3]
        assert len(meta["engines"]) == 2
