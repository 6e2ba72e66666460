"""asv suite: what a pause costs, per backend, over dp size, mode, pause point, max_tokens,
concurrency, clear_cache and model.

One sweep per backend and model runs in ``setup_cache`` (one engine per dp size, not one
per parameter combination), through the same ``bench-pause run`` a user runs; the track_
benchmarks then read its measurements. The grid is a named profile, chosen with
BENCH_PAUSE_PROFILE (default: auto, i.e. gpu on a GPU host and quick on a CPU); the
models with BENCH_PAUSE_MODELS, comma-separated presets, directories or Hugging Face ids
(default: ``default``, the host's default model); BENCH_PAUSE_RUN_ARGS adds options to
every ``bench-pause run`` (for example ``--startup-timeout 240``). Combinations the host
cannot run (dp larger than
its GPUs, or wait with clear_cache False, which the profiles leave out) have no
measurements and are skipped.

Each track_ benchmark returns ``{"samples": [...], "number": 1}``: asv 0.6's runner
treats any result of that shape like a timing benchmark's, so it stores the per-repeat
samples, reports their median and computes the 99% confidence interval and quartiles
that `asv compare` uses to call a change significant. A plain number would give asv a
single value and no spread.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
try:
    from bench_pause import profiles, results, summary
except ImportError:  # not installed (a GPU box running from the checkout): use the checkout
    sys.path.insert(0, str(ROOT))
    from bench_pause import profiles, results, summary

PROFILE = os.environ.get("BENCH_PAUSE_PROFILE", "auto")
if PROFILE == "auto":  # the grid the host suits, named, so the sweeps and the params agree
    from bench_pause import vllm_compat
    PROFILE = profiles.resolve(PROFILE, vllm_compat.on_gpu())
MODELS = [m.strip() for m in os.environ.get("BENCH_PAUSE_MODELS", "default").split(",") if m.strip()]
SWEEPS = Path(os.environ.get("BENCH_PAUSE_ASV_SWEEPS", ROOT / "results" / "asv-sweeps"))


GRID = profiles.get(PROFILE)


def sweep(backend: str) -> pd.DataFrame:
    """Run the profile's grid for one backend and each model with the bench-pause CLI; their
    measurements, with a ``model_param`` column naming the asv parameter value."""
    frames = []
    for model in MODELS:
        name = Path(model).name if model != "default" else "default"
        out = SWEEPS / f"{PROFILE}-{backend}-{name}-{time.strftime('%Y%m%dT%H%M%S')}"
        cmd = [sys.executable, "-m", "bench_pause", "run", "--profile", PROFILE, "--backend", backend,
               "--out", str(out)] + (["--model", model] if model != "default" else [])
        cmd += shlex.split(os.environ.get("BENCH_PAUSE_RUN_ARGS", ""))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if not (out / "runs.parquet").exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        if proc.returncode != 0:  # what it measured before an engine failed still counts; say so
            print(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}", file=sys.stderr)
        frames.append(results.measured(results.load(out)[0]).assign(model_param=model))
    return pd.concat(frames, ignore_index=True)


class _Pause:
    param_names = ["dp_size", "mode", "pause_point", "max_tokens", "concurrency", "clear_cache", "model"]
    params = [list(GRID.dp_sizes), list(GRID.modes), list(GRID.pause_points), list(GRID.max_tokens),
              list(GRID.concurrency), list(GRID.clear_cache), MODELS]
    timeout = 7200  # engine start-ups (tens of seconds to minutes each) and the whole sweep
    number = 1
    repeat = 1

    def setup(self, runs: pd.DataFrame, dp_size: int, mode: str, pause_point: str, max_tokens: int,
              concurrency: int, clear_cache: bool, model: str) -> None:
        cell = runs[(runs["dp_size"] == dp_size) & (runs["mode"] == mode) & (runs["pause_point"] == pause_point)
                    & (runs["max_tokens"] == max_tokens) & (runs["concurrency"] == concurrency)
                    & (runs["clear_cache"] == clear_cache) & (runs["model_param"] == model)]
        # Only the profile's own grid: cells measured beside it (a profile's ``also`` grids, the
        # edge cycles at hold 0 say) are not parameters here and would pool with these.
        cell = cell[cell["cycle"].isin(GRID.cycles) & cell["hold_s"].isin(GRID.holds)
                    & cell["arrivals"].isin(GRID.arrivals)]
        if not len(cell):
            raise NotImplementedError("not measured (dp size larger than the GPUs, or wait without clear_cache)")
        self.cell = cell

    def _samples(self, metric: str) -> dict | float:
        values = [float(v) for v in self.cell[metric] if not math.isnan(float(v))]
        return {"samples": values, "number": 1} if values else math.nan

    def track_pause_api_s(self, *_: object) -> dict | float:
        return self._samples("pause_api_s")

    def track_quiesce_s(self, *_: object) -> dict | float:
        return self._samples("quiesce_s")

    def track_gap_excess_s(self, *_: object) -> dict | float:
        return self._samples("gap_excess_s")

    def track_resume_ttft_s(self, *_: object) -> dict | float:
        return self._samples("resume_ttft_s")

    def track_resume_all_s(self, *_: object) -> dict | float:
        """Until every request is moving again: where a keep pause's cache clearing shows."""
        return self._samples("resume_all_s")

    def track_preemptions(self, *_: object) -> float:
        """Requests vLLM preempted per pause (median): clear_cache=True preempts kept ones."""
        return float(self.cell["preemptions"].median())

    def track_leak_tokens(self, *_: object) -> float:
        return float(self.cell["leak_tokens"].max())

    def track_not_ok(self, *_: object) -> float:
        """Measurements that broke their mode's contract: 0 on a correct engine."""
        return float((~self.cell["ok"].astype(bool)).sum())

    def track_stalls(self, *_: object) -> float:
        """Pauses far beyond their cell (bench_pause.summary.stalls): a trainer waits for these."""
        found = summary.stalls(self.cell)
        return float(len(found.drop_duplicates(["run", "measurement"]))) if len(found) else 0.0

    def _quantile(self, metric: str, q: float) -> float:
        values = self.cell[metric].dropna()
        return float(np.percentile(values, q)) if len(values) else math.nan

    track_pause_api_s.unit = track_quiesce_s.unit = track_gap_excess_s.unit = "seconds"
    track_resume_ttft_s.unit = track_resume_all_s.unit = "seconds"
    track_preemptions.unit = "requests"
    track_leak_tokens.unit = "tokens"
    track_not_ok.unit = track_stalls.unit = "measurements"


def _tail_tracker(metric: str, q: float) -> object:
    def track(self: _Pause, *_: object) -> float:
        return self._quantile(metric, q)
    track.unit = "seconds"
    track.__doc__ = f"{'max' if q == 100 else f'p{q:g}'} of {metric} over the cell's pauses: the tail a trainer waits for."
    return track


# The tails beside the samples' median (asv's tables show the median only): p90 and max of
# what the pause call costs and of when every stream is moving again.
TAILS = ("pause_api_s", "resume_all_s")
for _metric in TAILS:
    for _q, _tag in ((90.0, "p90"), (100.0, "max")):
        setattr(_Pause, f"track_{_metric.removesuffix('_s')}_{_tag}_s", _tail_tracker(_metric, _q))


# asv keys setup_cache by the function's source line, so each class needs its own: an
# inherited one would run one sweep and hand it to both classes.
class Offline(_Pause):
    """In-process AsyncLLM."""

    def setup_cache(self) -> pd.DataFrame:
        return sweep("offline")


class Http(_Pause):
    """vLLM's OpenAI-compatible server (VLLM_SERVER_DEV_MODE=1), launched by the sweep."""

    def setup_cache(self) -> pd.DataFrame:
        return sweep("http")
