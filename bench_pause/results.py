"""A run directory on disk: runs/tokens/events Parquet files and meta.json.

Every append rewrites the files through a temporary file and ``os.replace``, so an
interrupted sweep leaves valid files holding every measurement finished before it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd

from bench_pause.measure import Measurement
from bench_pause.metrics import HEADLINE, for_measurement
from bench_pause.scenario import Scenario

RUNS, TOKENS, EVENTS, META = "runs.parquet", "tokens.parquet", "events.parquet", "meta.json"


def _atomic(path: Path, write: callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    return json.loads(path.read_text()) if path.exists() else {}


def _with_new_axes(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs recorded before a scenario axis existed ran at its default: fill it in, so
    old and new runs group, compare and resume alike. A headline metric added since is
    NaN there (it was not measured)."""
    for f in dataclasses.fields(Scenario):
        if f.name not in runs and f.default is not dataclasses.MISSING:
            runs[f.name] = f.default
    for metric in HEADLINE:
        if metric not in runs:
            runs[metric] = float("nan")
    return runs


class RunDir:
    """Appends measurements to a run directory, keeping what is already there."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.runs = self._read(RUNS)
        self.tokens = self._read(TOKENS)
        self.events = self._read(EVENTS)

    def _read(self, name: str) -> pd.DataFrame:
        file = self.path / name
        df = pd.read_parquet(file) if file.exists() else pd.DataFrame()
        return _with_new_axes(df) if name == RUNS and len(df) else df

    def next_id(self) -> int:
        return int(self.runs["measurement"].max()) + 1 if len(self.runs) else 0

    def append(self, m: Measurement, extra: dict) -> int:
        """Store one measurement (scenario, metrics and ``extra`` columns); returns its id."""
        mid = self.next_id()
        row = {"measurement": mid, **m.scenario.as_dict(), **extra, **m.metrics}
        self.runs = pd.concat([self.runs, pd.DataFrame([row])], ignore_index=True)
        self.tokens = pd.concat([self.tokens, m.tokens.assign(measurement=mid)], ignore_index=True)
        self.events = pd.concat([self.events, m.events.assign(measurement=mid)], ignore_index=True)
        self.flush()
        return mid

    def flush(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name, df in ((RUNS, self.runs), (TOKENS, self.tokens), (EVENTS, self.events)):
            _atomic(self.path / name, lambda tmp, df=df: df.to_parquet(tmp, index=False))


def _existing(run_dir: Path) -> RunDir:
    """An existing run directory; FileNotFoundError for any other path."""
    if not (Path(run_dir) / RUNS).exists():
        raise FileNotFoundError(f"{run_dir} holds no {RUNS}: not a bench-pause run directory")
    return RunDir(run_dir)


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """runs, tokens, events and meta of a finished (or interrupted) run directory."""
    rd = _existing(run_dir)
    return rd.runs, rd.tokens, rd.events, read_meta(run_dir)


def recompute(run_dir: Path) -> int:
    """Recompute every measurement's metrics from its stored trace and rewrite runs.parquet:
    metrics are pure functions of the trace, so a run recorded before a metric existed or
    was refined gains it without an engine. Returns the number of measurements."""
    rd = _existing(run_dir)
    tokens, events = rd.tokens.groupby("measurement"), rd.events.groupby("measurement")
    rows = []
    for _, run in rd.runs.iterrows():
        mid = run["measurement"]
        t = tokens.get_group(mid) if mid in tokens.groups else rd.tokens.iloc[:0]
        e = events.get_group(mid) if mid in events.groups else rd.events.iloc[:0]
        rows.append({**run.to_dict(), **for_measurement(t, e, run)})
    rd.runs = pd.DataFrame(rows)
    rd.flush()
    return len(rows)
