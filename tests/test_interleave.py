"""`bench-pause interleave`: variants in rounds, each its own engine, into one directory.

The pure parts (variants, order, run options) are checked directly; one real run measures
two variants on real engines (one with an injected delay), is interrupted, resumed, and
read back by `compare`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench_pause import interleave, results, vllm_compat
from bench_pause.scenario import ScenarioError

from .conftest import bench_pause, own_vllm
from .test_cli import one_line_error


@pytest.mark.parametrize("envs,injects,needle", [
    (["a=same"], [], "at least two"),
    (["a=same", "a=same"], [], "unique"),
    (["a"], [], "NAME=ENV"),
    (["a=same", "b=/no/such/venv"], [], "neither a virtualenv"),
    (["a=same", "b=same"], ["c=5"], "no --env named 'c'"),
    (["a=same", "b=same"], ["b=fast"], "NAME=MS"),
    (["a=same", "b=same"], ["b=-1"], "negative"),
])
def test_bad_variants_are_refused(envs, injects, needle):
    with pytest.raises(ScenarioError, match=needle):
        interleave.parse_variants(envs, injects)


def test_injected_delays_reach_only_their_variant(monkeypatch):
    monkeypatch.setenv(vllm_compat.INJECT_ENV, "0.5")  # from the caller's shell: must not leak in
    a, b = interleave.parse_variants(["a=same", "b=same"], ["b=5:2"])
    assert (b.pause_delay_s, b.resume_delay_s) == (0.005, 0.002)
    assert vllm_compat.INJECT_ENV not in a.environ() and vllm_compat.INJECT_RESUME_ENV not in a.environ()
    assert float(b.environ()[vllm_compat.INJECT_ENV]) == 0.005
    assert float(b.environ()[vllm_compat.INJECT_RESUME_ENV]) == 0.002


def test_each_round_is_every_variant_once_in_its_own_seeded_order():
    names = ["a", "b", "c", "d"]
    rounds = interleave.order(names, 6, seed=3)
    assert all(sorted(r) == names for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # shuffled, not the same order every round
    assert rounds == interleave.order(names, 6, seed=3)
    assert interleave.order(names, 8, seed=3, start=6) == interleave.order(names, 8, seed=3)[6:]


@pytest.mark.parametrize("run_args,needle", [(["--out", "x"], "--out is set by interleave"),
                                             (["--seed=3"], "--seed is set"),
                                             (["--mode", "freeze"], "unknown pause mode"),
                                             (["--no-such-option"], "not understood")])
def test_run_options_are_checked_before_anything_runs(run_args, needle):
    from bench_pause import cli
    with pytest.raises(ScenarioError, match=needle):
        cli.check_run_options(run_args)


def test_an_env_file_is_sourced_and_this_checkout_is_imported(tmp_path):
    env_sh = tmp_path / "env.sh"
    env_sh.write_text(f"export PYTHONPATH={tmp_path}\nexport FROM_ENV_SH=yes\n")
    (tmp_path / "bench_pause").mkdir()  # a stray copy on the environment's path must not win
    (tmp_path / "bench_pause" / "__init__.py").write_text("")
    v = interleave.Variant("b", str(env_sh))
    code = "import os, bench_pause; print(os.environ['FROM_ENV_SH'], bench_pause.__file__)"
    out = subprocess.run(v.python(["-c", code]), env=v.environ(), capture_output=True, text=True, timeout=60,
                         cwd=interleave.ROOT)
    assert out.stdout.split() == ["yes", str(interleave.ROOT / "bench_pause" / "__init__.py")], out.stderr
    assert interleave.read_versions([interleave.Variant("a", "same")])[0].vllm == vllm_compat.vllm_version()


def test_bad_input_fails_in_one_line_before_any_engine(tmp_path):
    r = bench_pause("interleave", "--env", "a=same", "--env", "b=same", "--out", tmp_path / "c", "--",
                    "--pause-point", "tokens:99", "--max-tokens", "32")
    one_line_error(r, "not before the end")
    assert not (tmp_path / "c").exists()


RUN = ["--backend", "offline", "--mode", "keep", "--pause-point", "tokens:5", "--max-tokens", "64",
       "--concurrency", "1", "--hold", "0.1", "--repeats", "6"]


@pytest.mark.engine
def test_stop_after_starts_no_run_that_would_outlast_it(tmp_path):
    # A lent machine goes back at a fixed time: a run cut short there is an engine start wasted
    # and a run split over two engines. With a finished run of 100 s on record, 10 s left
    # starts nothing (no engine: the plan records no new run) and exits 75 for --resume.
    variants = [interleave.Variant("a", "same", vllm="x"), interleave.Variant("b", "same", vllm="x")]
    job = interleave.Interleave.create(tmp_path / "cmp", variants, 1, 0, RUN, resume=False, say=lambda *_: None)
    job.plan["runs"]["a/r01"] = {"round": 1, "position": 0, "status": "done", "exit": 0, "wall_s": 100.0}
    assert job.run(stop_after_s=10.0) == interleave.EXIT_TIME
    assert list(job.plan["runs"]) == ["a/r01"] and not (tmp_path / "cmp" / "b").exists()
    r = bench_pause("interleave", "--env", "a=same", "--env", "b=same", "--stop-after", "0", "--out",
                    tmp_path / "x", "--", *RUN, timeout=120)
    one_line_error(r, "--stop-after must be a positive number")


def test_interrupted_comparison_resumes_and_compare_reads_it(tmp_path):
    out = tmp_path / "cmp"
    args = ["interleave", "--env", "a=same", "--env", "slow=same", "--inject", "slow=30", "--rounds", "1",
            "--out", str(out), "--", *RUN]
    proc = subprocess.Popen([sys.executable, "-m", "bench_pause", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(len(pd.read_parquet(p)) for p in out.glob("*/r01/runs.parquet") if p.stat().st_size):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stdout + stderr
    plan = json.loads((out / "interleave.json").read_text())
    # The run got the signal and closed its engine itself (143), not killed mid-sweep (-9).
    assert [(r["status"], r["exit"]) for r in plan["runs"].values() if r["status"] != "done"] == [("interrupted", 143)]
    assert not own_vllm()

    r = bench_pause(*args[:-len(RUN) - 1], "--resume", "--", *RUN, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((out / "interleave.json").read_text())
    assert sorted(plan["order"][0]) == ["a", "slow"]
    assert {k: v["status"] for k, v in plan["runs"].items()} == {"a/r01": "done", "slow/r01": "done"}
    a, slow = (results.load(out / name / "r01") for name in ("a", "slow"))
    assert a[3]["injected_pause_delay_s"] == 0 and slow[3]["injected_pause_delay_s"] == 0.03
    # The injected 30 ms is in every pause call and every resume call of the slowed variant.
    assert results.measured(slow[0])["pause_api_s"].min() > 0.03
    assert results.measured(slow[0])["resume_ttft_s"].min() > 0.03
    assert len(results.measured(a[0])) == len(results.measured(slow[0])) == 6

    again = bench_pause(*args[:-len(RUN) - 1], "--resume", "--", *RUN, timeout=120)
    assert again.returncode == 0 and "round" not in again.stdout  # nothing left to run

    cmp = bench_pause("compare", out, "--md", tmp_path / "c.md", timeout=120)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr  # one run a side: underpowered, never a verdict
    text = (tmp_path / "c.md").read_text()
    assert "slow (vLLM" in text and "underpowered" in text and "1 run(s)" in text
