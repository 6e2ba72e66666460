"""Compare runs (typically two vLLM versions) cell by cell and find regressions.

For each scenario cell present in both runs and each timing metric: the medians, their
ratio, and a two-sided Mann-Whitney U test on the per-repeat samples. A change is a
regression when it is significant (p < ``alpha``, default 0.01), slower by more than
``factor`` (default 1.10) and by more than ``min_delta_s`` (default 1 ms, below which
scheduler noise dominates). With few repeats per cell a single cell has little power (3
vs 3 repeats can never reach p < 0.05), so each metric is also tested pooled over every
common cell of a (backend, dp size, mode) group, each sample divided by its cell's base
median. Changes in ``ok`` or in leaked tokens are always reported, significant or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench_pause import results, summary

TIMING = ["pause_api_s", "quiesce_s", "gap_excess_s", "resume_ttft_s", "resume_all_s"]
GROUP = ["backend", "dp_size", "mode"]


@dataclass(frozen=True)
class Thresholds:
    factor: float = 1.10
    alpha: float = 0.01
    min_delta_s: float = 0.001


@dataclass
class Comparison:
    base: str
    new: str
    cells: pd.DataFrame  # one row per (cell, metric)
    groups: pd.DataFrame  # one row per (backend, dp, mode, metric), pooled
    contract: pd.DataFrame  # cells whose ok count or leak changed
    missing: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return pd.concat([self.cells[self.cells["regression"]], self.groups[self.groups["regression"]]])

    @property
    def regressed(self) -> bool:
        return bool(len(self.regressions)) or bool(len(self.contract))


def _label(run_dir: Path, meta: dict) -> str:
    return f"{Path(run_dir).name} (vLLM {meta.get('vllm_version', '?')})"


def _test(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.all(a == a[0]) and np.all(b == a[0]):
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _verdict(base: np.ndarray, new: np.ndarray, th: Thresholds, scale: float = 1.0) -> dict:
    mb, mn = float(np.median(base)), float(np.median(new))
    # From a zero base any rise is an infinite ratio: a metric that was 0 (preemptions,
    # stalls, a quiesce of nothing) and now is not must be able to regress.
    ratio = mn / mb if mb > 0 else (math.inf if mn > 0 else 1.0)
    p = _test(base, new)
    significant = not math.isnan(p) and p < th.alpha
    slower = (not math.isnan(ratio) and ratio > th.factor) and (mn - mb) * scale > th.min_delta_s
    return {"base_median": mb, "new_median": mn, "ratio": ratio, "p_value": p, "n_base": len(base),
            "n_new": len(new), "significant": significant, "regression": significant and slower}


def compare(base_dir: Path, new_dir: Path, th: Thresholds = Thresholds()) -> Comparison:
    base_runs, *_, base_meta = results.load(base_dir)
    new_runs, *_, new_meta = results.load(new_dir)
    base, new = results.measured(base_runs), results.measured(new_runs)
    bkeys = {tuple(k) for k in base[summary.CELL].drop_duplicates().itertuples(index=False)}
    nkeys = {tuple(k) for k in new[summary.CELL].drop_duplicates().itertuples(index=False)}
    missing = [f"only in {Path(base_dir).name}: {k}" for k in sorted(bkeys - nkeys, key=str)]
    missing += [f"only in {Path(new_dir).name}: {k}" for k in sorted(nkeys - bkeys, key=str)]
    common = sorted(bkeys & nkeys, key=str)
    bg, ng = base.groupby(summary.CELL), new.groupby(summary.CELL)

    rows, contract, pooled = [], [], {}
    for key in common:
        b, n = bg.get_group(key), ng.get_group(key)
        cell = dict(zip(summary.CELL, key))
        if b["ok"].mean() != n["ok"].mean() or b["leak_tokens"].max() != n["leak_tokens"].max():
            contract.append({**cell, "ok_base": f"{int(b['ok'].sum())}/{len(b)}",
                             "ok_new": f"{int(n['ok'].sum())}/{len(n)}",
                             "leak_base": int(b["leak_tokens"].max()), "leak_new": int(n["leak_tokens"].max())})
        for metric in TIMING:
            bv, nv = b[metric].dropna().to_numpy(float), n[metric].dropna().to_numpy(float)
            if not len(bv) or not len(nv):
                continue
            rows.append({**cell, "metric": metric, **_verdict(bv, nv, th)})
            med = float(np.median(bv))
            if med > 0:
                group = pooled.setdefault((*(cell[g] for g in GROUP), metric), ([], [], []))
                group[0].extend(bv / med)
                group[1].extend(nv / med)
                group[2].append(med)
    groups = []
    for (*gkey, metric), (bv, nv, meds) in pooled.items():
        verdict = _verdict(np.array(bv), np.array(nv), th, scale=float(np.median(meds)))
        groups.append({**dict(zip(GROUP, gkey)), "metric": metric, "cells": len(meds), **verdict})
    return Comparison(_label(base_dir, base_meta), _label(new_dir, new_meta), pd.DataFrame(rows),
                      pd.DataFrame(groups), pd.DataFrame(contract), missing)


def _fmt(row: pd.Series) -> list[str]:
    verdict = "REGRESSION" if row["regression"] else ("significant" if row["significant"] else "")
    return [f"{row['base_median'] * 1e3:.2f}", f"{row['new_median'] * 1e3:.2f}", f"{row['ratio']:.3f}",
            f"{row['p_value']:.3g}", verdict]


def markdown(c: Comparison, th: Thresholds) -> str:
    lines = [f"## {c.new} vs {c.base}", "",
             f"Regression: Mann-Whitney U p < {th.alpha}, median ratio > {th.factor} and slower by > "
             f"{th.min_delta_s * 1e3:g} ms. Pooled: every common cell of a group, each sample divided by "
             "its cell's base median (ratios are then relative, base = 1).", "",
             "### Pooled per backend, dp size and mode", "",
             "| backend | dp | mode | metric | cells | base | new | ratio | p | verdict |", "|" + "---|" * 10]
    for _, r in c.groups.iterrows():
        lines.append(f"| {r['backend']} | {r['dp_size']} | {r['mode']} | {r['metric']} | {r['cells']} | "
                     f"{r['base_median']:.3f} | {r['new_median']:.3f} | {r['ratio']:.3f} | {r['p_value']:.3g} | "
                     f"{'REGRESSION' if r['regression'] else ('significant' if r['significant'] else '')} |")
    lines += ["", "### Per cell (times in ms)", "",
              "| backend | dp | mode | pause at | max tok | conc | metric | base | new | ratio | p | verdict |",
              "|" + "---|" * 12]
    for _, r in c.cells.iterrows():
        lines.append(f"| {r['backend']} | {r['dp_size']} | {r['mode']} | {r['pause_point']} | {r['max_tokens']} | "
                     f"{r['concurrency']} | {r['metric']} | " + " | ".join(_fmt(r)) + " |")
    lines += ["", "### Contract changes (ok count or leaked tokens)", ""]
    lines += [f"- {r.to_dict()}" for _, r in c.contract.iterrows()] or ["None."]
    lines += ["", "### Cells missing on one side", ""] + ([f"- {m}" for m in c.missing] or ["None."])
    return "\n".join(lines) + "\n"


def print_terminal(c: Comparison, th: Thresholds) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    t = Table(title=f"{c.new} vs {c.base}: pooled per group (p < {th.alpha}, ratio > {th.factor})",
              title_justify="left")
    for h in ("backend", "dp", "mode", "metric", "cells", "ratio", "p", "verdict"):
        t.add_column(h)
    for _, r in c.groups.iterrows():
        verdict = "REGRESSION" if r["regression"] else ("significant" if r["significant"] else "")
        t.add_row(r["backend"], str(r["dp_size"]), r["mode"], r["metric"], str(r["cells"]), f"{r['ratio']:.3f}",
                  f"{r['p_value']:.3g}", verdict, style="bold red" if r["regression"] else None)
    console.print(t)
    cells = c.cells[c.cells["significant"]] if len(c.cells) else c.cells
    console.print(f"{len(c.cells)} cell-metrics compared, {len(cells)} significant, "
                  f"{int(c.cells['regression'].sum()) if len(c.cells) else 0} regressions per cell")
    for _, r in c.contract.iterrows():
        console.print(f"[bold red]contract changed:[/bold red] {r.to_dict()}")
    for m in c.missing:
        console.print(f"missing: {m}")
