"""Process hygiene: find and stop every process an engine or server left behind.

A benchmark that leaves a vLLM engine holding a GPU after a fault is worse than none on
a shared box, so every backend records the processes it created and this module stops
them: terminate, wait a grace period, then kill; and the shared memory such processes leave
in /dev/shm is unlinked once nothing maps it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

SHM = Path("/dev/shm")
# Python's shared-memory segments (vLLM's message queues) and multiprocessing's named
# semaphores: what an engine process leaves in /dev/shm when it is killed before it unlinks.
SHM_PREFIXES = ("psm_", "sem.mp-")
# Command-line fragments of vLLM processes (engine core, workers, the API server).
VLLM_MARKERS = ("vllm.entrypoints", "vllm serve", "EngineCore", "VllmWorker", "DPCoordinator")


def descendants(pid: int | None = None) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def stop(pids: set[int], grace_s: float = 10.0) -> None:
    """Terminate ``pids``, then kill whatever is still alive after ``grace_s``."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs.append(proc)
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and its whole group."""
    members = descendants(proc.pid) | {proc.pid}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Children that moved to another group (multiprocessing spawn keeps the group, but be sure).
    stop({p for p in members if psutil.pid_exists(p)}, grace_s=2.0)


def alive(pids: set[int]) -> bool:
    """Whether every process in ``pids`` is still running (zombies count as dead)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
    return True


def vllm_processes() -> dict[int, str]:
    """pid -> command line of every live process on the host that looks like vLLM's."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue  # already dead, only waiting to be reaped
        text = " ".join(info["cmdline"] or []) + " " + (info["name"] or "")
        if any(marker in text for marker in VLLM_MARKERS):
            found[info["pid"]] = text.strip()
    return found


def shm_names() -> set[str]:
    """The shared-memory segments and named semaphores now in /dev/shm (see SHM_PREFIXES)."""
    try:
        return {p.name for p in SHM.iterdir() if p.name.startswith(SHM_PREFIXES)}
    except OSError:
        return set()


def _shm_in_use() -> set[str]:
    """The /dev/shm names some live process maps or holds open."""
    used = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            used.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0].strip()
                        for line in (proc / "maps").read_text().splitlines() if "/dev/shm/" in line)
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/"):].split(" ")[0])
        except OSError:  # gone, or not ours to read
            continue
    return used


def unlink_orphans(before: set[str]) -> list[str]:
    """Unlink the segments that appeared since ``before`` and that no live process maps or
    holds open: vLLM unlinks a message queue from its maker's destructor, which a killed
    process never runs (an offline data-parallel run left two 160-250 MB ``psm_*`` segments,
    the fault tests more, with ``sem.mp-*`` semaphores). Returns the names removed."""
    new = shm_names() - before
    if not new:
        return []
    removed = []
    for name in sorted(new - _shm_in_use()):
        try:
            (SHM / name).unlink()
            removed.append(name)
        except OSError:
            continue
    return removed
