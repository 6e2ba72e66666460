"""Figures of one or more run directories: timeline, time to pause, gap, clear_cache, stalls,
first pause, per rank, dp size, leak.

Every figure names the vLLM version, device, model and date in its footer, uses the same
colour per mode, puts units on its axes, and is written as PNG and SVG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
# Figures rebuilt from the same runs come out byte for byte the same (no date, fixed ids):
# `bench-pause docs` then changes only the figures whose runs changed.
matplotlib.rcParams["svg.hashsalt"] = "bench-pause"
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401  (matplotlib.ticker.MaxNLocator)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench_pause import meta, results, summary, trace as tr  # noqa: E402

MODE_COLORS = {"keep": "#1f77b4", "abort": "#d62728", "wait": "#2ca02c"}
MODES = list(MODE_COLORS)


@dataclass
class Runs:
    """Several run directories read as one: measurement keys are ``run:measurement``."""

    runs: pd.DataFrame
    tokens: pd.DataFrame
    events: pd.DataFrame
    metas: dict[str, dict]

    @classmethod
    def load(cls, dirs: list[Path]) -> "Runs":
        parts: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
        metas = {}
        for d in dirs:
            runs, tokens, events, meta = results.load(d)
            name = Path(d).name
            metas[name] = meta
            parts.append(tuple(df.assign(run=name, key=name + ":" + df["measurement"].astype(str))
                               for df in (runs, tokens, events)))
        return cls(*(pd.concat([p[i] for p in parts], ignore_index=True) for i in range(3)), metas)

    @property
    def measured(self) -> pd.DataFrame:
        return results.measured(self.runs)

    @property
    def plain(self) -> pd.DataFrame:
        """The pauses an RL framework makes by default: the normal cycle, vLLM's default
        clear_cache=True, no request arriving while paused. Most figures show these."""
        m = results.plain_cycle(self.measured)
        return m[m["clear_cache"].astype(bool)]

    def footer(self) -> str:
        seen = []
        for info in self.metas.values():
            line = (f"{meta.setup_label(info)} ({info.get('vllm_distribution', '?')}), "
                    f"{str(info.get('started', '?'))[:10]}")
            if line not in seen:
                seen.append(line)
        return " | ".join(seen)


def _write(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """``name``.png and .svg in ``out``; the figure is closed."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if p.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def _save(fig: plt.Figure, out: Path, name: str, data: Runs) -> list[Path]:
    fig.text(0.01, 0.005, data.footer(), fontsize=7, color="#555555", ha="left", va="bottom")
    return _write(fig, out, name)


def _representative(measured: pd.DataFrame, backend: str, mode: str) -> pd.Series | None:
    """The measurement closest to the median gap (or pause time) of its mode and backend,
    preferring the most concurrent streams, so the timeline shows a typical pause."""
    rows = measured[(measured["backend"] == backend) & (measured["mode"] == mode) & (measured["error"] == "")]
    if not len(rows):
        return None
    rows = rows[rows["concurrency"] == rows["concurrency"].max()]
    rows = rows[rows["pause_point"] != "prefill"] if (rows["pause_point"] != "prefill").any() else rows
    metric = "gap_s" if rows["gap_s"].notna().any() else "pause_api_s"
    target = rows[metric].median()
    return rows.loc[(rows[metric] - target).abs().idxmin()]


def timeline(data: Runs, out: Path) -> list[Path]:
    """Token arrivals per request against time around one typical pause per mode and backend."""
    backends = sorted(data.plain["backend"].unique())
    if not backends:  # only edge cycles or arrivals in these runs: no plain pause to draw
        return []
    fig, axes = plt.subplots(len(MODES), len(backends), figsize=(6.5 * len(backends), 2.6 * len(MODES)),
                             squeeze=False, sharex=True)
    for col, backend in enumerate(backends):
        for row, mode in enumerate(MODES):
            ax = axes[row][col]
            run = _representative(data.plain, backend, mode)
            if run is None:
                ax.set_axis_off()
                continue
            tokens = data.tokens[data.tokens["key"] == run["key"]]
            events = data.events[data.events["key"] == run["key"]]
            t0 = events.loc[events["event"] == tr.PAUSE_CALL, "t"].iloc[0]
            at = {e: events.loc[events["event"] == e, "t"].iloc[0] - t0
                  for e in (tr.PAUSE_RETURN, tr.RESUME_CALL) if (events["event"] == e).any()}
            ax.scatter(tokens["t"] - t0, tokens["request"], s=6, color=MODE_COLORS[mode], lw=0)
            if tr.PAUSE_RETURN in at and tr.RESUME_CALL in at:
                ax.axvspan(at[tr.PAUSE_RETURN], at[tr.RESUME_CALL], color="#dddddd", zorder=0, label="hold")
            ax.axvline(0, color="black", lw=1, label="pause call")
            for name, style in ((tr.PAUSE_RETURN, ":"), (tr.RESUME_CALL, "--")):
                if name in at:
                    ax.axvline(at[name], color="black", lw=1, ls=style, label=name.replace("_", " "))
            if not np.isnan(run["resume_ttft_s"]):
                first = at[tr.RESUME_CALL] + run["resume_ttft_s"]
                ax.axvline(first, color="#9467bd", lw=1, label="first token after resume")
            note = f"pause API {run['pause_api_s'] * 1e3:.1f} ms, quiesce {run['quiesce_s'] * 1e3:.1f} ms"
            if not np.isnan(run["gap_s"]):
                note += f"\ngap {run['gap_s'] * 1e3:.0f} ms (hold {run['hold_s'] * 1e3:.0f} ms)"
            note += f"\nleak {int(run['leak_tokens'])} tokens"
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    bbox=dict(facecolor="white", alpha=0.8, lw=0))
            ax.set_title(f"{backend}, {mode}: dp {run['dp_size']}, pause at {run['pause_point']}, "
                         f"{run['max_tokens']} tokens x {run['concurrency']}", fontsize=9)
            ax.set_ylabel("request")
            ax.set_yticks(range(int(run["concurrency"])) if run["concurrency"] <= 8 else [])
            ax.set_ylim(-0.6, run["concurrency"] - 0.4)
            if row == len(MODES) - 1:
                ax.set_xlabel("time since pause call (s)")
    handles, labels = next((a.get_legend_handles_labels() for a in axes.flat if a.get_legend_handles_labels()[0]),
                           ([], []))
    fig.suptitle("One typical pause per mode: token arrivals per request")
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.96), ncol=5, fontsize=8, frameon=False)
    return _save(fig, out, "timeline", data)


def _facets(m: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One facet per engine shape: backend, dp size and, where several servers were paused
    together, their number; as (title, its rows)."""
    keys = sorted({(b, int(d), int(n)) for b, d, n in zip(m["backend"], m["dp_size"], m["servers"])})
    return [(f"{b}, dp {d}" + (f", {n} servers" if n > 1 else ""),
             m[(m["backend"] == b) & (m["dp_size"] == d) & (m["servers"] == n)]) for b, d, n in keys]


def _strip(ax: plt.Axes, groups: list[tuple[str, pd.Series]], colors: list[str], scale: float) -> None:
    """Each group's samples as points over a box: the spread across repeats, not a bare bar."""
    data = [g.dropna().to_numpy() * scale for _, g in groups]
    positions = np.arange(len(groups))
    if any(len(d) for d in data):
        ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.5,
                   showfliers=False, medianprops=dict(color="black"))
    rng = np.random.default_rng(0)
    for x, d, c in zip(positions, data, colors):
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(d)), d, s=10, color=c, alpha=0.8, zorder=3)
    ax.set_xticks(positions, [label for label, _ in groups], rotation=45, ha="right", fontsize=8)


Groups = Callable[[pd.DataFrame, str], list[tuple[str, pd.Series, str]]]


def _panels(m: pd.DataFrame, metrics: list[tuple[str, str]], groups: Groups,
            reference_itl: bool = False, log: bool = False, linear_to_ms: float = 1.0) -> plt.Figure:
    """One column per (backend, dp size), one row per metric, each a box of its groups."""
    facets = _facets(m)
    fig, axes = plt.subplots(len(metrics), max(len(facets), 1), figsize=(4.8 * max(len(facets), 1), 3.7 * len(metrics)),
                             squeeze=False, sharey="row")
    for col, (title, cell) in enumerate(facets):
        for row, (metric, ylabel) in enumerate(metrics):
            ax = axes[row][col]
            found = groups(cell, metric)
            _strip(ax, [(label, values) for label, values, _ in found], [c for *_, c in found], 1e3)
            itl = cell["itl_median_s"].median() * 1e3
            step = ""
            if reference_itl and not np.isnan(itl):  # named in the title: a legend would hide points
                ax.axhline(itl, color="#888888", ls="--", lw=1)
                step = f"\n(dashed: one decode step, {itl:.1f} ms)"
            ax.set_title(f"{title}: {metric.removesuffix('_s').replace('_', ' ')}{step}", fontsize=10)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
            if log:  # wait drains whole requests: hundreds of ms beside keep's tens
                ax.set_yscale("symlog", linthresh=linear_to_ms, linscale=1 if linear_to_ms <= 1 else 4)
                if linear_to_ms > 1:  # ticks through the linear part too, where the ms differences are
                    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(
                        [linear_to_ms * f for f in (0, 0.25, 0.5, 0.75, 1, 10, 100)]))
                    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    return fig


def time_to_pause(data: Runs, out: Path) -> list[Path]:
    """pause_api_s and quiesce_s by mode, pause point and clear_cache, per backend and dp size.
    Linear to 100 ms, where keep and abort sit and clearing's ~2 ms shows; log above, where
    wait's drains do."""
    m = results.plain_cycle(data.measured)

    def by_mode_point_cache(cell: pd.DataFrame, metric: str) -> list[tuple[str, pd.Series, str]]:
        keys = sorted({(mode, pp, bool(cc)) for mode, pp, cc in zip(cell["mode"], cell["pause_point"],
                                                                       cell["clear_cache"])},
                      key=lambda k: (MODES.index(k[0]), k[1], not k[2]))
        return [(f"{mode} @{pp}, {'clear' if cc else 'keep cache'}",
                 cell[(cell["mode"] == mode) & (cell["pause_point"] == pp) & (cell["clear_cache"] == cc)][metric],
                 MODE_COLORS[mode]) for mode, pp, cc in keys]

    if not len(m):  # only edge or weight_sync cycles: no plain pause to draw
        return []
    fig = _panels(m, [("pause_api_s", "pause call to return (ms)"),
                      ("quiesce_s", "pause call to last token (ms)")], by_mode_point_cache,
                  reference_itl=True, log=True, linear_to_ms=100.0)
    fig.suptitle("Time to pause, by mode, pause point and clear_cache (points: repeats; linear to 100 ms, log above)")
    fig.tight_layout()
    return _save(fig, out, "time_to_pause", data)


def gap(data: Runs, out: Path) -> list[Path]:
    """gap_excess_s and resume_ttft_s of keep pauses by max_tokens and concurrency."""
    def by_length_and_streams(cell: pd.DataFrame, metric: str) -> list[tuple[str, pd.Series, str]]:
        keys = sorted({(int(a), int(b)) for a, b in zip(cell["max_tokens"], cell["concurrency"])})
        return [(f"{mt} tok, {c} streams", cell[(cell["max_tokens"] == mt) & (cell["concurrency"] == c)][metric],
                 MODE_COLORS["keep"]) for mt, c in keys]

    m = data.plain
    if not (m["mode"] == "keep").any():
        return []
    fig = _panels(m[m["mode"] == "keep"], [("gap_excess_s", "gap minus hold (ms)"),
                                          ("resume_ttft_s", "resume call to first token (ms)")],
                  by_length_and_streams)
    fig.suptitle("What a keep pause (clear_cache=True) adds beyond the hold, by max_tokens and streams")
    fig.tight_layout()
    return _save(fig, out, "gap", data)


def clear_cache(data: Runs, out: Path) -> list[Path]:
    """Keep pauses with clear_cache True against False: the resume side, where the
    preempted requests' re-prefill shows. Nothing is drawn for runs with one value."""
    m = results.plain_cycle(data.measured)
    m = m[m["mode"] == "keep"]
    # Only cells measured both ways, so that nothing but clear_cache differs between the boxes.
    cell = [c for c in summary.CELL if c != "clear_cache"]
    m = m.groupby(cell, dropna=False).filter(lambda g: g["clear_cache"].nunique() == 2)
    if not len(m):
        return []
    colors = {True: MODE_COLORS["keep"], False: "#ff7f0e"}

    def by_cache_and_streams(cell: pd.DataFrame, metric: str) -> list[tuple[str, pd.Series, str]]:
        keys = sorted({(bool(a), int(b)) for a, b in zip(cell["clear_cache"], cell["concurrency"])},
                      key=lambda k: (k[1], not k[0]))
        return [(f"{'clear' if cc else 'keep cache'}, {c} streams",
                 cell[(cell["clear_cache"] == cc) & (cell["concurrency"] == c)][metric], colors[cc])
                for cc, c in keys]

    fig = _panels(m, [("gap_excess_s", "gap minus hold (ms)"),
                      ("resume_all_s", "resume call to every request's next token (ms)")],
                  by_cache_and_streams, reference_itl=True)
    fig.suptitle("Keep pauses: clear_cache=True (preempts and re-prefills the kept requests) against False")
    fig.tight_layout()
    return _save(fig, out, "clear_cache", data)


def stalls(data: Runs, out: Path) -> list[Path]:
    """Every keep pause in the order its engine made it: resume call to every request's next
    token, log scale, clear_cache True and False apart, the first pause after each engine
    start drawn hollow. A stall is a point far above its row; nothing is averaged."""
    runs = results.plain_cycle(data.runs)
    keep = runs[(runs["mode"] == "keep") & ~results.missed(runs) & runs["resume_all_s"].notna()]
    if not len(keep):
        return []
    facets = _facets(keep)
    fig, axes = plt.subplots(1, len(facets), figsize=(6 * len(facets), 4.2), squeeze=False, sharey=True)
    colors = {True: MODE_COLORS["keep"], False: "#ff7f0e"}
    found = summary.stalls(runs)
    stalled = set(zip(found.get("run", []), found.get("measurement", [])))
    for ax, (title, cell) in zip(axes[0], facets):
        for (run, cc), g in cell.groupby(["run", "clear_cache"]):
            order = g.sort_values(["engine", "pause_index"])
            x = np.arange(1, len(order) + 1)  # numbered from 1, as the Stalls table numbers them
            warm = order["warmup"].astype(bool).to_numpy()
            y = order["resume_all_s"].to_numpy() * 1e3
            label = f"{run}: clear_cache={bool(cc)}"
            ax.plot(x, y, color=colors[bool(cc)], lw=0.6, alpha=0.5)
            ax.scatter(x[~warm], y[~warm], color=colors[bool(cc)], s=16, label=label, zorder=3)
            ax.scatter(x[warm], y[warm], facecolors="none", edgecolors=colors[bool(cc)], s=40, zorder=3,
                       label="first pause after start" if warm.any() else None)
            hit = np.array([(run, mid) in stalled for mid in order["measurement"]])
            ax.scatter(x[hit], y[hit], marker="x", color="red", s=50, zorder=4,
                       label="stall" if hit.any() else None)
        ax.set_yscale("log")
        ax.set_title(f"{title}: keep pauses in engine order", fontsize=10)
        ax.set_xlabel("nth keep pause of its run and clear_cache value (1: the first after start)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("resume call to every request's next token (ms, log)")
        ax.grid(axis="y", alpha=0.3, which="both")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    fig.suptitle(f"Every keep pause: stalls (x: > {summary.STALL_FACTOR:g} x the p50 of the cell's other pauses "
                 f"in its run and > {summary.STALL_MIN_S * 1e3:g} ms beyond it) are shown, not averaged away")
    fig.tight_layout()
    return _save(fig, out, "stalls", data)


def _keep_panel(ax: plt.Axes, groups: list[tuple[str, pd.Series]], title: str, ylabel: str) -> None:
    """One panel of keep-pause samples in ms, a box per group."""
    _strip(ax, groups, [MODE_COLORS["keep"]] * len(groups), 1e3)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _per_rank_rows(m: pd.DataFrame) -> pd.DataFrame:
    """One row per (pause, rank) from the per_rank JSON of each pause."""
    rows = [{"rank": int(rank), **{k: v[k] for k in ("quiesce_s", "resume_ttft_s")}}
            for per_rank in m["per_rank"] for rank, v in json.loads(per_rank or "{}").items() if v["requests"]]
    return pd.DataFrame(rows, columns=["rank", "quiesce_s", "resume_ttft_s"])


def ranks(data: Runs, out: Path) -> list[Path]:
    """Keep pauses (clear_cache=True) of data-parallel engines and server fleets, per rank:
    how long each rank kept producing after the pause call and how long it took to get a
    token after the resume. A trainer waits for the slowest rank. Nothing is drawn when
    every engine had one rank."""
    m = data.plain
    m = m[(m["mode"] == "keep") & ((m["dp_size"] > 1) | (m["servers"] > 1))]
    if not len(m):
        return []
    facets = _facets(m)
    fig, axes = plt.subplots(2, len(facets), figsize=(4.8 * len(facets), 7.4), squeeze=False, sharey="row")
    for col, (title, cell) in enumerate(facets):
        per_rank = _per_rank_rows(cell)
        ranks_seen = sorted(per_rank["rank"].unique())
        for row, (metric, ylabel) in enumerate((("quiesce_s", "pause call to the rank's last token (ms)"),
                                                ("resume_ttft_s", "resume call to the rank's first token (ms)"))):
            _keep_panel(axes[row][col], [(f"rank {r}", per_rank.loc[per_rank["rank"] == r, metric])
                                         for r in ranks_seen],
                        f"{title}: {metric.removesuffix('_s').replace('_', ' ')} per rank", ylabel)
    fig.suptitle("Keep pauses per data-parallel rank (ranks numbered server by server)")
    fig.tight_layout()
    return _save(fig, out, "ranks", data)


def first_pause(data: Runs, out: Path) -> list[Path]:
    """The first pause after each engine start (its warm-up, left out of every statistic)
    beside the later pauses of the same mode and clear_cache value: a trainer pays it once
    per engine start, and on MoE engines it has been the slow one."""
    runs = results.plain_cycle(data.runs)
    runs = runs[~results.missed(runs)]
    firsts = runs[runs["warmup"].astype(bool)]
    if not len(firsts):
        return []
    later = runs[~runs["warmup"].astype(bool)]

    def by_first_and_mode(cell: pd.DataFrame, metric: str) -> list[tuple[str, pd.Series, str]]:
        out = []
        for mode, cc in sorted(set(zip(cell["mode"], cell["clear_cache"].astype(bool)))):
            same = cell[(cell["mode"] == mode) & (cell["clear_cache"] == cc)]
            if not same["warmup"].astype(bool).any():
                continue
            tag = f"{mode}{'' if cc else ' keepcache'}"
            out += [(f"{tag}: first", same.loc[same["warmup"].astype(bool), metric], "#d62728"),
                    (f"{tag}: later", same.loc[~same["warmup"].astype(bool), metric], MODE_COLORS[mode])]
        return out

    both = pd.concat([firsts, later[later.set_index(["run", "mode", "clear_cache"]).index.isin(
        firsts.set_index(["run", "mode", "clear_cache"]).index)]])
    fig = _panels(both, [("pause_api_s", "pause call to return (ms)"),
                         ("resume_all_s", "resume call to every request's next token (ms)")],
                  by_first_and_mode, log=True)
    fig.suptitle("First pause after each engine start (red) against the later pauses of its mode")
    fig.tight_layout()
    return _save(fig, out, "first_pause", data)


def dp_size(data: Runs, out: Path) -> list[Path]:
    """Keep pauses (clear_cache=True) by engine shape: dp size, and several servers paused
    together, side by side per backend: what the coordinated pause costs as ranks are added.
    Nothing is drawn for runs of one shape."""
    m = data.plain
    m = m[(m["mode"] == "keep") & (m["hold_s"] > 0)]  # back-to-back (hold 0) edge cycles apart
    shapes = sorted({(int(d), int(n)) for d, n in zip(m["dp_size"], m["servers"])})
    if len(shapes) < 2:
        return []
    backends = sorted(m["backend"].unique())
    metrics = (("pause_api_s", "pause call to return (ms)"),
               ("resume_ttft_worst_s", "resume call to the slowest rank's first token (ms)"))
    fig, axes = plt.subplots(len(metrics), len(backends), figsize=(5.5 * len(backends), 7.4), squeeze=False,
                             sharey="row")
    for col, backend in enumerate(backends):
        cell = m[m["backend"] == backend]
        for row, (metric, ylabel) in enumerate(metrics):
            groups = [(f"dp {d}" + (f" x {n} servers" if n > 1 else ""),
                       cell.loc[(cell["dp_size"] == d) & (cell["servers"] == n), metric]) for d, n in shapes]
            _keep_panel(axes[row][col], groups, f"{backend}: {metric.removesuffix('_s').replace('_', ' ')}", ylabel)
    holds = ", ".join(f"{h:g}" for h in sorted(set(m["hold_s"])))
    fig.suptitle(f"Keep pauses (clear_cache=True, held {holds} s) by data-parallel size and number of servers")
    fig.tight_layout()
    return _save(fig, out, "dp_size", data)


def leak(data: Runs, out: Path) -> list[Path]:
    """Tokens delivered while paused, by mode: zeros on a correct engine, loud otherwise."""
    m = data.measured
    facets = _facets(m)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(facets) * len(MODES)), 4))
    labels, totals, colors, counts = [], [], [], []
    for title, facet in facets:
        for mode in MODES:
            cell = facet[facet["mode"] == mode]
            if not len(cell):
                continue
            labels.append(f"{title}\n{mode}")
            totals.append(int(cell["leak_tokens"].sum()))
            counts.append(f"{int((cell['leak_tokens'] > 0).sum())}/{len(cell)} pauses leaked")
            colors.append(MODE_COLORS[mode])
    x = np.arange(len(labels))
    ax.bar(x, totals, color=[c if t == 0 else "red" for c, t in zip(colors, totals)])
    for xi, total, note in zip(x, totals, counts):
        ax.text(xi, max(total, 0) + 0.05, f"{total}\n{note}", ha="center", va="bottom", fontsize=8,
                color="red" if total else "black", fontweight="bold" if total else "normal")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("tokens delivered while paused (sum)")
    ax.set_ylim(0, max(max(totals, default=0) * 1.4, 1))
    leaked = sum(totals)
    ax.set_title("LEAK: tokens delivered while paused" if leaked else
                 "No token was delivered while paused (leak = 0 in every pause)",
                 color="red" if leaked else "black", fontweight="bold")
    fig.tight_layout()
    return _save(fig, out, "leak", data)


def plot_versions(sides: list, out: Path) -> list[Path]:
    """Each timing metric per version (:class:`bench_pause.compare.Side`): one point per engine
    run and cell (the run's median over its repeats), so run-to-run spread is what the eye
    compares; the line joins the median over cells and runs."""
    from bench_pause.compare import TIMING, per_run
    fig, axes = plt.subplots(1, len(TIMING), figsize=(4.2 * len(TIMING), 4.2), squeeze=False)
    labels = [f"{s.name}\n{s.n} run(s)" for s in sides]
    for ax, metric in zip(axes[0], TIMING):
        values = [per_run(s, metric) for s in sides]
        for mode, color in MODE_COLORS.items():
            for backend, marker in (("offline", "o"), ("http", "s")):
                ix = summary.CELL.index
                picked = [np.concatenate([v for k, v in vals.items() if k[ix("mode")] == mode
                                          and k[ix("backend")] == backend] or [np.empty(0)]) for vals in values]
                rng = np.random.default_rng(0)
                for x, pts in enumerate(picked):
                    ax.scatter(x + rng.uniform(-0.12, 0.12, len(pts)), pts * 1e3, color=color, marker=marker, s=10,
                               alpha=0.5, label=f"{backend} {mode}" if x == 0 and len(pts) else None)
                if all(len(p) for p in picked):
                    ax.plot(range(len(picked)), [np.median(p) * 1e3 for p in picked], color=color, alpha=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(metric)
        ax.set_yscale("symlog", linthresh=1.0)  # wait-mode drains (s) beside keep pauses (ms); gaps can be < 0
        ax.set_ylabel("ms (per run and cell), log above 1 ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Pause metrics per version: one point per engine run and cell (lines: median)")
    fig.tight_layout()
    return _write(fig, out, "versions")


def plot_history(table: pd.DataFrame, releases: list[str], comparisons: dict, names: dict[str, str],
                 out: Path, setup: str = "") -> list[Path]:
    """Each timing metric of ``names`` (metric: title) against the release
    (:func:`bench_pause.history.summarize`): per mode the mean over engine runs of the runs'
    p50 (solid) and p90 (dashed) with 95 % CIs, the largest pause (x), and a red ring on a
    release whose step from the one before is a regression for that metric, backend and mode."""
    metrics = list(names)
    groups = list(table.groupby(["backend", "dp_size"], sort=False).groups)
    fig, axes = plt.subplots(len(metrics), len(groups), figsize=(5.5 * len(groups), 2.8 * len(metrics)),
                             squeeze=False, sharex=True)
    x = {r: i for i, r in enumerate(releases)}
    for col, (backend, dp) in enumerate(groups):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            sel = table[(table["backend"] == backend) & (table["dp_size"] == dp) & (table["metric"] == metric)]
            lo, hi = sel[["p50", "max"]].min().min(), sel["max"].max()
            log = lo > 0 and hi / lo > 20  # wait-mode drains (s) beside keep pauses (ms)
            for k, (mode, color) in enumerate(MODE_COLORS.items()):
                t = sel[sel["mode"] == mode]
                if not len(t):
                    continue
                xs = np.array([x[r] for r in t["release"]]) + (k - 1) * 0.06
                for q, style in (("p50", "-"), ("p90", "--")):
                    y, ci = t[q].to_numpy() * 1e3, t[f"{q}_ci"].fillna(0).to_numpy() * 1e3
                    below = np.minimum(ci, 0.9 * y if log else y)  # no time is below 0 (nor a log axis)
                    ax.errorbar(xs, y, yerr=[below, ci], color=color, linestyle=style, marker="o", ms=3,
                                capsize=2, label=f"{mode} {q}" if row == col == 0 else None)
                ax.scatter(xs, t["max"] * 1e3, color=color, marker="x", s=14)
                for rel, y in zip(t["release"], t["p50"]):
                    c = comparisons.get(rel)
                    hit = c is not None and len(c.tests) and len(c.tests[
                        (c.tests["level"] == "group") & (c.tests["backend"] == backend) & (c.tests["mode"] == mode)
                        & (c.tests["metric"] == metric) & (c.tests["verdict"] == "regression")])
                    if hit:
                        ax.scatter([x[rel]], [y * 1e3], s=120, facecolors="none", edgecolors="red", linewidths=1.5)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{backend} dp{dp}: {names[metric]}", fontsize=9)
            ax.set_ylabel("ms")
            ax.grid(axis="y", alpha=0.3)
            ax.set_xticks(range(len(releases)), releases, fontsize=8)
            if row == len(metrics) - 1:
                ax.set_xlabel("vLLM release")
    axes[0][0].legend(fontsize=6, ncol=3)
    fig.suptitle((f"{setup}\n" if setup else "") + "Pause cost per vLLM release: p50 (solid) and p90 (dashed), "
                 "mean of engine runs ± 95 % CI (cut at 0); x = largest pause; red ring = step called a regression",
                 fontsize=9)
    fig.tight_layout()
    return _write(fig, out, "history")


def weight_sync(data: Runs, out: Path) -> list[Path]:
    """Where a weight sync's time goes: each phase's p50 stacked in order per cell, and the
    time with no token produced (p50 / p90 / max) beside it; nothing without weight_sync cycles."""
    from bench_pause.summary import syncs
    table = syncs(data.runs)
    if not len(table):
        return []
    # resume→tok runs from the resume call, so it holds the resume call: drawn once, not twice.
    phases = [("pause_api_s", "pause call"), ("idle_s", "until idle"), ("sync_start_s", "push: start"),
              ("sync_update_s", "push: update"), ("sync_finish_s", "push: finish"),
              ("resume_ttft_s", "resume call to first token")]
    colors = ["#4c72b0", "#8c8c8c", "#dd8452", "#c44e52", "#937860", "#55a868"]
    height = 1.6 + 0.45 * len(table)
    fig, ax = plt.subplots(figsize=(9, height))
    labels = [f"{r.sync_transfer} {r.backend} dp {r.dp_size} {r.mode} {r.concurrency} streams "
              f"{'clear' if r.clear_cache else 'keep'} cache ({r.n} cycles)" for r in table.itertuples(index=False)]
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for (metric, name), color in zip(phases, colors):
        width = table[f"{metric}_p50"].fillna(0).to_numpy() * 1e3
        ax.barh(y, width, left=left, color=color, label=name, height=0.6)
        left += width
    for yi, end, r in zip(y, left, table.itertuples(index=False)):
        ax.text(end, yi, "  no token " + " / ".join(f"{v * 1e3:.1f}" for v in (r.dark_s_p50, r.dark_s_p90, r.dark_s_max))
                + " ms", va="center", fontsize=7)
    ax.set_xlim(0, left.max() * 1.45)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms (p50 of each phase, stacked)")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 0.03))
    ax.set_title("weight_sync: pause, push a full weight set, resume", fontsize=10)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1))  # the legend's room, in inches
    return _save(fig, out, "weight_sync", data)


def sleep_phases(m: pd.DataFrame) -> pd.DataFrame:
    """The sleep figure's rows: per cell of the pause and sleep cycles, each phase's p50 and
    the memory freed, over the engines that slept only. A section pools every run of its
    setup, and another sweep's pauses are no same-engine comparison (they once filled the
    figure). Empty without sleep cycles."""
    if not len(m) or not (m["cycle"] == "sleep").any():
        return pd.DataFrame()
    engines = ["run", "engine"]  # Runs.load names each run directory's rows
    m = m.merge(m.loc[m["cycle"] == "sleep", engines].drop_duplicates(), on=engines)
    m = m[m["cycle"].isin(["pause", "sleep"]) & (m["arrivals"] == 0) & (m["servers"] == 1)]
    by = ["backend", "dp_size", "mode", "cycle", "sleep_level", "wake", "clear_cache"]
    return m.groupby(by, dropna=False, sort=True).agg(
        n=("ok", "size"), stop=("pause_api_s", "median"), weights=("wake_weights_s", "median"),
        push=("sync_s", "median"), comeback=("resume_ttft_s", "median"),
        freed=("mem_freed_bytes", "median")).reset_index()


def sleep(data: Runs, out: Path) -> list[Path]:
    """What a colocated trainer pays against a disaggregated one: per backend and mode, the
    pause cycle and the sleep cycles of the same engine side by side, each phase's p50 stacked
    (the stop call; a split wake's weights; a level-2 sleep's push; the call that resumes to
    the first token), the GPU memory the sleep freed beside it; nothing without sleep cycles."""
    from bench_pause.summary import cycle_name
    table = sleep_phases(data.measured)
    if not len(table):
        return []
    phases = [("stop", "pause or sleep call"), ("weights", "wake: weights (split)"),
              ("push", "push (level 2)"), ("comeback", "resume or last wake call to first token")]
    colors = ["#4c72b0", "#dd8452", "#c44e52", "#55a868"]
    height = 1.6 + 0.4 * len(table)
    fig, ax = plt.subplots(figsize=(9, height))
    labels = [f"{r.backend} dp {r.dp_size} {r.mode}: " + (
        cycle_name(r) if r.cycle == "sleep" else f"pause, {'clear' if r.clear_cache else 'keep'} cache")
        + f" ({r.n})" for r in table.itertuples(index=False)]
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for (column, name), color in zip(phases, colors):
        width = table[column].fillna(0).to_numpy() * 1e3
        ax.barh(y, width, left=left, color=color, label=name, height=0.6)
        left += width
    for yi, end, r in zip(y, left, table.itertuples(index=False)):
        if r.cycle == "sleep":
            ax.text(end, yi, "  freed " + ("n/a (no GPU)" if pd.isna(r.freed) else f"{r.freed / 2**30:.2f} GiB"),
                    va="center", fontsize=7)
    ax.set_xlim(0, max(left.max(), 1e-3) * 1.35)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms (p50 of each phase, stacked; the hold left out; (n) measured cycles)")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 0.03))
    ax.set_title("Colocated (sleep, wake_up) against disaggregated (pause, resume), same engine", fontsize=10)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1))
    return _save(fig, out, "sleep", data)


FIGURES = {"timeline": timeline, "time_to_pause": time_to_pause, "gap": gap, "clear_cache": clear_cache,
           "stalls": stalls, "first_pause": first_pause, "ranks": ranks, "dp_size": dp_size, "leak": leak,
           "weight_sync": weight_sync, "sleep": sleep}


def plot_all(dirs: list[Path], out: Path) -> dict[str, list[Path]]:
    data = Runs.load(dirs)
    if not len(data.measured):
        raise ValueError("no measured pauses in " + ", ".join(map(str, dirs)))
    return {name: fn(data, Path(out)) for name, fn in FIGURES.items()}
