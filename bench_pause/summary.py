"""Per-scenario tails of a run: the table `run` prints and the report shows, and stalls.

A trainer waits for the slowest pause, so every timing is shown as p50 / p90 / max, never
a median alone, and a pause far beyond its cell (a stall) is counted and listed, never
averaged away.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench_pause.metrics import HEADLINE
from bench_pause.results import measured
from bench_pause.scenario import Scenario

if TYPE_CHECKING:
    from rich.console import Console

CELL = [c for c in Scenario.columns() if c != "repeat"]
TIMING = [m for m, unit in HEADLINE.items() if unit == "s"]
# A stall: a pause whose metric is more than STALL_FACTOR x its reference AND more than
# STALL_MIN_S beyond it. Both, because a ratio alone flags 0.2 ms against 0.03 ms on a
# fast path (noise a trainer never feels), and an absolute margin alone flags the normal
# spread of a 2 s wait-mode drain. 100 ms is several decode steps of any model here; the
# MoE resume stalls seen on GPUs were 0.67-0.94 s against 10-77 ms (FACTS.md). The
# reference is the median of the OTHER measured pauses of its cell in its run: a cell's own
# median includes the stall, so a cell of two pauses (0.97 s and 40 ms) could never show
# one, and pooling runs would judge one engine by another's.
STALL_FACTOR, STALL_MIN_S = 5.0, 0.100
STALL_METRICS = ["pause_api_s", "gap_excess_s", "resume_ttft_s", "resume_all_s"]


def _p90(values: pd.Series) -> float:
    v = values.dropna()
    return float(np.percentile(v, 90)) if len(v) else math.nan


def _tails(grouped: "pd.core.groupby.DataFrameGroupBy", metrics: list[str]) -> pd.DataFrame:
    """Per cell: its pause count ``n``, how many were ``ok``, and each metric's p50, p90, max."""
    out = grouped.size().rename("n").to_frame()
    out["ok"] = grouped["ok"].sum().astype(int)
    for metric in metrics:
        out[f"{metric}_p50"] = grouped[metric].median()
        out[f"{metric}_p90"] = grouped[metric].agg(_p90)
        out[f"{metric}_max"] = grouped[metric].max()
    return out


def _others_median(values: np.ndarray) -> np.ndarray:
    """Each value's reference: the median of the other values (NaN where there are none)."""
    if len(values) < 2:
        return np.full(len(values), np.nan)
    return np.array([np.median(np.delete(values, i)) for i in range(len(values))])


def stalls(runs: pd.DataFrame) -> pd.DataFrame:
    """Every measured pause with a stalled metric: one row per pause, numbered from 1 in its
    engine's order (the warm-up is pause 1), each STALL_METRIC with its reference and whether
    it stalled (``METRIC``, ``METRIC_ref``, ``METRIC_stall``), and the columns that may explain it."""
    m = measured(runs)
    if not len(m):
        return pd.DataFrame()
    rows = []
    by = CELL + (["run"] if "run" in m else [])
    for _, cell in m.groupby(by, dropna=False, sort=True):
        judged = {}
        for metric in (x for x in STALL_METRICS if x in cell):
            v = cell[metric].to_numpy(float)
            ok = ~np.isnan(v)
            ref = np.full(len(v), np.nan)
            ref[ok] = _others_median(v[ok])
            judged[metric] = (v, ref, (v > STALL_FACTOR * ref) & (v > ref + STALL_MIN_S))
        for i, (_, r) in enumerate(cell.iterrows()):
            if not any(hit[i] for _, _, hit in judged.values()):
                continue
            row = {**{c: r[c] for c in CELL}, "run": r.get("run", ""), "measurement": r["measurement"],
                   "engine": r.get("engine"), "pause": int(r.get("pause_index", -1)) + 1,
                   "preemptions": r.get("preemptions", math.nan)}
            for metric, (v, ref, hit) in judged.items():
                row.update({metric: v[i], f"{metric}_ref": ref[i], f"{metric}_stall": bool(hit[i])})
            rows.append(row)
    return pd.DataFrame(rows)


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario cell: p50, p90 and max of each timing metric, the largest
    leak, ok count and stall count."""
    runs = measured(runs)
    if not len(runs):
        return pd.DataFrame()
    grouped = runs.groupby(CELL, dropna=False, sort=True)
    out = _tails(grouped, TIMING)
    out["leak_tokens_max"] = grouped["leak_tokens"].max()
    out["itl_median_s"] = grouped["itl_median_s"].median()
    out["preemptions_median"] = grouped["preemptions"].median() if "preemptions" in runs else float("nan")
    out = out.reset_index()
    found = stalls(runs)
    counts = found.groupby(CELL, dropna=False).size() if len(found) else pd.Series(dtype=int)
    out["stalls"] = [int(counts.get(tuple(r), 0)) for r in out[CELL].itertuples(index=False)]
    return out


def first_pauses(runs: pd.DataFrame) -> pd.DataFrame:
    """The first pause after each engine start (the warm-up, left out of the statistics)
    beside the p50 of the measured pauses of its cell: where start-up effects show."""
    if not len(runs) or "warmup" not in runs:
        return pd.DataFrame()
    firsts = runs[runs["warmup"].astype(bool)]
    by_cell = measured(runs).groupby(CELL, dropna=False)
    rows = []
    for _, r in firsts.iterrows():
        key = tuple(r[c] for c in CELL)
        cell = by_cell.get_group(key) if key in by_cell.groups else None
        row = {**{c: r[c] for c in CELL}, "run": r.get("run", ""), "engine": r.get("engine")}
        for metric in STALL_METRICS:
            row[metric] = r[metric]
            row[f"{metric}_cell_p50"] = cell[metric].median() if cell is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _slowest(per_rank: str, key: str) -> str:
    """The rank with the largest ``key`` in one pause's per-rank JSON ('' when none)."""
    ranks = {k: v[key] for k, v in json.loads(per_rank or "{}").items()
             if v.get("requests") and v.get(key) is not None and not math.isnan(v[key])}
    return max(ranks, key=ranks.get) if ranks else ""


def ranks(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell with several ranks or servers: the worst rank's quiesce and first token after
    resume (p50 / p90 / max), how often each rank was the slowest to resume, and with several
    servers the spread between the slowest and fastest server's pause and which was slowest."""
    m = measured(runs)
    if not len(m):
        return pd.DataFrame()
    m = m[(m["dp_size"] > 1) | (m["servers"] > 1)]
    rows = []
    for key, cell in m.groupby(CELL, dropna=False, sort=True):
        row = {**dict(zip(CELL, key)), "n": len(cell)}
        for metric in ("quiesce_worst_s", "resume_ttft_worst_s", "pause_spread_s"):
            values = cell[metric] if metric in cell else pd.Series(dtype=float)
            row.update({f"{metric}_p50": values.median(), f"{metric}_p90": _p90(values),
                        f"{metric}_max": values.max()})
        slowest = pd.Series([_slowest(p, "resume_ttft_s") for p in cell["per_rank"]]).value_counts()
        row["slowest_rank"] = ", ".join(f"{r}: {n}" for r, n in slowest.items() if r != "")
        servers = cell["worst_server"] if "worst_server" in cell else pd.Series(dtype=float)
        counts = servers[servers >= 0].astype(int).value_counts()
        row["slowest_server"] = ", ".join(f"{s}: {n}" for s, n in counts.items())
        rows.append(row)
    return pd.DataFrame(rows)


def cycle_name(r: object) -> str:
    """A cell's cycle as tables show it: blank for the normal pause, a sleep's level and wake."""
    if r.cycle == "pause":
        return ""
    if r.cycle == "sleep":
        return f"sleep L{getattr(r, 'sleep_level', 0)} wake {getattr(r, 'wake', 'all')}"
    return r.cycle


def ranks_markdown(table: pd.DataFrame) -> str:
    header = ["backend", "dp", "servers", "mode", "pause at", "hold s", "cache", "cycle", "n", "worst-rank quiesce ms",
              "worst-rank resume→tok ms", "slowest rank to resume (pauses)", "server pause spread ms",
              "slowest server (pauses)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.itertuples(index=False):
        lines.append("| " + " | ".join([
            r.backend, str(r.dp_size), str(r.servers), r.mode, str(r.pause_point), f"{r.hold_s:g}",
            "clear" if r.clear_cache else "keep",
            cycle_name(r), str(r.n), _tail(r, "quiesce_worst_s"),
            _tail(r, "resume_ttft_worst_s"), r.slowest_rank or "-", _tail(r, "pause_spread_s"),
            r.slowest_server or "-"]) + " |")
    return "\n".join(lines) + "\n"


# A weight_sync cycle in the order it happens (metrics: the weight_sync definitions).
SYNC_PHASES = [("pause_api_s", "pause"), ("idle_s", "idle"), ("sync_start_s", "start"),
               ("sync_update_s", "update"), ("sync_finish_s", "finish"), ("resume_api_s", "resume"),
               ("resume_ttft_s", "resume→tok")]


def syncs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per weight_sync cell: p50 / p90 / max of each phase, of the whole push and of the time
    with no token produced; the push's bandwidth (p50) and the weight check (the most wrong
    tokens in a pause, the fewest tokens checked after the resume)."""
    m = measured(runs)
    m = m[m["cycle"] == "weight_sync"] if len(m) else m
    if not len(m):
        return pd.DataFrame()
    if "sync_transfer" not in m:  # runs.parquet written before metrics version 5
        m = m.assign(sync_transfer="shm", trainer_gpu_bytes=float("nan"))
    else:  # such runs beside newer ones: their rows have none
        m = m.assign(sync_transfer=m["sync_transfer"].fillna("shm"))
    for column in VLLM_SYNC:  # vLLM's own timing: metrics version 7 on
        if column not in m:
            m = m.assign(**{column: float("nan")})
    grouped = m.groupby(["sync_transfer", *CELL], dropna=False, sort=True)
    out = _tails(grouped, [name for name, _ in SYNC_PHASES] + ["sync_s", "dark_s", *VLLM_SYNC])
    out["sync_gbps_p50"] = grouped["sync_gbps"].median()
    out["sync_mb"] = grouped["sync_bytes"].max() / 1e6
    out["trainer_gb_max"] = grouped["trainer_gpu_bytes"].max() / 2**30
    out["wrong_max"] = grouped["wrong_weight_tokens"].max()
    out["checked_min"] = grouped["new_weight_tokens"].min()
    return out.reset_index()


# The push's calls as the suite and as vLLM's server timed them (metrics: vllm_sync_*).
VLLM_SYNC = {"vllm_sync_start_s": "sync_start_s", "vllm_sync_update_s": "sync_update_s",
             "vllm_sync_finish_s": "sync_finish_s"}


def sync_check_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The cells where vLLM timed the push too: each call as the suite saw it (the client's
    call to its return) beside vLLM's own figure (the server's route), p50 / p90 / max in ms."""
    header = ["transfer", "backend", "mode", "cache", "n",
              *[f"{call} ms {who}" for call in ("start", "update", "finish") for who in ("suite", "vLLM")]]
    body = []
    for r in table.itertuples(index=False):
        if pd.isna(r.vllm_sync_update_s_max):
            continue
        body.append([r.sync_transfer, r.backend, r.mode, "clear" if r.clear_cache else "keep", str(r.n),
                     *[_tail(r, name) for theirs, ours in VLLM_SYNC.items() for name in (ours, theirs)]])
    return header, body


def sync_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["transfer", "backend", "dp", "mode", "conc", "cache", "ok", *[f"{label} ms" for _, label in SYNC_PHASES],
              "push ms", "no token ms", "MB", "GB/s", "trainer GiB", "wrong tok", "checked tok"]
    body = []
    for r in table.itertuples(index=False):
        body.append([r.sync_transfer, r.backend, str(r.dp_size), r.mode, str(r.concurrency),
                     "clear" if r.clear_cache else "keep", f"{r.ok}/{r.n}",
                     *[_tail(r, name) for name, _ in SYNC_PHASES], _tail(r, "sync_s"), _tail(r, "dark_s"),
                     f"{r.sync_mb:.1f}", f"{r.sync_gbps_p50:.2f}",
                     "-" if pd.isna(r.trainer_gb_max) else f"{r.trainer_gb_max:.2f}", f"{r.wrong_max:g}",
                     f"{r.checked_min:g}"])
    return header, body


# A sleep cycle in the order it happens (metrics: the sleep definitions).
SLEEP_PHASES = [("pause_api_s", "sleep"), ("wake_weights_s", "wake weights"), ("sync_s", "push (level 2)"),
                ("resume_api_s", "wake (resumes)"), ("resume_ttft_s", "wake→tok"), ("resume_all_s", "wake→all")]
SLEEP_MEMORY = ["mem_before_bytes", "mem_asleep_bytes", "mem_after_bytes", "mem_freed_bytes"]


def sleeps(runs: pd.DataFrame) -> pd.DataFrame:
    """Per sleep cell: p50 / p90 / max of each phase, the GPU memory in use before, asleep
    and after (p50) and what the sleep freed (p50 and the least: the trainer plans for that)."""
    m = measured(runs)
    m = m[m["cycle"] == "sleep"] if len(m) else m
    if not len(m):
        return pd.DataFrame()
    grouped = m.groupby(CELL, dropna=False, sort=True)
    out = _tails(grouped, [name for name, _ in SLEEP_PHASES])
    for column in SLEEP_MEMORY:
        out[f"{column}_p50"] = grouped[column].median()
    out["mem_freed_bytes_min"] = grouped["mem_freed_bytes"].min()
    out["wrong_max"] = grouped["wrong_weight_tokens"].max()  # level 2: the pushed set's check
    return out.reset_index()


def sleep_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["backend", "dp", "mode", "level", "wake", "conc", "ok", *[f"{label} ms" for _, label in SLEEP_PHASES],
              "GiB before", "GiB asleep", "GiB after", "GiB freed (p50, least)", "wrong tok"]
    body = []
    for r in table.itertuples(index=False):
        gib = [fmt_gib(getattr(r, f"{c}_p50")) for c in SLEEP_MEMORY[:3]]
        freed = "-" if pd.isna(r.mem_freed_bytes_p50) else \
            f"{fmt_gib(r.mem_freed_bytes_p50)}, {fmt_gib(r.mem_freed_bytes_min)}"
        body.append([r.backend, str(r.dp_size), r.mode, str(r.sleep_level), r.wake, str(r.concurrency),
                     f"{r.ok}/{r.n}", *[_tail(r, name) for name, _ in SLEEP_PHASES], *gib, freed,
                     "-" if pd.isna(r.wrong_max) else f"{r.wrong_max:g}"])
    return header, body


def fmt_gib(value: float) -> str:
    """Bytes as GiB with two decimals, "-" for NaN."""
    return "-" if pd.isna(value) else f"{value / 2**30:.2f}"


def fmt_ms(value: float) -> str:
    """Seconds as milliseconds with one decimal, "-" for NaN."""
    return "-" if pd.isna(value) else f"{value * 1000:.1f}"


def _tail(r: object, metric: str) -> str:
    """'p50 / p90 / max' in ms."""
    values = [getattr(r, f"{metric}_{q}") for q in ("p50", "p90", "max")]
    return "-" if all(pd.isna(v) for v in values) else " / ".join(fmt_ms(v) for v in values)


def rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (times in ms, p50 / p90 / max) for a terminal or Markdown table."""
    header = ["backend", "dp", "mode", "pause at", "max tok", "conc", "cache", "cycle", "ok", "stalls",
              "pause API ms", "quiesce ms", "leak", "gap excess ms", "resume→tok ms", "resume→all ms",
              "preempt", "ITL ms"]
    body = []
    for r in table.itertuples(index=False):
        cycle = cycle_name(r)
        body.append([
            r.backend, str(r.dp_size) + (f" x{r.servers} srv" if r.servers > 1 else ""), r.mode, r.pause_point, str(r.max_tokens), str(r.concurrency),
            "clear" if r.clear_cache else "keep", cycle + (f" +{r.arrivals} arrive" if r.arrivals else ""),
            f"{r.ok}/{r.n}", str(r.stalls), _tail(r, "pause_api_s"), _tail(r, "quiesce_s"),
            f"{r.leak_tokens_max:.0f}", _tail(r, "gap_excess_s"), _tail(r, "resume_ttft_s"),
            _tail(r, "resume_all_s"), "-" if pd.isna(r.preemptions_median) else f"{r.preemptions_median:g}",
            fmt_ms(r.itl_median_s),
        ])
    return header, body


def markdown(table: pd.DataFrame, rows_of=rows) -> str:
    header, body = rows_of(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def console(width: int = 260) -> "Console":
    """The terminal's console, or, writing to a log file or a pipe, one ``width`` columns
    wide: rich would otherwise squeeze a wide table into 80 columns there."""
    from rich.console import Console

    return Console() if Console().is_terminal else Console(width=width)


def print_table(table: pd.DataFrame, title: str, rows_of=rows) -> None:
    """The table in the terminal: a row whose pauses were not all ok (or leaked) in red,
    one with a stall in yellow."""
    from rich.table import Table

    header, body = rows_of(table)
    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in ("backend", "mode", "pause at", "cache", "cycle") else "right")
    for r in body:
        ok = r[header.index("ok")].split("/")
        bad = ok[0] != ok[1] or ("leak" in header and r[header.index("leak")] != "0")
        stalled = "stalls" in header and r[header.index("stalls")] != "0"
        t.add_row(*r, style="bold red" if bad else ("yellow" if stalled else None))
    console().print(t)


# A known vLLM behaviour that breaks the abort contract as the suite reads it (findings.md).
HTTP_ABORT_BEFORE_FIRST_TOKEN = ("the known HTTP case: a request aborted before its first token ends without a "
                                 "finish reason (docs/findings.md, 'Over HTTP, a request aborted before its first "
                                 "token ends without a finish reason')")


def why_not_ok(row: pd.Series) -> str:
    """Why one measured pause is not ``ok``, in the words of its contract (metrics: ``ok``)."""
    if isinstance(row.get("error"), str) and row["error"]:
        return f"error: {row['error']}"
    if row.get("leak_tokens", 0) > 0:
        return f"{row['leak_tokens']:g} token(s) leaked through the pause"
    if row.get("wrong_weight_tokens", 0) > 0:
        return f"{row['wrong_weight_tokens']:g} token(s) from the wrong weights"
    reasons = json.loads(row["finish_reasons"]) if isinstance(row.get("finish_reasons"), str) else {}
    if row["backend"] == "http" and row["mode"] == "abort" and reasons.get("none"):
        return HTTP_ABORT_BEFORE_FIRST_TOKEN
    return (f"{row.get('tokens_received', 0):g} of {row.get('tokens_expected', 0):g} tokens, "
            f"finish reasons {reasons}")


def not_ok_lines(runs: pd.DataFrame, most: int = 8) -> list[str]:
    """The measured pauses that broke their contract, one line per cell and reason (the
    most frequent first, at most ``most``): what a run's user reads before runs.parquet."""
    m = measured(runs)
    bad = m[~m["ok"].astype(bool)] if len(m) else m
    if not len(bad):
        return []
    keys = Counter((Scenario(**{c: r[c] for c in CELL}, repeat=0).label.rsplit(" #", 1)[0], why_not_ok(r))
                   for _, r in bad.iterrows())
    lines = [f"{n} x {cell}: {why}" for (cell, why), n in keys.most_common(most)]
    if len(keys) > most:
        lines.append(f"... and {len(keys) - most} more cell(s): see runs.parquet (ok, error, finish_reasons)")
    return lines
