"""Per-scenario medians of a run: the table `run` prints and the report shows."""

from __future__ import annotations

import pandas as pd

from bench_pause.metrics import HEADLINE
from bench_pause.scenario import Scenario

CELL = [c for c in Scenario.columns() if c != "repeat"]


def measured(runs: pd.DataFrame) -> pd.DataFrame:
    """The measured pauses: warm-ups and missed pauses (metrics.missed) are kept on disk
    but left out of statistics."""
    if not len(runs):
        return runs
    keep = ~runs["warmup"].astype(bool)
    if "missed" in runs:
        keep &= ~runs["missed"].fillna(False).astype(bool)
    return runs[keep]


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario cell: median, min and max of each headline metric, ok count."""
    runs = measured(runs)
    if not len(runs):
        return pd.DataFrame()
    grouped = runs.groupby(CELL, dropna=False, sort=True)
    out = grouped.size().rename("n").to_frame()
    out["ok"] = grouped["ok"].sum().astype(int)
    for metric in HEADLINE:
        out[f"{metric}_median"] = grouped[metric].median()
        out[f"{metric}_min"] = grouped[metric].min()
        out[f"{metric}_max"] = grouped[metric].max()
    out["itl_median_s"] = grouped["itl_median_s"].median()
    out["preemptions_median"] = grouped["preemptions"].median() if "preemptions" in runs else float("nan")
    return out.reset_index()


def _ms(value: float) -> str:
    return "-" if pd.isna(value) else f"{value * 1000:.1f}"


def rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (times in ms) for a terminal or Markdown table."""
    header = ["backend", "dp", "mode", "pause at", "max tok", "conc", "cache", "cycle", "ok",
              "pause API ms", "quiesce ms", "leak", "gap excess ms", "resume→tok ms", "resume→all ms",
              "preempt", "ITL ms"]
    body = []
    for r in table.itertuples(index=False):
        cycle = r.cycle if r.cycle != "pause" else ""
        body.append([
            r.backend, str(r.dp_size), r.mode, r.pause_point, str(r.max_tokens), str(r.concurrency),
            "clear" if r.clear_cache else "keep", cycle + (f" +{r.arrivals} arrive" if r.arrivals else ""),
            f"{r.ok}/{r.n}", _ms(r.pause_api_s_median), _ms(r.quiesce_s_median),
            f"{r.leak_tokens_max:.0f}", _ms(r.gap_excess_s_median), _ms(r.resume_ttft_s_median),
            _ms(r.resume_all_s_median), "-" if pd.isna(r.preemptions_median) else f"{r.preemptions_median:g}",
            _ms(r.itl_median_s),
        ])
    return header, body


def markdown(table: pd.DataFrame) -> str:
    header, body = rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def print_table(table: pd.DataFrame, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = rows(table)
    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in ("backend", "mode", "pause at", "cache", "cycle") else "right")
    for r in body:
        leak, ok = r[header.index("leak")] != "0", r[header.index("ok")].split("/")
        t.add_row(*r, style="bold red" if leak or ok[0] != ok[1] else None)
    console = Console()
    if not console.is_terminal:  # a log file: don't squeeze the table into 80 columns
        console = Console(width=220)
    console.print(t)
