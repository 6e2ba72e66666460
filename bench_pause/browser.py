"""A static site as a reader sees it: served on 127.0.0.1 and loaded in headless Chromium
on a network that ends at this host.

The asv site is a single-page app: its graphs exist only after its scripts ran, so reading
its HTML proves nothing. Chromium runs them (``--virtual-time-budget`` lets them finish,
data requests included) and hands back the DOM or a screenshot. Every host name resolves
to nothing for the browser, so a page that still needs the internet fails here even on a
host that has it, as it would on an offline cluster.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome")
OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # --host-resolver-rules: no host but this one


def find() -> str | None:
    """The Chromium executable on PATH, if any."""
    return next((path for path in map(shutil.which, NAMES) if path), None)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:  # one line per file would bury a test's output
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _chromium(binary: str, args: list[str], timeout: float) -> str:
    """Run headless Chromium once with a fresh profile; its stdout. The browser and its
    helper processes share one process group, which is killed whatever happens, so none
    outlives the call."""
    with tempfile.TemporaryDirectory(prefix="bench-pause-chromium-") as profile:
        cmd = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--host-resolver-rules={OFFLINE}",
               *(["--no-sandbox"] if os.geteuid() == 0 else []), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"chromium did not finish within {timeout:.0f} s: {' '.join(args)}") from None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    if proc.returncode:
        raise RuntimeError(f"chromium exited {proc.returncode}: {err[-2000:]}")
    return out


def dom(binary: str, url: str, budget_ms: int = 5000, timeout: float = 60) -> str:
    """The DOM of ``url`` once its scripts and their requests have run for ``budget_ms`` of
    virtual time."""
    return _chromium(binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)


def screenshot(binary: str, url: str, out: Path, size: tuple[int, int] = (1280, 900), budget_ms: int = 5000,
               timeout: float = 60) -> Path:
    """A PNG of ``url`` after its scripts ran, as a window of ``size`` shows it."""
    out = Path(out).resolve()
    _chromium(binary, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                       "--hide-scrollbars", f"--screenshot={out}", url], timeout)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out
