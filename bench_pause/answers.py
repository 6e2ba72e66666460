"""The questions users bring, answered from committed runs: the table that opens docs/index.md.

An RL engineer or a vLLM developer comes with these (issue 31); the answer must be found in
two minutes and must not drift from results/. So every number here is computed from the run
directories, none is typed: each question names the runs that answer it by pattern, and the
newest vLLM release among the matches answers, so a newer run replaces an old answer with no
edit. Each answer says its hardware, model and release and links to its section and its runs.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from bench_pause import compare, history, meta as meta_mod, results, summary


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    setup: str
    runs: list[Path]
    section: str  # where the docs say more: a page relative to docs/, or index.md#ANCHOR


def tails(values: pd.Series) -> str:
    """p50 / p90 / max in ms of one metric over some pauses: the form every answer uses."""
    v = values.dropna()
    if not len(v):
        return "n/a"
    return f"{summary.fmt_ms(v.median())} / {summary.fmt_ms(summary._p90(v))} / {summary.fmt_ms(v.max())} ms"


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rule) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def pick(root: Path, patterns: list[str]) -> list[Path]:
    """The run directories under ``root`` answering a question: of those whose path below
    ``root`` matches any pattern (a comparison's runs too: ``cmp-dir/0.34.0/r1``), the newest
    vLLM release's; within it, the first pattern's that matches."""
    found = [(p, d) for d in results.run_dirs(root) for p in patterns
             if fnmatch.fnmatch(d.relative_to(root).as_posix(), p)]
    if not found:
        return []
    version = {d: _version(d) for _, d in found}
    newest = max(version.values(), key=history.release_key)
    for p in patterns:
        dirs = [d for q, d in found if q == p and version[d] == newest]
        if dirs:
            return dirs
    return []


def _version(path: Path) -> str:
    """A run directory's vLLM release, or a history's newest release (``interleave.json``)."""
    info = results.read_meta(path)
    if info.get("vllm_version"):
        return str(info["vllm_version"])
    plan = path / "interleave.json"
    if plan.exists():
        variants = json.loads(plan.read_text())["variants"]
        return max((v.get("vllm") or "0" for v in variants), key=history.release_key)
    inner = [d for d in results.run_dirs(path) if d != path]
    return max((_version(d) for d in inner), key=history.release_key) if inner else "0"


def _runs(dirs: list[Path]) -> tuple[pd.DataFrame, dict]:
    return results.measured(results.load_runs(dirs)), {d.name: results.read_meta(d) for d in dirs}


def _setup(metas: dict) -> str:
    info = next(iter(metas.values()))
    return f"{info.get('device', '?')}, {meta_mod.model_name(info)}, vLLM {info.get('vllm_version', '?')}, {meta_mod.execution(info)}"


def _keep(m: pd.DataFrame, clear: bool | None = True) -> pd.DataFrame:
    """Keep pauses of the plain cycle with nothing arriving while paused, and a hold."""
    k = results.plain_cycle(m)
    k = k[(k["mode"] == "keep") & (k["hold_s"] > 0)]
    return k if clear is None else k[k["clear_cache"].astype(bool) == clear]


def keep_cost(m: pd.DataFrame) -> str:
    k = _keep(m)
    return (f"pause call {tails(k['pause_api_s'])}; gap beyond the hold {tails(k['gap_excess_s'])}; "
            f"resume to first token {tails(k['resume_ttft_s'])} ({len(k)} pauses, clear_cache=True, {_what(k)})")


def clear_cache(m: pd.DataFrame) -> str:
    said = []
    for clear in (True, False):
        k = _keep(m, clear)
        said.append(f"clear_cache={clear}: {tails(k['resume_all_s'])} ({len(k)} pauses)")
    return "resume call to every request's next token: " + "; ".join(said)


def worst(m: pd.DataFrame) -> str:
    stalled = summary.stalls(m)
    metric = "resume_all_s"
    top = m.loc[m[metric].idxmax()]
    head = (f"worst resume to every request's next token {summary.fmt_ms(top[metric])} ms (keep, clear_cache="
            f"{bool(top['clear_cache'])}, pause {int(top['pause_index']) + 1} of its engine, the first after "
            "start being pause 1)")
    if not len(stalled):
        return head + f"; no stall in {len(m)} pauses"
    by = stalled.groupby("clear_cache").size().to_dict()
    cells = m.groupby(m["clear_cache"].astype(bool)).size().to_dict()
    return head + "; stalls: " + ", ".join(f"{by.get(c, 0)} of {cells.get(c, 0)} pauses with clear_cache={c}"
                                           for c in (True, False) if c in cells)


def _slowest_rank(k: pd.DataFrame) -> pd.Series:
    worst_rank = k["resume_ttft_worst_s"] if "resume_ttft_worst_s" in k else pd.Series(float("nan"), index=k.index)
    return worst_rank.fillna(k["resume_ttft_s"])


def _what(k: pd.DataFrame) -> str:
    """The hold and backends some keep pauses were made with."""
    holds = "/".join(f"{h:g}" for h in sorted(set(k["hold_s"])))
    return f"{holds} s hold, {' and '.join(sorted(set(k['backend'])))}"


def data_parallel(m: pd.DataFrame) -> str:
    said = []
    for dp, g in m.groupby("dp_size"):
        k = _keep(g)
        said.append(f"dp {dp}: pause call {tails(k['pause_api_s'])}, resume to the slowest rank's first token "
                    f"{tails(_slowest_rank(k))} ({len(k)} pauses)")
    return "; ".join(said) + f" (keep, clear_cache=True, {_what(_keep(m))})"


def weight_sync(m: pd.DataFrame) -> str:
    s = m[(m["cycle"] == "weight_sync") & (m["mode"] == "keep") & m["clear_cache"].astype(bool)]
    wrong = int(m["wrong_weight_tokens"].max()) if "wrong_weight_tokens" in m else 0
    return (f"no token produced for {tails(s['dark_s'])}, of which the push {tails(s['sync_s'])} "
            f"({len(s)} keep cycles, clear_cache=True, {', '.join(sorted(set(s['backend'])))}; "
            f"wrong-weight tokens in any cycle: {wrong})")


def sleep_cost(m: pd.DataFrame) -> str:
    """Per sleep level: the sleep call, the wake that resumes (one call at levels 0 and 1, the
    KV cache's after a split wake at level 2), the memory freed; the pause beside it."""
    keep = m[m["mode"] == "keep"]
    said = []
    for level, g in keep[keep["cycle"] == "sleep"].groupby("sleep_level"):
        wake = g[g["wake"] == ("split" if level == 2 else "all")]
        said.append(f"level {level}: sleep {tails(g['pause_api_s'])}, "
                    f"wake {tails(wake['resume_api_s'])}, frees {g['mem_freed_bytes'].median() / 2**30:.1f} GiB "
                    f"({len(g)} cycles)")
    pause = results.plain_cycle(keep)
    return ("; ".join(said) + f"; beside a keep pause {tails(pause['pause_api_s'])} and its resume "
            f"{tails(pause['resume_api_s'])} ({', '.join(sorted(set(m['backend'])))})")


def _moved(c) -> str:
    """What a comparison called a regression: metric, delta and its CI, cell by cell."""
    return ", ".join(f"{history.LABELS.get(r['metric'], r['metric'])} {r['delta'] * 1e3:+.1f} ms "
                     f"[{r['ci_low'] * 1e3:.1f}, {r['ci_high'] * 1e3:.1f}]"
                     for _, r in c.regressions.drop_duplicates("metric").iterrows())


def _two_releases(d: Path) -> str:
    """A comparison directory of one subdirectory per release (``BASE/r1``, ``NEW/r1``...):
    the oldest against the newest, as `bench-pause compare` decides."""
    names = sorted((s.name for s in d.iterdir() if s.is_dir() and results.run_dirs(s)), key=history.release_key)
    base, new = (compare.load_side(results.run_dirs(d / n), n) for n in (names[0], names[-1]))
    c = compare.compare(base, new)
    verdict = f"regressed: {_moved(c)}" if c.regressed else "no regression"
    return (f"{_where(new.metas[0])} {base.name} to {new.name} ({new.n} engine runs a side, not calibrated): "
            f"{verdict}")


def _where(info: dict) -> str:
    return f"{str(info.get('device', '?')).replace('NVIDIA ', '')} {meta_mod.model_name(info)}"


def regressions(dirs: list[Path]) -> str:
    """Each history's step verdicts and what its calibration shows (the A/A copy and the
    injected delays), as ``history.publish`` computes them; each comparison of two releases."""
    said = []
    for d in dirs:
        if not (d / compare.PLAN).exists():
            said.append(_two_releases(d))
            continue
        plan = json.loads((d / compare.PLAN).read_text())
        sides, others = history.split(plan, compare.comparison_sides(d))
        if len(sides) < 2:
            continue
        th = compare.Thresholds()
        steps = history.steps(sides, th)
        bad = [f"{c.new.name} (vs {c.base.name})" for c in steps if c.regressed]
        checks = history.calibrate(plan, sides, others, th)
        aa = [c for c in checks if c.new.name.endswith(history.AGAIN) or c.base.name.endswith(history.AGAIN)]
        injected = [c for c in checks if c not in aa]
        calib = []
        if aa:
            calib.append("A/A " + ("called a change" if any(c.regressed for c in aa) else "clean"))
        for c in injected:
            calib.append(f"{c.new.name} {'found' if c.regressed else 'missed'}")
        backend = ",".join(sorted({str(b) for s in sides for b in s.runs["backend"].unique()}))
        # With one engine run on a side a step can call nothing: "no regression" would mislead.
        runs = min(s.n for s in sides)
        if bad:
            verdict = f"regressed at {', '.join(bad)}"
        elif runs < 2:
            verdict = f"no verdict yet in {len(steps)} steps ({runs} engine run a release: too few to detect anything)"
        else:
            verdict = f"no regression in {len(steps)} steps"
        said.append(f"{_where(sides[-1].metas[0])} {backend} {sides[0].name} to {sides[-1].name}: {verdict}"
                    + (f" (calibration: {', '.join(calib)})" if calib else ""))
    return "; ".join(said)


@dataclass(frozen=True)
class Question:
    text: str
    patterns: list[str]
    answer: Callable[[pd.DataFrame], str] | None  # of the measured pauses; None: a history
    page: str | None = None  # a docs page that says more, relative to docs/; else the runs' section


# The MoE resume stall runs: alone, or a comparison's (bench-pause compare BASE NEW) runs.
STALL = ["gpu-*-moe-stall-graphs", "gpu-*-moe-stall-graphs-*/*/r*"]

QUESTIONS = [
    # The stall runs first: two engine runs of 8 pauses a cell, where the gpu profile's
    # (asv's sweep) is one engine of 5.
    Question("What does a keep pause cost on a production MoE?",
             [*STALL, "gpu-*-gpu-offline-qwen3-30b-a3b"], keep_cost),
    Question("What does resume cost with clear_cache true and false?", STALL, clear_cache),
    Question("What is the worst case, and how often does it happen?", STALL, worst),
    Question("What does data parallel add?", ["gpu-*-dp[12]-qwen3-30b-a3b"], data_parallel, "dp/index.md"),
    Question("What does a whole weight-sync cycle cost?",
             ["gpu-*-weight-sync-ipc_packed*-qwen3-30b-a3b", "gpu-*-weight-sync-ipc_packed-qwen3-8b"], weight_sync),
    Question("What does a colocated sleep cost, and what does it free?",
             ["gpu-*-sleep-qwen3-30b-a3b*", "gpu-*-sleep-qwen3-8b"], sleep_cost),
    Question("Did any release regress?", ["gpu-*-history-offline-*", "gpu-*-history-http-*", "gpu-*-*-vs-*"], None,
             "history/gpu-h100/index.md"),
]


def answer_all(root: Path) -> list[Answer]:
    """Each question's answer from the run directories under ``root`` (results/); a question
    with no matching run is answered "not measured yet"."""
    root = Path(root)
    out = []
    for q in QUESTIONS:
        if q.answer is None:
            dirs = [d for p in q.patterns for d in sorted(root.glob(p)) if results.run_dirs(d)]
        else:
            dirs = pick(root, q.patterns)
        if not dirs:
            out.append(Answer(q.text, "not measured yet", "-", [], q.page or ""))
            continue
        if q.answer is None:
            metas = [results.read_meta(r) for d in dirs for r in results.run_dirs(d)]
            versions = sorted({str(m.get("vllm_version")) for m in metas}, key=history.release_key)
            setup = (f"{', '.join(sorted({str(m.get('device')) for m in metas}))}; vLLM {versions[0]} to "
                     f"{versions[-1]}; {', '.join(sorted({meta_mod.execution(m) for m in metas}))}")
            out.append(Answer(q.text, regressions(dirs), setup, dirs, q.page or ""))
            continue
        m, metas = _runs(dirs)
        section = q.page or "index.md#" + anchor(meta_mod.setup_label(next(iter(metas.values()))))
        out.append(Answer(q.text, q.answer(m), _setup(metas), dirs, section))
    return out


def markdown(answers: list[Answer], docs: Path, root: Path) -> str:
    """The table, its links relative to the ``docs`` directory it opens; runs named by their
    path under ``root`` (results/)."""
    lines = ["| question | answer (p50 / p90 / max) | measured on | more |", "|---|---|---|---|"]
    for a in answers:
        runs = ", ".join(f"[{d.relative_to(root).as_posix()}]({os.path.relpath(d, docs)}/)" for d in a.runs) or "-"
        more = f"[section]({a.section.removeprefix('index.md')})" if a.section else "-"
        lines.append(f"| {a.question} | {a.answer} | {a.setup} | {more}; runs: {runs} |")
    return "\n".join(lines) + "\n"
