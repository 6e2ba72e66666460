"""The command line as a user runs it: bad input, and one real run end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench_pause import results, vllm_compat

from .conftest import bench_pause


def one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bench-pause: error:") and needle in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--mode", "freeze"], "unknown pause mode"),
    (["--pause-point", "tokens"], "bad pause point"),
    (["--pause-point", "tokens:100", "--max-tokens", "64"], "not before the end"),
    (["--model", "/no/such/model"], "does not exist"),
    (["--model", "not a model"], "no model"),
    (["--model", "tiny-mo"], "give a preset (tiny, opt-125m, tiny-moe, tiny-qwen3, qwen3-8b"),
    (["--engine-args", "--data-parallel-size 2"], "with --dp"),
    (["--engine-args", "--no-such-flag 3"], "engine arguments"),
    (["--repeats", "0"], "repeats"),
])
def test_bad_input_fails_before_any_engine(tmp_path, args, needle):
    r = bench_pause("run", *args, "--out", str(tmp_path / "out"))
    one_line_error(r, needle)
    assert not (tmp_path / "out").exists()


def test_sleep_options_belong_to_the_sleep_cycle(tmp_path):
    one_line_error(bench_pause("run", "--sleep-level", "0", "--out", str(tmp_path / "out")),
                   "belong to the sleep cycle")


@pytest.mark.skipif(vllm_compat.on_gpu(), reason="a CPU host refuses sleep levels 1 and 2")
@pytest.mark.parametrize("levels", [[], ["--sleep-level", "1"], ["--sleep-level", "0", "2"]])
def test_sleep_levels_that_free_memory_are_refused_on_a_cpu(tmp_path, levels):
    """vLLM's CPU platform has no sleep mode: its workers ignore sleep, so a level that frees
    memory would measure nothing; said in one line before any engine starts."""
    r = bench_pause("run", "--cycle", "sleep", *levels, "--out", str(tmp_path / "out"))
    one_line_error(r, "sleep levels 1 and 2 need a GPU")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; checked through a file instead")
def test_unwritable_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    one_line_error(bench_pause("run", "--out", str(ro / "x")), "not writable")


def test_output_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    one_line_error(bench_pause("run", "--out", str(f)), "not a directory")


def test_output_that_holds_a_run_needs_resume(tmp_path):
    """A second run into a run's directory would append its pauses under a meta.json that
    describes only itself; refused before any engine starts, and the run left untouched."""
    out = tmp_path / "run"
    out.mkdir()
    pd.DataFrame({"measurement": [0]}).to_parquet(out / "runs.parquet")
    (out / "meta.json").write_text("{}")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    one_line_error(bench_pause("run", "--out", str(out)), "already holds a run: --resume continues it")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_a_vllm_without_the_pause_api_is_refused(monkeypatch):
    class OldAsyncLLM:  # the shape of a release from before the pause API
        async def generate(self) -> None: ...

    monkeypatch.setattr(vllm_compat, "async_llm_class", lambda: OldAsyncLLM)
    with pytest.raises(vllm_compat.VllmError, match="cannot pause"):
        vllm_compat.pause_api()


def test_legacy_api_refuses_keep():
    from bench_pause.scenario import ScenarioError
    with pytest.raises(ScenarioError, match="drop mode keep"):
        vllm_compat.check_modes(vllm_compat.LEGACY_API, ["keep", "wait"])
    assert vllm_compat.pause_kwargs(vllm_compat.LEGACY_API, "wait", True) == {
        "wait_for_inflight_requests": True, "clear_cache": True}


@pytest.mark.engine
def test_run_writes_all_four_files(tmp_path, monkeypatch):
    """One real run end to end, on the production-shape path of the CPU: a Qwen3 preset
    written without weights, vLLM making them (--load-format dummy); every mode, a plain
    pause and a weight push, all measured and ok."""
    monkeypatch.setenv("BENCH_PAUSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    r = bench_pause("run", "--model", "tiny-qwen3", "--backend", "offline", "--mode", "keep", "abort", "wait",
                    "--pause-point", "tokens:5", "--max-tokens", "32", "--concurrency", "1", "--hold", "0.2",
                    "--cycle", "pause", "weight_sync", "--repeats", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("runs.parquet", "tokens.parquet", "events.parquet", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    runs = pd.read_parquet(out / "runs.parquet")
    measured = results.measured(runs)
    assert len(measured) == 12 and runs["warmup"].sum() == 1
    assert measured["ok"].all()
    assert set(measured["mode"]) == {"keep", "abort", "wait"}
    synced = measured[measured["cycle"] == "weight_sync"]
    assert len(synced) == 6 and (synced["wrong_weight_tokens"] == 0).all() and (synced["sync_s"] > 0).all()
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert set(tokens["measurement"]) == set(runs["measurement"])
    meta = json.loads((out / "meta.json").read_text())
    for key in ("vllm_version", "torch_version", "device", "model", "engine_args", "started", "host"):
        assert meta[key], key
    assert meta["engines"][0]["startup_s"] > 0
    assert meta["engine"] == {"execution": "CPU", "load_format": "dummy", "gpu_memory_utilization": 0.08,
                              "max_model_len": None}
    assert meta["engine_args"].count("--load-format") == 1
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    # The trainer's staged sets are recorded and removed once the sweep ended.
    assert [s["name"] for s in meta["weight_sets"]] == ["A", "B"]
    assert not any(Path(path).exists() for s in meta["weight_sets"] for path in s["paths"])
    assert "p50 / p90 / max per scenario" in r.stdout


@pytest.mark.parametrize("engine_args", [["--engine-args", "--no-enforce-eager"],
                                         ["--engine-args=--enforce-eager"],
                                         ["--engine-args", "--max-model-len 1024", "--engine-args", "--enforce-eager"]])
def test_engine_args_are_taken_as_written(tmp_path, engine_args):
    # A flag starting with a dash is vLLM's, not ours: the error reached is the next one.
    r = bench_pause("run", *engine_args, "--repeats", "0", "--out", str(tmp_path / "out"))
    one_line_error(r, "repeats must be >= 1")


def test_help_says_what_it_measures_and_how_to_start():
    r = bench_pause("--help")
    assert r.returncode == 0 and "pauses and resumes generation" in r.stdout
    assert "bench-pause run --profile auto" in r.stdout and "bench-pause report" in r.stdout
    r = bench_pause("run", "--help")
    assert "qwen3-30b-a3b" in r.stdout and "--load-format dummy" in r.stdout


@pytest.mark.engine
def test_resume_refuses_a_run_made_with_another_vllm(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"vllm_version": "0.0.1"}))
    r = bench_pause("run", "--resume", "--out", str(out))
    one_line_error(r, "measured with vLLM 0.0.1")


@pytest.mark.parametrize("url,risky", [("http://127.0.0.1:8000", False), ("http://localhost:8000", False),
                                       ("http://[::1]:8000", False), ("http://10.0.0.5:8000", True),
                                       ("http://gpu-node-3:8000", True), ("http://0.0.0.0:8000", True)])
def test_a_url_off_loopback_is_warned_about(url, risky):
    from bench_pause.sweep import exposure_warning
    warning = exposure_warning(url)
    assert bool(warning) == risky
    if risky:
        assert "/collective_rpc" in warning and url in warning


def test_a_signal_stops_the_sweep_even_when_a_cancel_is_swallowed():
    """Python 3.11's wait_for swallows a cancel that lands as its call completes: the sweep
    ran on to the end and exited 0 (CI saw it). The signal's stop flag must still end the
    run, with the signal's exit status."""
    import asyncio
    import signal
    import time

    from bench_pause import cli
    from bench_pause.progress import RichProgress

    stopped_at = {}

    async def swallowing_sweep(stop: asyncio.Event):
        asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # what wait_for does when its call has just finished
        await asyncio.wait_for(stop.wait(), 5)
        stopped_at["t"] = time.monotonic()
        return object()  # never reached its end as a finished sweep: the exit status says so

    t0 = time.monotonic()
    assert cli._run_async(swallowing_sweep, RichProgress()) == cli.EXIT_TERM
    assert stopped_at["t"] - t0 < 5
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
