"""The DP model's inputs read from committed runs, its checks against every measurement, and
its predictions at dp sizes no lent machine reaches (issue 33).

Every input names the run and cell it came from, so a prediction can be traced and redone:

- the decode step (``itl_median_s``), its spread, the pause call, its quiesce and resume to
  every stream: the dp 1 cell of the same setup (device, vLLM, model), backend, mode and
  cache setting;
- the dummy forward: the idle-pause edge cycle of a MoE engine at dp > 1, whose pause runs a
  whole window of dummy forwards, less a dense engine's idle pause on the same device and
  release (the pause's own cost without a window), over the window;
- the window: the release (:func:`bench_pause.dpmodel.release_of`).

Each input is taken at its p10, p50 and p90 over the pauses it comes from; the model run on
all-p10 and all-p90 inputs (and, for a pause at a fixed point, one step either side of it:
the step count at the call is known to a step) gives the interval a measurement is checked
against. Only the all-reduce's hop latencies come from no run (no multi-node host was lent):
:data:`NET_LOW`, :data:`NET_MID`, :data:`NET_HIGH`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench_pause import dpmodel, meta, results
from bench_pause.dpmodel import Interconnect, Parts, Prediction
from bench_pause.model import PRESETS
from bench_pause.scenario import ScenarioError

# Assumed, not measured: gloo over loopback TCP within a node, datacenter TCP across nodes.
NET_LOW = Interconnect(host_hop_s=10e-6, net_hop_s=20e-6)
NET_MID = Interconnect(host_hop_s=20e-6, net_hop_s=50e-6)
NET_HIGH = Interconnect(host_hop_s=50e-6, net_hop_s=200e-6)
CELL = ["backend", "mode", "clear_cache"]
CHECKED_CYCLES = ("pause", "idle")
METRICS = {"pause": "pause_api_s", "resume_all": "resume_all_s"}
# The cell the predictions at scale are made for: what an RL framework's pause does by default.
SCALE_CELL = {"backend": "offline", "mode": "keep", "clear_cache": True}


@dataclass(frozen=True)
class Input:
    """One measured input at p10 / p50 / p90, and where it was measured."""

    name: str
    p10: float
    p50: float
    p90: float
    source: str


def _pcts(v: pd.Series) -> tuple[float, float, float]:
    x = v.dropna().to_numpy(float)
    if not len(x):
        return (float("nan"),) * 3
    return tuple(float(np.percentile(x, q)) for q in (10, 50, 90))


def _runs(rows: pd.DataFrame) -> str:
    """The run directories of ``rows`` by name: the same wherever the results directory lies."""
    return ", ".join(sorted({Path(d).name for d in rows["run_dir"]}))


def _input(name: str, rows: pd.DataFrame, metric: str, what: str) -> Input:
    return Input(name, *_pcts(rows[metric]), f"{_runs(rows)} ({what}: {metric})")


def preset_of(info: dict) -> str:
    """The bench-pause preset a run's model was generated from (``qwen3-30b-a3b-r1``), or ''."""
    m = re.fullmatch(r"(.+)-r\d+", meta.model_name(info))
    return m[1] if m and m[1] in PRESETS else ""


def load(dirs: list[Path]) -> pd.DataFrame:
    """The measured pauses of ``dirs``, each row with its run directory, setup, whether its
    model is MoE and its release's sync behaviour."""
    frames = []
    for d in dirs:
        info = results.read_meta(d)
        preset = preset_of(info)
        runs = results.measured(results.load_runs([d]))
        device = info.get("device", "?") if info.get("gpu_count") else "CPU"
        frames.append(runs.assign(run_dir=str(d), device=device, vllm=str(info.get("vllm_version")),
                                  model=meta.model_name(info), preset=preset,
                                  moe=bool(preset and PRESETS[preset].experts)))
    return pd.concat(frames, ignore_index=True)


def _same_setup(df: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    return df[(df["device"] == row["device"]) & (df["vllm"] == row["vllm"]) & (df["model"] == row["model"])]


def _cell(df: pd.DataFrame, key: dict) -> pd.DataFrame:
    out = df
    for k, v in key.items():
        out = out[out[k] == v]
    return out


def _dp1(df: pd.DataFrame, row: pd.Series, key: dict) -> pd.DataFrame:
    """The dp 1 pauses of ``row``'s setup in cell ``key``, at its pause point when measured there."""
    base = _cell(_same_setup(df, row), {"dp_size": 1, "cycle": "pause", **key})
    same_point = base[base["pause_point"] == row["pause_point"]]
    return same_point if len(same_point) else base


@dataclass(frozen=True)
class Inputs:
    """The parts of one cell at p10 / p50 / p90, each with its source."""

    step: Input
    pause: Input
    idle_pause: Input | None  # a dense engine's idle pause on the device: the pause without a step in flight
    resume: Input
    quiesce: Input
    dummy: Input | None  # MoE only
    spread: float
    coordinated: bool

    def parts(self, q: str, idle: bool = False) -> Parts:
        """The model's parts with every input at quantile ``q`` (p10, p50 or p90); for an
        idle engine the pause's own cost is an idle dense engine's."""
        get = lambda i: getattr(i, q) if i is not None else 0.0  # noqa: E731
        pause = self.idle_pause if idle and self.idle_pause is not None else self.pause
        return Parts(step_s=get(self.step), dummy_s=get(self.dummy), spread=self.spread, pause_s=get(pause),
                     resume_s=get(self.resume), quiesce_s=get(self.quiesce), coordinated=self.coordinated)

    def listed(self) -> list[Input]:
        return [i for i in (self.step, self.pause, self.idle_pause, self.resume, self.quiesce, self.dummy)
                if i is not None]


def _dense_idle(df: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """Idle-cycle pauses of dense engines at dp > 1 on ``row``'s device and release: a pause
    with no step in flight and no window (dense ranks pause on their own)."""
    return df[(df["device"] == row["device"]) & (df["vllm"] == row["vllm"]) & ~df["moe"]
              & (df["cycle"] == "idle") & (df["dp_size"] > 1)]


def dummy_forward(df: pd.DataFrame, row: pd.Series) -> Input:
    """One dummy forward of ``row``'s MoE setup: its idle pause at dp > 1 (a whole window of
    dummy forwards in a wave the pause begins) less a dense model's idle pause on the same
    device and release (the pause without a window), over the window and the slowest of the
    ranks it ran on."""
    idle = _cell(_same_setup(df, row), {"cycle": "idle"})
    idle = idle[idle["dp_size"] > 1]
    dense = _dense_idle(df, row)
    if not len(idle) or not len(dense):
        raise ScenarioError(f"{row['model']} on {row['device']}, vLLM {row['vllm']}: the dummy forward needs an idle-cycle "
                            "run of it at dp > 1 and of a dense model on the same device and release")
    release = dpmodel.release_of(row["vllm"])
    n = int(idle["dp_size"].iloc[0])
    base = float(np.median(dense["pause_api_s"]))
    steps = dpmodel.dummy_steps(0, release) * dpmodel.slowest(1.0, _spread(idle), n)
    lo, mid, hi = ((v - base - dpmodel.allreduce_s(n, NET_MID)) / steps for v in _pcts(idle["pause_api_s"]))
    source = (f"{_runs(idle)} (idle cycle: pause_api_s) less the p50 of {_runs(dense)} (dense idle cycle), "
              f"over {release.interval} steps")
    return Input("dummy forward", lo, mid, hi, source)


def _spread(rows: pd.DataFrame) -> float:
    """Per-rank step times spread +- this fraction: the half-width of the p10-p90 range of
    the decode step over the pauses, relative to its p50 (no run records each rank's steps)."""
    p10, p50, p90 = _pcts(rows["itl_median_s"])
    spread = (p90 - p10) / (2 * p50)
    return spread if np.isfinite(spread) else 0.0  # a pause at prefill has no decode step to spread


def inputs(df: pd.DataFrame, row: pd.Series, dummy: bool) -> Inputs:
    """The parts of the cell of ``row`` (a pause of ``df``), each from the runs it is measured
    in; the dummy forward only with ``dummy`` (a coordinated pause at dp > 1 needs it)."""
    key = {k: row[k] for k in CELL}
    base = _dp1(df, row, key)
    if not len(base):
        raise ScenarioError(f"{row['run_dir']}: no dp 1 run of {row['model']} on {row['device']}, vLLM {row['vllm']}, "
                            f"{', '.join(f'{k} {v}' for k, v in key.items())}: the pause's own cost is measured there")
    offline = _dp1(df, row, {**key, "backend": "offline"})  # only the in-process engine times its last token
    what = " ".join(f"{k}={v}" for k, v in key.items()) + " dp 1"
    idle = _dense_idle(df, row)
    return Inputs(step=_input("decode step", base, "itl_median_s", what),
                  pause=_input("pause at dp 1", base, "pause_api_s", what),
                  idle_pause=_input("idle pause without a window", idle, "pause_api_s", "dense idle cycle")
                  if len(idle) else None,
                  resume=_input("resume to every stream at dp 1", base, "resume_all_s", what),
                  quiesce=_input("last token after the call at dp 1", offline if len(offline) else base,
                                 "quiesce_engine_s", what.replace(f"backend={row['backend']}", "backend=offline")),
                  dummy=dummy_forward(df, row) if dummy else None,
                  spread=_spread(base), coordinated=bool(row["moe"]))


def landing(row: pd.Series, inp: Inputs) -> int:
    """The wave's step count when the pause stops the requests: 0 for an idle engine (the
    pause begins the wave); in wait mode the last token of the longest stream; else the
    pause point's token (the wave's first step makes every stream's first token) plus the
    steps the engine ran after the call at dp 1."""
    if row["cycle"] == "idle":
        return 0
    if row["mode"] == "wait":
        return int(row["max_tokens"])
    point = str(row["pause_point"])
    token = int(point.split(":")[1]) if point.startswith("tokens:") else (
        round(float(point.split(":")[1]) * int(row["max_tokens"])) if point.startswith("frac:") else 1)
    after = inp.quiesce.p50 / inp.step.p50
    return token + round(after) if np.isfinite(after) else token


def band(inp: Inputs, n: int, release: dpmodel.Release, land: int | None) -> tuple[Prediction, Prediction, Prediction]:
    """The prediction on p50 inputs, and the least and the most it can be on all-p10 and
    all-p90 inputs (a fixed landing one step either way, the all-reduce from NET_LOW to NET_HIGH)."""
    lands = [land] if land in (None, 0) else [land - 1, land, land + 1]
    idle = land == 0
    mid = dpmodel.predict(inp.parts("p50", idle), n, release, NET_MID, land)
    low = [dpmodel.predict(inp.parts("p10", idle), n, release, NET_LOW, k) for k in lands]
    high = [dpmodel.predict(inp.parts("p90", idle), n, release, NET_HIGH, k) for k in lands]
    return mid, _extreme(low, min), _extreme(high, max)


def _extreme(preds: list[Prediction], pick) -> Prediction:
    """Field by field the least (``min``) or most (``max``) of several predictions."""
    fields = ("pause", "resume_all", "gpu_idle")
    return Prediction(*(dpmodel.Quantiles(*(pick(getattr(getattr(p, f), q) for p in preds) for q in ("p50", "p90", "max")))
                        for f in fields))


def checks(dirs: list[Path]) -> pd.DataFrame:
    """Predicted against measured p50 / p90 / max for every checked cell of ``dirs`` (the
    normal cycle with a hold, and the idle-pause cycle), pause call and resume to every stream.
    ``verdict``: the measured p90 inside the predicted p90's interval or outside it; ``input``
    where the cell is itself the model's input (dp 1, and the idle cycle that calibrates the
    dummy forward). A cell whose setup has no dp 1 run to read its inputs from is not checked."""
    df = load(dirs)
    df = df[df["cycle"].isin(CHECKED_CYCLES) & ((df["cycle"] == "idle") | (df["hold_s"] > 0))]
    rows = []
    group = ["run_dir", "device", "vllm", "model", "moe", "cycle", "dp_size", "pause_point", "max_tokens", *CELL]
    for keys, cell in df.groupby(group, sort=True):
        row = pd.Series(dict(zip(group, keys)))
        if not len(_dp1(df, row, {k: row[k] for k in CELL})):
            continue
        inp = inputs(df, row, dummy=bool(row["moe"]) and row["dp_size"] > 1)
        release = dpmodel.release_of(row["vllm"])
        mid, low, high = band(inp, int(row["dp_size"]), release, landing(row, inp))
        calibration = row["dp_size"] == 1 or row["cycle"] == "idle"  # the cells the inputs are read from
        for name, metric in METRICS.items():
            measured = _pcts(cell[metric])[1:] + (float(cell[metric].max()),)
            if measured[0] != measured[0] or (row["cycle"] == "idle" and name != "pause"):
                continue
            pred = getattr(mid, name)
            lo, hi = getattr(low, name).p90, getattr(high, name).p90
            verdict = "input" if calibration else "no prediction" if not np.isfinite(pred.p90) else (
                "inside" if lo <= measured[1] <= hi else "outside (above)" if measured[1] > hi else "outside (below)")
            rows.append({**row.to_dict(), "metric": metric, "n": int(cell[metric].notna().sum()),
                         "pred_p50": pred.p50, "pred_p90": pred.p90, "pred_max": pred.max, "lo_p90": lo, "hi_p90": hi,
                         "meas_p50": measured[0], "meas_p90": measured[1], "meas_max": measured[2],
                         "verdict": verdict, "sources": "; ".join(f"{i.name}: {i.source}" for i in inp.listed())})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Subject:
    """A model predicted at scale: its parts and where each came from."""

    name: str
    inputs: Inputs
    factor: float  # step and dummy forward scaled by this (a cut of a deeper model)
    assumptions: list[str]


def subjects(dirs: list[Path]) -> list[Subject]:
    """Every MoE model of ``dirs`` with a dp 1 pause in :data:`SCALE_CELL`: measured at its
    own depth, or, for a cut of a deeper model (``Preset.full_layers``), scaled from its
    layers to the whole depth with the dummy forward's share of a step taken from a measured
    MoE model on the same device and release."""
    df = load(dirs)
    found = []
    dp1 = df[df["moe"] & (df["dp_size"] == 1)]
    for preset_name, model in sorted(set(zip(dp1["preset"], dp1["model"])), key=lambda pm: PRESETS[pm[0]].full_layers):
        row = pd.Series({**dp1[dp1["model"] == model].iloc[0].to_dict(), **SCALE_CELL, "cycle": "pause", "dp_size": 1})
        if not len(_dp1(df, row, SCALE_CELL)):
            continue
        preset = PRESETS[preset_name]
        if not preset.full_layers:
            found.append(Subject(model, inputs(df, row, dummy=True), 1.0, []))
            continue
        donor = next((s for s in found if s.inputs.dummy is not None), None)
        if donor is None:
            continue
        own = inputs(df, row, dummy=False)  # its own idle cycle was not run: the dummy forward comes from the donor
        ratio = donor.inputs.dummy.p50 / donor.inputs.step.p50
        dummy = Input("dummy forward", own.step.p10 * ratio, own.step.p50 * ratio, own.step.p90 * ratio,
                      f"decode step x {ratio:.3f}, the dummy forward's share of a step in {donor.name}")
        factor = preset.full_layers / preset.layers
        found.append(Subject(f"{model} scaled to {preset.full_layers} layers",
                             Inputs(own.step, own.pause, own.idle_pause, own.resume, own.quiesce, dummy, own.spread,
                                    True), factor,
                             [f"step and dummy forward x {preset.full_layers}/{preset.layers} layers",
                              f"dummy forward = {ratio:.3f} decode steps, as in {donor.name}"]))
    return found


def predictions(subs: list[Subject], dps: list[int]) -> pd.DataFrame:
    """Each subject at each dp size and release: the pause of a busy engine landing
    uniformly in the window, of an idle engine, resume to every stream and GPU idle time,
    p50 / p90 / max, with the p50's and p90's intervals."""
    rows = []
    for s in subs:
        for release in dpmodel.RELEASES:
            for n in dps:
                for label, land in (("busy", None), ("idle", 0)):
                    mid, low, high = _scaled_band(s, n, release, land)
                    for metric in ("pause", "resume_all", "gpu_idle"):
                        if label == "idle" and metric != "pause":
                            continue
                        m, lo, hi = (getattr(p, metric) for p in (mid, low, high))
                        rows.append({"model": s.name, "release": release.name, "dp": n, "engine": label,
                                     "metric": metric, "p50": m.p50, "p90": m.p90, "max": m.max,
                                     "lo_p50": lo.p50, "hi_p50": hi.p50, "lo_p90": lo.p90, "hi_p90": hi.p90})
    return pd.DataFrame(rows)


def _scaled_band(s: Subject, n: int, release: dpmodel.Release, land: int | None):
    """Like :func:`band`, for a subject's parts scaled to its whole depth."""
    return [dpmodel.predict(dpmodel.scaled(s.inputs.parts(q, land == 0), s.factor), n, release, net, land)
            for q, net in (("p50", NET_MID), ("p10", NET_LOW), ("p90", NET_HIGH))]
