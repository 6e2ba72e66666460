"""Numbers quoted in hand-written prose (docs/findings.md), computed from the runs they quote.

Prose says what a result means; its numbers must still come from results/, or they drift
(issue 31 found several that had). So the prose writes a placeholder and `bench-pause
report` fills it in:

    {{p50 pause_api_s @ gpu-h100-moe-stall/0.34.0 mode=keep clear_cache=True}}

is the p50 in ms of ``pause_api_s`` over the measured pauses under
``results/gpu-h100-moe-stall/0.34.0`` with mode keep and clear_cache True (several paths,
comma-separated, pool their runs; a filter's ``a|b`` takes either value). Statistics: p50,
p90, max, min, sum (a metric ending in ``_s`` in ms with one decimal, one ending in
``_bytes`` in GiB with two, others as they are; ``digits=N`` among the filters gives N
decimals), n (how many pauses) and runs (how many
engine runs they came from: the unit of replication). A placeholder that names no run, no column or no pause fails the
report in one line, so a quote can never silently go stale.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench_pause import results
from bench_pause.scenario import ScenarioError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s+(\w+)\s*@\s*(\S+)((?:\s+[\w.]+=\S+)*)\s*\}\}")
STATS = {"p50": lambda v: float(np.median(v)), "p90": lambda v: float(np.percentile(v, 90)),
         "max": lambda v: float(np.max(v)), "min": lambda v: float(np.min(v)), "sum": lambda v: float(np.sum(v))}


def _pauses(root: Path, where: str, cache: dict) -> pd.DataFrame:
    """The measured pauses of the runs under each comma-separated path of ``where``."""
    if where not in cache:
        dirs = []
        for part in where.split(","):
            found = results.run_dirs(root / part)
            if not found:
                raise ScenarioError(f"quoted run {part}: no run directory under {root / part}")
            dirs += found
        # ``run`` names a directory (r01), which repeats across releases: count by path.
        runs = pd.concat([results.load_runs([d]).assign(run_dir=str(d)) for d in dirs], ignore_index=True)
        cache[where] = results.measured(runs)
    return cache[where]


def _match(column: pd.Series, value: str) -> pd.Series:
    """``value``, or any of ``a|b``: a column's rows that say it (case aside)."""
    return column.astype(str).str.lower().isin(value.lower().split("|"))


def value(root: Path, stat: str, metric: str, where: str, filters: str, cache: dict | None = None) -> str:
    """One placeholder's text."""
    m = _pauses(root, where, {} if cache is None else cache)
    digits = None
    for f in filters.split():
        key, _, want = f.partition("=")
        if key == "digits":
            digits = int(want)
            continue
        if key not in m:
            raise ScenarioError(f"quoted filter {key}: not a column of {where}/runs.parquet")
        m = m[_match(m[key], want)]
    if stat == "n":
        return str(len(m))
    if stat == "runs":
        return str(m["run_dir"].nunique())
    if stat not in STATS:
        raise ScenarioError(f"quoted statistic {stat}: use one of n, runs, {', '.join(STATS)}")
    if metric not in m:
        raise ScenarioError(f"quoted metric {metric}: not a column of {where}/runs.parquet")
    v = m[metric].dropna().to_numpy(float)
    if not len(v):
        raise ScenarioError(f"quoted {stat} {metric} @ {where}{filters}: no pause matches")
    x = STATS[stat](v)
    if metric.endswith("_s"):
        return f"{x * 1e3:.{1 if digits is None else digits}f}"
    if metric.endswith("_bytes"):
        return f"{x / 2**30:.{2 if digits is None else digits}f}"
    return f"{x:g}" if digits is None else f"{x:.{digits}f}"


def fill(text: str, root: Path) -> str:
    """``text`` with every placeholder replaced by its number, computed from the runs under ``root``."""
    cache: dict = {}
    return PLACEHOLDER.sub(lambda mt: value(Path(root), mt[1], mt[2], mt[3], mt[4], cache), text)
