"""Compare versions (or any two setups) run by run, and call regressions that are real.

A side of a comparison is one or more run directories, each one engine run of one version.
The engine run is the unit of replication (:mod:`bench_pause.stats`): per cell and timing
metric, each run contributes its median over its repeats, and Welch's t-test compares the
runs of the two sides. Two families of tests, each Holm-corrected at ``alpha / 2`` so that
the whole comparison's family-wise error rate is at most ``alpha``:

- *groups*, one per (backend, dp size, mode) and metric: per run, the mean over the
  group's cells (those measured in every run of both sides) of its cell value minus the
  base's mean of that cell. Pooling cells is what gives a few runs the power to see a few
  milliseconds; it is the primary verdict.
- *cells*, one per cell and metric: where a change is confined to one scenario.

A test is a **regression** when it is rejected and the new side is slower by more than
``min_delta_s`` and by more than ``factor - 1`` of the base; an **improvement** the same
faster; **underpowered** when it is not rejected and the smallest slowdown it would find
(80 % power, at the Bonferroni level of its family) exceeds that threshold, as any test
with fewer than two runs on a side does. A **contract break** is a cell whose new side
leaked tokens where the base never did, or broke its mode's contract in most of its engine
runs where the base never did (once in one run of three is "sporadic": reported, not a
break). ``regressed`` (exit
status 1) means a regression or a contract break; improvements and fixes never fail.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench_pause import meta, results, stats, summary

# The pause call and the resume call as the trainer sees them, and what the engine does
# around them. resume_api_s is here because a slower resume call is paid on every cycle
# (and because it is where a delay before the call shows whole: see docs/compare).
TIMING = ["pause_api_s", "quiesce_s", "gap_excess_s", "resume_api_s", "resume_ttft_s", "resume_all_s"]
GROUP = ["backend", "dp_size", "mode"]
PLANNED_MS = (2, 5)  # slowdowns for which the report says how many runs per side would find them
PLAN = "interleave.json"  # written by bench_pause.interleave in a comparison directory


@dataclass(frozen=True)
class Thresholds:
    factor: float = 1.05
    alpha: float = 0.01
    min_delta_s: float = 0.001

    def practical(self, base_level: float) -> float:
        """The smallest slowdown worth calling: ``min_delta_s``, or ``factor - 1`` of the
        base where that is larger (a base at or below 0 has no scale)."""
        return max(self.min_delta_s, (self.factor - 1) * base_level) if base_level > 0 else self.min_delta_s


@dataclass
class Side:
    """One version's runs: measured pauses of every run directory, tagged with ``run``."""

    name: str
    dirs: list[Path]
    runs: pd.DataFrame = field(repr=False)
    metas: list[dict] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.dirs)

    @property
    def label(self) -> str:
        return f"{self.name} ({_describe(self.metas[0])})"


def _describe(info: dict) -> str:
    return ", ".join([f"vLLM {info.get('vllm_version', '?')}", *meta.injected_delays(info)])


def load_side(dirs: list[Path], label: str | None = None) -> Side:
    frames, metas = [], []
    for i, d in enumerate(dirs):
        runs, *_, info = results.load(d)
        frames.append(results.measured(runs).assign(run=i))
        metas.append(info)
    name = label or (Path(dirs[0]).name if len(dirs) == 1 else Path(dirs[0]).parent.name)
    return Side(name, list(map(Path, dirs)), pd.concat(frames, ignore_index=True), metas)


def comparison_sides(path: Path) -> list[Side]:
    """The sides of an interleaved comparison directory, in the order its plan names them:
    each variant's runs that finished. An interrupted or failed run is left out (it holds
    part of the grid, so its cells would not pool with the others'); a run the plan does
    not list (copied in by hand) counts."""
    plan = json.loads((Path(path) / PLAN).read_text())
    status = {k: v.get("status") for k, v in plan.get("runs", {}).items()}
    sides = []
    for v in plan["variants"]:
        dirs = [d for d in results.run_dirs(Path(path) / v["name"])
                if status.get(f"{v['name']}/{d.name}", "done") == "done"]
        if dirs:
            sides.append(load_side(dirs, v["name"]))
    return sides


def is_comparison(path: Path) -> bool:
    return (Path(path) / PLAN).exists()


@dataclass
class Comparison:
    base: Side
    new: Side
    tests: pd.DataFrame  # one row per test: level (group|cell), keys, metric, effect, verdict
    contract: pd.DataFrame  # cells whose contract changed or failed
    missing: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.tests[self.tests["verdict"] == "regression"] if len(self.tests) else self.tests

    @property
    def breaks(self) -> pd.DataFrame:
        return self.contract[self.contract["status"] == "broke"] if len(self.contract) else self.contract

    @property
    def regressed(self) -> bool:
        return bool(len(self.regressions)) or bool(len(self.breaks))


def per_run(side: Side, metric: str) -> dict[tuple, np.ndarray]:
    """Per cell, each run's median of ``metric`` over its repeats, in run order."""
    s = side.runs.groupby([*summary.CELL, "run"])[metric].median().dropna()
    return {k: g.to_numpy(float) for k, g in s.groupby(level=list(range(len(summary.CELL))))}


def _test_row(w: stats.Welch, th: Thresholds, base_level: float) -> dict:
    lo, hi = w.ci()
    return {"n_base": w.n_base, "n_new": w.n_new, "base": w.base_mean, "new": w.new_mean, "delta": w.delta,
            "ci_low": lo, "ci_high": hi, "p_value": w.p_value(), "threshold": th.practical(base_level),
            "ratio": w.new_mean / w.base_mean if w.base_mean > 0 else math.nan, "_welch": w}


def _verdicts(rows: list[dict], th: Thresholds) -> None:
    """Holm within the family at alpha/2, then each test's verdict (module docstring)."""
    alpha = th.alpha / 2
    adjusted = stats.holm([r["p_value"] for r in rows])
    m = max(1, sum(not math.isnan(r["p_value"]) for r in rows))
    for r, p_adj in zip(rows, adjusted):
        w: stats.Welch = r.pop("_welch")
        r["p_holm"] = p_adj
        r["detectable"] = w.detectable(alpha / m)
        for ms in PLANNED_MS:
            r[f"runs_for_{ms}ms"] = stats.runs_needed(w.var_base, w.var_new, ms / 1e3, alpha / m)
        rejected = not math.isnan(p_adj) and p_adj < alpha
        if rejected and r["delta"] > r["threshold"]:
            r["verdict"] = "regression"
        elif rejected and r["delta"] < -r["threshold"]:
            r["verdict"] = "improvement"
        elif rejected:
            r["verdict"] = "changed, below threshold"
        elif r["detectable"] > r["threshold"]:
            r["verdict"] = "underpowered"
        else:
            r["verdict"] = "no change"


def _contract(base: pd.DataFrame, new: pd.DataFrame, cell: dict) -> dict | None:
    """How the cell's contract changed. A leak where the base never leaked is a break
    whenever it happens: tokens delivered while paused are the failure this suite exists to
    catch. A not-ok pause without a leak is a break only where it fails in most of the new
    side's engine runs: some failures are timing (over HTTP a request aborted before its
    first token ends without a finish reason, and whether the second stream had its first
    token at the pause depends on the host), and one run in three showing one is
    "sporadic", reported but not exit 1 (0.32.0 against 0.31.0 on the 2-core host did this)."""
    def not_ok(side: pd.DataFrame) -> tuple[int, int, int]:  # pauses not ok, runs with one, runs
        bad = ~side["ok"].astype(bool)
        return int(bad.sum()), side.loc[bad, "run"].nunique(), side["run"].nunique()

    (bad_b, runs_bad_b, runs_b), (bad_n, runs_bad_n, runs_n) = not_ok(base), not_ok(new)
    leak_b, leak_n = int(base["leak_tokens"].max()), int(new["leak_tokens"].max())
    if not (bad_b or bad_n or leak_b or leak_n):
        return None
    if leak_n and not leak_b:
        status = "broke"
    elif bad_n and not bad_b:
        status = "broke" if 2 * runs_bad_n > runs_n else "sporadic on new"
    elif (bad_b and not bad_n) or (leak_b and not leak_n):
        status = "fixed" if leak_b or 2 * runs_bad_b > runs_b else "sporadic on base"
    else:
        status = "fails on both"
    return {**cell, "not_ok_base": f"{bad_b}/{len(base)} in {runs_bad_b}/{runs_b} runs",
            "not_ok_new": f"{bad_n}/{len(new)} in {runs_bad_n}/{runs_n} runs",
            "leak_base": leak_b, "leak_new": leak_n, "status": status}


def compare(base: Side, new: Side, th: Thresholds = Thresholds()) -> Comparison:
    bg, ng = base.runs.groupby(summary.CELL), new.runs.groupby(summary.CELL)
    bkeys, nkeys = set(bg.groups), set(ng.groups)
    missing = [f"only in {base.label}: {k}" for k in sorted(bkeys - nkeys, key=str)]
    missing += [f"only in {new.label}: {k}" for k in sorted(nkeys - bkeys, key=str)]
    common = sorted(bkeys & nkeys, key=str)

    contract = [c for key in common
                if (c := _contract(bg.get_group(key), ng.get_group(key), dict(zip(summary.CELL, key))))]

    cells, groups = [], []
    for metric in TIMING:
        vb, vn = per_run(base, metric), per_run(new, metric)
        pooled: dict[tuple, list] = {}
        for key in common:
            b, n = vb.get(key), vn.get(key)
            if b is None or n is None:
                continue
            cell = dict(zip(summary.CELL, key))
            w = stats.welch(b, n)
            cells.append({"level": "cell", **cell, "metric": metric, **_test_row(w, th, w.base_mean)})
            if len(b) == base.n and len(n) == new.n:  # measured in every run: poolable
                pooled.setdefault(tuple(cell[g] for g in GROUP), []).append((b, n))
        for gkey, members in pooled.items():
            means = [b.mean() for b, _ in members]
            # per run: mean over the group's cells of (run's cell value - base mean of that cell)
            sb = np.mean([b - m for (b, _), m in zip(members, means)], axis=0)
            sn = np.mean([n - m for (_, n), m in zip(members, means)], axis=0)
            level = float(np.mean(means))
            w = stats.welch(sb + level, sn + level)
            groups.append({"level": "group", **dict(zip(GROUP, gkey)), "metric": metric, "cells": len(members),
                           **_test_row(w, th, level)})
    _verdicts(groups, th)
    _verdicts(cells, th)
    tests = pd.DataFrame(groups + cells)
    return Comparison(base, new, tests, pd.DataFrame(contract), missing)


def _ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 1e3:.2f}"


def _ci(r: pd.Series) -> str:
    return f"{_ms(r['ci_low'])} to {_ms(r['ci_high'])}" if math.isfinite(r["ci_low"]) else "n/a"


def _runs(n: float) -> str:
    return "n/a" if math.isnan(n) else (">100" if math.isinf(n) else str(int(n)))


def _row(r: pd.Series, keys: list[str], planned: bool = False) -> str:
    p = "n/a" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}"
    verdict = f"**{r['verdict']}**" if r["verdict"] in ("regression", "improvement") else r["verdict"]
    cols = [str(int(r[k])) if k == "cells" else str(r[k]) for k in keys]
    cols += [r["metric"], _ms(r["base"]), _ms(r["new"]), _ms(r["delta"]), _ci(r), p, _ms(r["detectable"])]
    cols += [_runs(r[f"runs_for_{ms}ms"]) for ms in PLANNED_MS] if planned else []
    return "| " + " | ".join(cols + [verdict]) + " |"


def verdict_line(c: Comparison) -> str:
    counts = c.tests["verdict"].value_counts().to_dict() if len(c.tests) else {}
    parts = [f"{counts.get(v, 0)} {v}" for v in ("regression", "improvement", "underpowered") if counts.get(v)]
    if len(c.breaks):
        parts.insert(0, f"{len(c.breaks)} contract break(s)")
    head = "REGRESSED" if c.regressed else "no regression"
    return f"{head}: {c.new.n} run(s) of {c.new.label} against {c.base.n} of {c.base.label}" + (
        f" ({', '.join(parts)})" if parts else "")


def markdown(c: Comparison, th: Thresholds) -> str:
    head = ["metric", "base ms", "new ms", "delta ms", "95% CI ms", "p (Holm)", "detectable ms", "verdict"]
    lines = [f"## {c.new.label} vs {c.base.label}", "", verdict_line(c), "",
             f"Runs: {c.base.n} base ({', '.join(d.name for d in c.base.dirs)}), {c.new.n} new "
             f"({', '.join(d.name for d in c.new.dirs)}). One value per engine run (its median over repeats); "
             f"Welch's t-test between runs; Holm within groups and within cells, each at {th.alpha / 2:g} "
             f"(family-wise {th.alpha:g} in all). Regression: rejected and slower by more than "
             f"{th.min_delta_s * 1e3:g} ms and {100 * (th.factor - 1):g} % of the base. *detectable*: the "
             "smallest slowdown the test finds with 80 % power; *underpowered* where that exceeds the "
             "threshold; *runs for N ms*: engine runs per side that would find a slowdown of N ms with 80 % power, "
             "at the run-to-run spread seen here.", "",
             "### Pooled per backend, dp size and mode", "",
             "| backend | dp | mode | cells | " + " | ".join(head[:-1] + [f"runs for {ms} ms" for ms in PLANNED_MS])
             + " | verdict |", "|" + "---|" * (len(head) + 4 + len(PLANNED_MS))]
    groups = c.tests[c.tests["level"] == "group"] if len(c.tests) else c.tests
    lines += [_row(r, [*GROUP, "cells"], planned=True) for _, r in groups.iterrows()]
    keys = ["backend", "dp_size", "mode", "pause_point", "max_tokens", "concurrency", "clear_cache"]
    lines += ["", "### Per cell", "", "| " + " | ".join(["backend", "dp", "mode", "pause at", "max tok", "conc",
                                                         "clear cache", *head]) + " |", "|" + "---|" * (len(head) + 7)]
    cells = c.tests[c.tests["level"] == "cell"] if len(c.tests) else c.tests
    lines += [_row(r, keys) for _, r in cells.iterrows()]
    lines += ["", "### Contract (not-ok pauses or leaked tokens on either side)", ""]
    lines += [f"- {r['status']}: {', '.join(f'{k}={r[k]}' for k in keys)}: not ok {r['not_ok_base']} -> "
              f"{r['not_ok_new']}, leak {r['leak_base']} -> {r['leak_new']}" for _, r in c.contract.iterrows()]
    lines += [] if len(c.contract) else ["None."]
    lines += ["", "### Cells missing on one side", ""] + ([f"- {m}" for m in c.missing] or ["None."])
    return "\n".join(lines) + "\n"


def write_markdown(comparisons: list[Comparison], th: Thresholds, path: Path) -> Path:
    """The comparisons' tables, one after another, in the Markdown file ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(markdown(c, th) for c in comparisons))
    return path


def print_terminal(c: Comparison, th: Thresholds) -> None:
    from rich.table import Table

    console = summary.console(width=160)
    t = Table(title=f"{c.new.label} vs {c.base.label}: pooled per group, run by run", title_justify="left")
    for h in ("backend", "dp", "mode", "metric", "cells", "runs", "delta ms", "95% CI ms", "p (Holm)",
              "detectable ms", "verdict"):
        t.add_column(h)
    for _, r in (c.tests[c.tests["level"] == "group"] if len(c.tests) else c.tests).iterrows():
        t.add_row(r["backend"], str(r["dp_size"]), r["mode"], r["metric"], str(int(r["cells"])),
                  f"{r['n_base']}/{r['n_new']}", _ms(r["delta"]), _ci(r),
                  "n/a" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}", _ms(r["detectable"]), r["verdict"],
                  style="bold red" if r["verdict"] == "regression" else None)
    console.print(t)
    flagged = c.tests[(c.tests["level"] == "cell") & c.tests["verdict"].isin(["regression", "improvement"])] \
        if len(c.tests) else c.tests
    for _, r in flagged.iterrows():
        console.print(f"cell {r['verdict']}: {r['backend']} dp{r['dp_size']} {r['mode']} {r['pause_point']} "
                      f"{r['max_tokens']} tok x{r['concurrency']} cc={r['clear_cache']} {r['metric']}: "
                      f"{_ms(r['delta'])} ms ({_ci(r)})")
    for _, r in c.contract.iterrows():
        style = "bold red" if r["status"] == "broke" else "yellow"
        console.print(f"[{style}]contract {r['status']}:[/{style}] {r['backend']} dp{r['dp_size']} {r['mode']} "
                      f"{r['pause_point']}: not ok {r['not_ok_base']} -> {r['not_ok_new']}, "
                      f"leak {r['leak_base']} -> {r['leak_new']}")
    for m in c.missing:
        console.print(f"missing: {m}")
    console.print(("[bold red]" if c.regressed else "") + verdict_line(c))
