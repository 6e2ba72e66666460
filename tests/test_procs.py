"""Process hygiene without an engine: shared memory left by a killed process is unlinked,
and a segment that a live process still maps, or that was there before, is not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from bench_pause import procs

# Makes a segment the way vLLM's message queue does, prints its name, then waits to be
# killed (a killed process never unlinks: that is the leak).
_MAKE = ("import sys, time\nfrom multiprocessing import shared_memory, resource_tracker\n"
         "shm = shared_memory.SharedMemory(create=True, size=1 << 16)\n"
         "resource_tracker.unregister(shm._name, 'shared_memory')\n"  # as if the tracker died too
         "print(shm.name, flush=True)\ntime.sleep(600)\n")


def _maker() -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", _MAKE], stdout=subprocess.PIPE, text=True)
    name = p.stdout.readline().strip().lstrip("/")
    assert name.startswith("psm_"), name
    return p, name


@pytest.mark.skipif(not procs.SHM.is_dir(), reason="no /dev/shm on this host")
def test_segments_a_killed_process_left_are_unlinked_and_live_ones_kept():
    before = procs.shm_names()
    killed, orphan = _maker()
    live, kept = _maker()
    try:
        assert {orphan, kept} <= procs.shm_names() - before
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        time.sleep(0.2)
        assert (procs.SHM / orphan).exists()  # the leak itself: nobody unlinked it
        assert procs.unlink_orphans(before) == [orphan]
        assert not (procs.SHM / orphan).exists() and (procs.SHM / kept).exists()
        # Something there before the engine started is never touched, even when unmapped.
        live.send_signal(signal.SIGKILL)
        live.wait(timeout=30)
        assert procs.unlink_orphans(before | {kept}) == [] and (procs.SHM / kept).exists()
    finally:
        for p in (killed, live):
            p.kill()
            p.wait(timeout=30)
        for name in (orphan, kept):
            (procs.SHM / name).unlink(missing_ok=True)
