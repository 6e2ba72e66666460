"""asv over a vLLM release history: the release is a benchmark parameter.

``bench-pause history`` measures each release from its own environment in interleaved
rounds; these benchmarks read that directory (BENCH_PAUSE_HISTORY, or several joined by
os.pathsep) and give asv each release's values, one sample per engine run (the run's p50
or p90 over its pauses), so asv's median and confidence interval are over engine runs, the
unit of replication. In
asv's graph, choose "x-axis: release": the releases side by side at one bench-pause commit.

Why a parameter and not asv's own axes: asv's commit axis is the commits of the project
it benchmarks (bench-pause), not vLLM's releases, and its version matrix would have asv
build and install every release again (3.9 GB each) and still plot them as separate lines
over bench-pause commits. Without BENCH_PAUSE_HISTORY every combination is skipped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
try:
    from bench_pause import compare, history
except ImportError:  # not installed (a GPU box running from the checkout): use the checkout
    sys.path.insert(0, str(ROOT))
    from bench_pause import compare, history

# asv runs benchmarks from a directory of its own: a relative path counts from the checkout.
# Several histories of one machine (one per backend, say) are joined by os.pathsep: asv
# keeps one result per benchmark, machine and commit, so they must go in together.
HISTORIES = [ROOT / p for p in os.environ.get("BENCH_PAUSE_HISTORY", "").split(os.pathsep) if p]


def _releases() -> list[str]:
    """Every release of the committed histories (results/*history*) and of BENCH_PAUSE_HISTORY,
    without calibration variants (named other than their vLLM). The same list whichever
    history a run reads: asv drops, when it publishes, every stored result whose parameters
    differ from the benchmark's, so a list that followed BENCH_PAUSE_HISTORY would make the
    GPU history's run erase the CPU history's graphs and the other way round."""
    plans = sorted(ROOT.glob("results/*history*/" + compare.PLAN))
    plans += [h / compare.PLAN for h in HISTORIES if (h / compare.PLAN).exists()]
    names = set().union(*(history.release_names(json.loads(plan.read_text())) for plan in plans))
    return sorted(names, key=history.release_key) or ["none"]


class History:
    # A fixed version, not asv's hash of the code: asv's publish drops stored results whose
    # version differs, and these values were recorded by `bench-pause history` (on a GPU
    # for some), not by this class, so an edit here must not erase a history's graphs.
    # Raise it only when a stored value would now mean something else.
    version = "history-1"
    param_names = ["release", "backend", "mode"]
    params = [_releases(), ["offline", "http"], ["keep", "abort", "wait"]]
    number = 1
    repeat = 1
    timeout = 600

    def setup_cache(self) -> pd.DataFrame:
        sides = [s for h in HISTORIES if (h / compare.PLAN).exists() for s in compare.comparison_sides(h)]
        return pd.concat([history.run_levels(s) for s in sides], ignore_index=True) if sides else pd.DataFrame()

    def setup(self, levels: pd.DataFrame, release: str, backend: str, mode: str) -> None:
        rows = levels[(levels["release"] == release) & (levels["backend"] == backend) & (levels["mode"] == mode)] \
            if len(levels) else levels
        if not len(rows):
            raise NotImplementedError("no history (BENCH_PAUSE_HISTORY), or this release/backend/mode has no runs")
        self.rows = rows

    def _samples(self, metric: str, q: str) -> dict | float:
        values = [float(v) for v in self.rows.loc[self.rows["metric"] == metric, q] if not math.isnan(float(v))]
        return {"samples": values, "number": 1} if values else math.nan

    def track_leak_tokens(self, *_: object) -> float:
        return float(self.rows["leaked"].max())

    track_leak_tokens.unit = "tokens"


def _tracker(metric: str, q: str) -> object:
    def track(self: History, *_: object) -> dict | float:
        return self._samples(metric, q)
    track.unit = "seconds"
    track.__doc__ = f"{q} of {metric} over each engine run's pauses, one sample per run."
    return track


for _metric in history.METRICS:
    for _q in ("p50", "p90"):
        setattr(History, f"track_{_metric.removesuffix('_s')}_{_q}_s", _tracker(_metric, _q))
