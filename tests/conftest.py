"""Shared real engines and the no-orphan check.

Engine start-up costs tens of seconds on the CI host, so one AsyncLLM and one HTTP
server serve every test of a session. Tests marked ``engine`` are checked afterwards:
a vLLM process this session started that is not one of the shared engines' fails the test.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench_pause import procs, vllm_compat
from bench_pause.backends.base import Timeouts

FIXTURES = Path(__file__).parent / "fixtures"


def bench_pause(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the command line as a user does, in a child process."""
    return subprocess.run([sys.executable, "-m", "bench_pause", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


_shared_pids: set[int] = set()
# The processes this session started are its descendants and whatever carries this mark in
# its environment: every program it executes inherits the mark (a command line run as a
# child, the server, their engines), and an engine they leave behind keeps it after its
# parent is gone. A process forked from this one shows the environment this one was
# started with, not the mark, in /proc: it is found as a descendant. The no-orphan check
# stops only these, so a second test session on the host (a fresh-clone run beside an
# edit) keeps its engines.
SESSION_MARK = "BENCH_PAUSE_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{random.getrandbits(32):08x}"


def _marked(pid: int) -> bool:
    try:
        return psutil.Process(pid).environ().get(SESSION_MARK) == os.environ[SESSION_MARK]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def own_vllm() -> dict[int, str]:
    """pid -> command line of the vLLM processes this test session started, the shared
    engines' left out: what a test may kill or must have seen stopped."""
    mine = procs.descendants()
    return {pid: cmd for pid, cmd in procs.vllm_processes().items()
            if pid not in _shared_pids and pid != os.getpid() and (pid in mine or _marked(pid))}


@pytest.fixture(scope="session")
def loop():
    """One event loop for the session: engines are bound to the loop they started on."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def model_path() -> str:
    from bench_pause.model import default_model
    return default_model(on_gpu=vllm_compat.on_gpu())


@pytest.fixture(scope="session")
def engine_config(model_path):
    """The shared engines are set up for weight_sync too, as a sweep with that cycle sets
    them up (the extension does nothing until a push or a probe calls it)."""
    from bench_pause import weight_sync
    return vllm_compat.engine_config(model_path, [weight_sync.engine_args("shm")], gpu=vllm_compat.on_gpu())


@pytest.fixture(scope="session")
def staged(model_path):
    """Both weight sets of the test model, staged by the trainer process once."""
    from bench_pause import weight_sync
    s = weight_sync.stage(model_path)
    yield s
    s.remove()


def _attached(loop, session, staged):
    from bench_pause import weight_sync
    loop.run_until_complete(weight_sync.attach(session, staged, Timeouts()))
    return session


def _shared(loop, session):
    before = procs.descendants()
    loop.run_until_complete(session.start())
    _shared_pids.update(procs.descendants() - before)
    return session


@pytest.fixture(scope="session")
def offline_session(loop, engine_config, staged):
    from bench_pause.backends.offline import OfflineSession
    session = _attached(loop, _shared(loop, OfflineSession(engine_config, 1, Timeouts(startup=300))), staged)
    yield session
    loop.run_until_complete(session.close())


def _engine_behind_server(session):
    """Lower the engine's CPU priority below its API server's (nice +10).

    On a GPU box the engine waits on the GPU and the server has the CPU it needs. On a
    2-core host with another process busy, the engine's threads took the CPU from the
    server, which then streamed a whole 1024-token request in one burst after the engine
    had finished it: six pauses in a row came too late to stop anything ("missed"), and
    the contract could not be checked. Tests check contracts, not speed, so the server is
    given what it would have in production."""
    import psutil
    for pid in procs.descendants(session.proc.pid):
        try:
            psutil.Process(pid).nice(10)
        except psutil.Error:
            pass
    return session


@pytest.fixture(scope="session")
def http_session(loop, engine_config, staged, tmp_path_factory):
    from bench_pause.backends.http import HttpSession
    log_dir = tmp_path_factory.mktemp("server-log")
    session = _engine_behind_server(_shared(loop, HttpSession(engine_config, 1, Timeouts(startup=300), log_dir)))
    _attached(loop, session, staged)
    yield session
    loop.run_until_complete(session.close())


@pytest.fixture(scope="session")
def second_http_session(loop, engine_config, tmp_path_factory):
    """Another server of the same model: the fleet test pauses both at once."""
    from bench_pause.backends.http import HttpSession
    log_dir = tmp_path_factory.mktemp("server-log-2")
    session = _engine_behind_server(_shared(loop, HttpSession(engine_config, 1, Timeouts(startup=300), log_dir)))
    yield session
    loop.run_until_complete(session.close())


@pytest.fixture(scope="session")
def measure_on(loop):
    """measure_on(session, scenario) -> Measurement, on the shared loop; like the sweep,
    a pause that missed the first request is measured again (the last attempt counts), up to
    six times: a contract can only be checked on a pause that landed, and on a host with
    every core busy a starved server can deliver a whole request before the pause reaches it."""
    from bench_pause.measure import attempts

    async def last(session, scenario, timeouts):
        async for m in attempts(session, scenario, timeouts, random.Random(0), max_missed=5):
            pass
        return m

    def run(session, scenario, timeouts: Timeouts | None = None):
        return loop.run_until_complete(last(session, scenario, timeouts or Timeouts()))
    return run


def _strays() -> list[str]:
    return [f"{pid} {cmd[:120]}" for pid, cmd in own_vllm().items()]


@pytest.fixture(autouse=True)
def no_orphans(request):
    """After an engine test, no vLLM process may remain but the shared engines', and no
    shared memory that appeared during the test may be left unmapped (it is unlinked, and
    the test fails: the engine session should have)."""
    shm = procs.shm_names()
    yield
    if request.node.get_closest_marker("engine") is None:
        return
    strays = _strays()
    if strays:
        procs.stop({int(s.split()[0]) for s in strays}, grace_s=2)
        pytest.fail("vLLM processes outlived the test:\n" + "\n".join(strays))
    left = procs.unlink_orphans(shm)
    if left:
        pytest.fail("shared memory outlived the test's engines (now unlinked): " + ", ".join(left))
