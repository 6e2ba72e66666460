"""The offline install (tools/vllm-bundle): parts cut by common.sh's split_parts and put
back together by receive.sh, run here on small payloads of the same layout as
make-bundle's and make-runtime's (those download hundreds of MB; the GPU sessions run them).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "vllm-bundle"


def _xz_tar(out: Path, files: dict[str, str], src: Path) -> None:
    with tarfile.open(out, "w:xz") as tar:
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
            tar.add(src / name, arcname=name)


def _parts(tmp: Path, name: str, payload_file: str, files: dict[str, str], *manifest: str) -> list[Path]:
    """A payload tar holding ``payload_file`` (an xz tar of ``files``), cut into parts of 5
    MB: 6 MB of random bytes beside it (a file receive.sh does not read) make it two."""
    payload = tmp / f"{name}-payload"
    payload.mkdir()
    _xz_tar(payload / payload_file, files, tmp / f"{name}-src")
    (payload / "padding").write_bytes(os.urandom(6_000_000))
    tar = tmp / f"{name}.tar"
    subprocess.run(["tar", "-C", payload, "-cf", tar, "."], check=True)
    out = tmp / "bundle" / name
    subprocess.run(["bash", "-c", f'. "{TOOLS}/common.sh"; split_parts "$@"', "_", tar, out, "5", TOOLS, *manifest],
                   check=True, capture_output=True)
    return sorted(out.glob("p*"))


def _receive(part: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_BUNDLE_HOME": str(home), "BUNDLE_PYTHON": sys.executable}
    return subprocess.run(["bash", part / "receive.sh"], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_a_runtime_and_the_release_that_pins_it_install_in_any_order(tmp_path, home):
    runtime = _parts(tmp_path, "torch-9.9.9", "runtime.tar.xz", {"torch/__init__.py": "__version__ = '9.9.9'\n"},
                     "kind=torch", "version=9.9.9", "libs=none")
    release = _parts(tmp_path, "v1.2.3", "vllm.tar.xz", {"vllm/__init__.py": "__version__ = '1.2.3'\n",
                                                         "dsl/dsl_packages/cute/__init__.py": ""},
                     "kind=vllm", "version=1.2.3", "torch=9.9.9")
    assert len(runtime) == len(release) == 2
    # The release's parts first: it installs, and says the runtime it pins is still to come.
    assert "1 of 2 part(s)" in _receive(release[1], home).stdout
    done = _receive(release[0], home)
    assert done.returncode == 0 and "runs once the torch 9.9.9 runtime is received too" in done.stdout, done
    env = (home / "vllm-1.2.3" / "env.sh").read_text()
    # The CuTe DSL's own folder (its .pth puts it on sys.path in site-packages alone), then the runtime.
    assert f"export PYTHONPATH={home}/vllm-1.2.3:{home}/vllm-1.2.3/dsl/dsl_packages:{home}/torch-9.9.9\n" in env and "VLLM_USE_FLASHINFER_SAMPLER=0" in env
    for part in runtime:
        assert _receive(part, home).returncode == 0
    assert (home / "torch-9.9.9" / "READY").exists() and (home / "torch-9.9.9" / "torch" / "__init__.py").exists()
    assert not (home / "gpu-bundle").exists() or not any((home / "gpu-bundle").iterdir())  # staging removed
    probe = subprocess.run(["bash", "-c", f'. "{home}/vllm-1.2.3/env.sh"; "{sys.executable}" -c '
                            '"import torch, vllm; print(torch.__version__, vllm.__version__)"'],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["9.9.9", "1.2.3"]
    assert "already installed" in _receive(runtime[0], home).stdout  # a part sent twice changes nothing


def test_a_release_of_the_hosts_own_torch_needs_no_runtime(tmp_path, home):
    import importlib.metadata
    own = importlib.metadata.version("torch").split("+")[0]
    release = _parts(tmp_path, "v0.1.0", "vllm.tar.xz", {"vllm/__init__.py": ""}, "kind=vllm", "version=0.1.0",
                     f"torch={own}")
    out = [_receive(p, home) for p in release][-1]
    assert out.returncode == 0 and "runtime" not in out.stdout
    assert f"export PYTHONPATH={home}/vllm-0.1.0\n" in (home / "vllm-0.1.0" / "env.sh").read_text()


def test_a_damaged_part_installs_nothing(tmp_path, home):
    release = _parts(tmp_path, "v1.0.0", "vllm.tar.xz", {"vllm/__init__.py": ""}, "kind=vllm", "version=1.0.0",
                     "torch=")
    data = next(release[0].glob("part.*"))
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    _receive(release[0], home)
    out = _receive(release[1], home)
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr
    assert not (home / "vllm-1.0.0" / "env.sh").exists()


@pytest.mark.skipif(not all(map(shutil.which, ("cc", "strip", "readelf"))), reason="needs cc and binutils")
def test_strip_debug_drops_dwarf_and_keeps_the_library_working(tmp_path):
    """A library built with -g, as triton's libtriton.so ships: strip_debug drops its DWARF
    sections, and it still loads and computes."""
    lib = tmp_path / "lib" / "libtwice.so.1"
    lib.parent.mkdir()
    (tmp_path / "twice.c").write_text("int twice(int x) { return 2 * x; }\n")
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", lib, tmp_path / "twice.c"], check=True)

    def sections() -> str:
        return subprocess.run(["readelf", "-S", lib], capture_output=True, text=True, check=True).stdout

    assert ".debug_info" in sections()
    subprocess.run(["bash", "-c", f'. "{TOOLS}/common.sh"; strip_debug "$1"', "_", tmp_path], check=True)
    assert ".debug_info" not in sections() and ".text" in sections()
    assert ctypes.CDLL(str(lib)).twice(21) == 42
