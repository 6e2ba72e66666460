"""The asv suite as CI runs it: asv check, a quick `asv run --python=same`, asv publish.

Fails if any tracked value is missing for a combination the host measured.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def asv(config: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "asv", "--config", str(config), *args], capture_output=True,
                       text=True, env=env, timeout=3000)
    assert r.returncode == 0, f"asv {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.engine
@pytest.mark.timeout(1800)  # both quick sweeps, four engines (dp 1 and 2 a backend): more than the default on a slow host
def test_asv_quick_run_and_publish(tmp_path):
    text = re.sub(r"^\s*//.*$", "", (ROOT / "asv.conf.json").read_text(), flags=re.M)
    conf = json.loads(text)
    conf.update(repo=str(ROOT), benchmark_dir=str(ROOT / "benchmarks"),
                results_dir=str(tmp_path / "results"), html_dir=str(tmp_path / "html"))
    config = tmp_path / "asv.conf.json"
    config.write_text(json.dumps(conf))
    # One repeat a cell: the suite's plumbing is under test here, not the spread (half the time).
    env = dict(os.environ, BENCH_PAUSE_PROFILE="quick", BENCH_PAUSE_ASV_SWEEPS=str(tmp_path / "sweeps"),
               BENCH_PAUSE_RUN_ARGS="--repeats 1")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    asv(config, "machine", "--yes", env=env)
    asv(config, "check", "--python=same", env=env)
    asv(config, "run", "--python=same", "--launch-method", "forkserver", "--set-commit-hash", commit, "--show-stderr",
        env=env)
    asv(config, "publish", env=env)
    assert (tmp_path / "html" / "index.html").exists()

    files = [p for p in (tmp_path / "results").rglob("*.json") if p.name not in ("machine.json", "benchmarks.json")]
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    names = data["result_columns"]
    got = {name: dict(zip(names, row)) for name, row in data["results"].items()}
    from bench_pause import profiles
    grid = profiles.get("quick")
    measured = {(sc.dp_size, sc.mode, sc.pause_point, sc.max_tokens, sc.concurrency, sc.clear_cache)
                for sc in grid.scenarios()}
    combos = list(itertools.product(grid.dp_sizes, grid.modes, grid.pause_points, grid.max_tokens,
                                    grid.concurrency, grid.clear_cache, ["default"]))
    from bench_pause import results
    sweeps = {s.name.split("-")[1]: results.load(s)[0] for s in (tmp_path / "sweeps").iterdir()}

    def missed_everywhere(backend: str, cell: tuple) -> bool:
        runs = sweeps[backend.lower()]
        keys = ["dp_size", "mode", "pause_point", "max_tokens", "concurrency", "clear_cache"]
        tried = runs[~runs["warmup"].astype(bool)
                     & (runs[keys].apply(tuple, axis=1) == tuple(cell))]
        return len(tried) > 0 and bool(results.missed(tried).all())

    for backend in ("Offline", "Http"):
        for metric in ("pause_api_s", "quiesce_s", "gap_excess_s", "resume_ttft_s", "resume_all_s",
                       "preemptions", "leak_tokens", "not_ok", "stalls", "pause_api_p90_s", "pause_api_max_s",
                       "resume_all_p90_s", "resume_all_max_s"):
            result = got[f"pause.{backend}.track_{metric}"]["result"]
            assert len(result) == len(combos), (backend, metric)
            for combo, value in zip(combos, result):
                dp, mode, *_, clear_cache, _model = combo
                if combo[:-1] not in measured:  # wait without clear_cache: skipped, not failed
                    assert value is None or value != value, (backend, metric, combo)
                    continue
                if metric.startswith(("gap_excess", "resume_ttft", "resume_all")) and mode != "keep":
                    continue  # no gap when the requests are aborted or drained
                if value is None or value != value:
                    # Only where every attempt at the cell missed (a starved server streamed a
                    # whole request before the pause reached it): recorded, never measured.
                    assert missed_everywhere(backend, combo[:-1]), (backend, metric, combo)
                    continue
                if metric == "preemptions" and mode == "keep" and not clear_cache:
                    assert value == 0, (backend, combo)
                if metric == "preemptions" and mode == "keep" and clear_cache and combo[2] != "prefill":
                    # clear_cache preempts the running requests: the first one at least (the
                    # second may not have reached a starved server's engine yet)
                    assert 1 <= value <= 2, (backend, combo)
                if metric == "leak_tokens":
                    assert value == 0, (backend, combo)
                if metric.endswith("_max_s"):  # the tail is the tail: max >= p90 >= nothing below
                    p90 = got[f"pause.{backend}.track_{metric.replace('_max_s', '_p90_s')}"]["result"][combos.index(combo)]
                    assert value >= p90 > 0, (backend, metric, combo)
                if metric == "not_ok" and not (backend == "Http" and mode == "abort"):
                    # (over HTTP a request aborted before its first token ends with no finish
                    # reason: a vLLM behaviour docs/findings.md describes, counted as not ok;
                    # whether the second stream had a token yet at the pause is timing)
                    assert value == 0, (backend, combo)

    # The sweeps behind it: at dp 2 the two requests go one to each rank, and both report.
    for sweep in (tmp_path / "sweeps").iterdir():
        runs = results.measured(results.load(sweep)[0])
        dp2 = runs[runs["dp_size"] == 2]
        assert len(dp2), sweep
        for row in dp2.itertuples():
            ranks = json.loads(row.per_rank)
            assert sorted(ranks) == ["0", "1"] and all(r["requests"] == 1 for r in ranks.values())
            assert row.quiesce_worst_s == max(r["quiesce_s"] for r in ranks.values())
            if row.mode == "keep" and row.clear_cache and row.pause_point != "prefill":
                # rank 0 runs the first request, paused after its 5th token: it was preempted
                assert ranks["0"]["preemptions"] == 1.0 and ranks["1"]["preemptions"] <= 1.0, (sweep, row.measurement)
