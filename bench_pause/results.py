"""A run directory on disk: runs/tokens/events Parquet files and meta.json.

During a sweep each measurement's trace goes to its own small files under ``parts/``
and only the runs table (one row per pause) is rewritten, so appending stays cheap on a
grid of thousands of pauses; :meth:`RunDir.consolidate` folds the parts into
tokens.parquet and events.parquet when the sweep ends. Every write goes through a
temporary file and ``os.replace``, and a reader merges any parts left behind, so an
interrupted sweep leaves a readable directory holding every measurement finished before it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd

from bench_pause import metrics
from bench_pause.metrics import HEADLINE, for_measurement
from bench_pause.scenario import Scenario
from bench_pause.trace import Measurement

RUNS, TOKENS, EVENTS, META, PARTS = "runs.parquet", "tokens.parquet", "events.parquet", "meta.json", "parts"


def _atomic(path: Path, write: callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    return json.loads(path.read_text()) if path.exists() else {}


def missed(runs: pd.DataFrame) -> pd.Series:
    """Which pauses missed their request (metrics.missed); none in runs recorded before
    the column existed."""
    if "missed" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["missed"].fillna(False).astype(bool)


def measured(runs: pd.DataFrame) -> pd.DataFrame:
    """The pauses statistics count: warm-ups (the first pause after each engine start,
    reported on its own) and missed pauses are kept on disk but left out."""
    if not len(runs):
        return runs
    return runs[~runs["warmup"].astype(bool) & ~missed(runs)]


def plain_cycle(runs: pd.DataFrame) -> pd.DataFrame:
    """Pauses of the normal cycle (no edge cycle, no weight sync) with nothing arriving while
    paused: what most figures and answers are about."""
    return runs[(runs["cycle"] == "pause") & (runs["arrivals"] == 0)]


def load_runs(dirs: list[Path]) -> pd.DataFrame:
    """The runs.parquet of several run directories as one frame, ``run`` naming each one's."""
    return pd.concat([load(d)[0].assign(run=Path(d).name) for d in dirs], ignore_index=True)


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
        self._tokens: pd.DataFrame | None = None
        self._events: pd.DataFrame | None = None

    def _read(self, name: str) -> pd.DataFrame:
        file = self.path / name
        df = pd.read_parquet(file) if file.exists() else pd.DataFrame()
        if name == RUNS:
            return _with_new_axes(df) if len(df) else df
        parts = sorted((self.path / PARTS).glob(f"*.{name}"))
        return pd.concat([df, *map(pd.read_parquet, parts)], ignore_index=True) if parts else df

    @property
    def tokens(self) -> pd.DataFrame:
        if self._tokens is None:
            self._tokens = self._read(TOKENS)
        return self._tokens

    @property
    def events(self) -> pd.DataFrame:
        if self._events is None:
            self._events = self._read(EVENTS)
        return self._events

    def next_id(self) -> int:
        return int(self.runs["measurement"].max()) + 1 if len(self.runs) else 0

    def append(self, m: Measurement, extra: dict) -> int:
        """Store one measurement (scenario, metrics and ``extra`` columns); returns its id.
        Its trace is written to parts/ first, so the runs table never names a measurement
        whose trace is not on disk."""
        mid = self.next_id()
        parts = self.path / PARTS
        parts.mkdir(parents=True, exist_ok=True)
        for name, df in ((TOKENS, m.tokens), (EVENTS, m.events)):
            part = df.assign(measurement=mid)
            _atomic(parts / f"{mid:07d}.{name}", lambda tmp, part=part: part.to_parquet(tmp, index=False))
        row = {"measurement": mid, **m.scenario.as_dict(), **extra, **m.metrics}
        self.runs = pd.concat([self.runs, pd.DataFrame([row])], ignore_index=True)
        _atomic(self.path / RUNS, lambda tmp: self.runs.to_parquet(tmp, index=False))
        self._tokens = self._events = None  # read again (with the new part) when asked for
        return mid

    def consolidate(self) -> None:
        """Fold the per-measurement parts into tokens.parquet and events.parquet."""
        if (self.path / PARTS).exists():
            self.flush()

    def flush(self) -> None:
        """Write all three tables whole and drop the parts they now hold."""
        self.path.mkdir(parents=True, exist_ok=True)
        tokens, events = self.tokens, self.events
        for name, df in ((RUNS, self.runs), (TOKENS, tokens), (EVENTS, events)):
            _atomic(self.path / name, lambda tmp, df=df: df.to_parquet(tmp, index=False))
        for part in (self.path / PARTS).glob("*.parquet"):
            part.unlink()
        if (self.path / PARTS).exists():
            (self.path / PARTS).rmdir()


def _existing(run_dir: Path) -> RunDir:
    """An existing run directory; FileNotFoundError for any other path."""
    if not (Path(run_dir) / RUNS).exists():
        raise FileNotFoundError(f"{run_dir} holds no {RUNS}: not a bench-pause run directory")
    return RunDir(run_dir)


def run_dirs(path: Path) -> list[Path]:
    """``path`` if it is a run directory, else every run directory beneath it (a version's
    runs, or a comparison directory made by ``interleave``), in name order."""
    path = Path(path)
    if (path / RUNS).exists():
        return [path]
    if not path.is_dir():
        return []
    return [d for sub in sorted(path.iterdir()) if sub.is_dir() for d in run_dirs(sub)]


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """runs, tokens, events and meta of a finished (or interrupted) run directory."""
    rd = _existing(run_dir)
    return rd.runs, rd.tokens, rd.events, read_meta(run_dir)


def recompute(run_dir: Path) -> int:
    """Recompute every measurement's metrics from its stored trace and rewrite runs.parquet
    (and meta.json's ``metrics_version``): metrics are pure functions of the trace, so a run
    recorded before a metric existed or was refined gains it without an engine. Returns
    the number of measurements."""
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
    meta = read_meta(run_dir)
    if meta:
        meta["metrics_version"] = metrics.VERSION
        write_json(Path(run_dir) / META, meta)
    return len(rows)
