"""docs/index.md from committed run directories: what ran, on what, the tables, the figures.

Regenerating it needs no engine: only the run directories.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench_pause import answers as answers_mod, meta, plots, quote, results, summary

# A graph page of the published asv site (docs/asv), under the report's directory: shown
# where it exists (tools/asv-screenshot.py makes it, of ASV_SCREENSHOT_PAGE by default:
# what follows `index.html#` in the site's address).
ASV_SCREENSHOT = "figures/asv-site.png"
ASV_SCREENSHOT_PAGE = "pause.Offline.track_pause_api_s?machine=gpu-h100&x-axis=model"

CAPTIONS = {
    "timeline": "One typical pause per mode and backend: every token's arrival per request, the "
                "pause call, its return, the hold (grey), the resume call and the first token after it.",
    "time_to_pause": "How long the pause call takes to return (top) and how long the engine keeps "
                     "producing tokens after it (bottom), by mode, pause point and clear_cache, linear to "
                     "100 ms and log above; the dashed line is one decode step.",
    "gap": "What a keep pause costs beyond the hold: the first request's gap minus the hold (top) and "
           "resume call to the next token (bottom), by request length and concurrency.",
    "clear_cache": "Keep pauses with clear_cache=True (vLLM's default: the running requests are preempted "
                   "and their prompts and generated tokens prefilled again after resume) against False: the "
                   "gap beyond the hold (top) and resume call to the moment every request has its next token "
                   "(bottom), by concurrency; the dashed line is one decode step.",
    "stalls": "Every keep pause in the order its engine made it (the first after each engine start hollow): "
              "resume call to the moment every request has its next token, log scale. A stall is a point far "
              "above its row, marked with a red x.",
    "first_pause": "The first pause after each engine start (red; the warm-up, left out of every table's "
                   "statistics) beside the later pauses of the same mode and cache setting on the same runs: "
                   "pause call to return (top) and resume call to every request's next token (bottom), log scale.",
    "ranks": "Keep pauses (clear_cache=True) of data-parallel engines, per rank (numbered server by server "
             "where several servers were paused together): pause call to the rank's last token (top) and "
             "resume call to its first token (bottom). A trainer waits for the slowest rank.",
    "dp_size": "Keep pauses (clear_cache=True, with a hold: the back-to-back edge cycles apart) by data-parallel "
               "size and number of servers paused together: "
               "pause call to return (top) and resume call to the slowest rank's first token (bottom).",
    "leak": "Tokens delivered between the pause's return and the resume call. A correct engine "
            "delivers none; a leak is drawn in red.",
    "sleep": "What a colocated trainer pays against a disaggregated one: per backend and mode, the pause "
             "cycle and the sleep cycles of the same engine, each phase's p50 stacked (the pause or sleep "
             "call; a split wake's first call, the weights; a level-2 sleep's push; from the call that "
             "resumes to the first token; "
             "the hold left out), and beside each sleep the GPU memory it freed (p50).",
    "weight_sync": "Where a weight sync's time goes: each phase's p50 stacked in the order it happens "
                   "(pause call, until the workers are idle, the push's start, update and finish, the "
                   "resume call, until the first token), per backend, mode and cache setting; beside each bar, "
                   "the time with no token produced (last token before the pause returned to the first "
                   "after the resume) as p50 / p90 / max.",
}


def _describe(name: str, info: dict, runs) -> str:
    m = results.measured(runs)
    engines = info.get("engines", [])
    starts = ", ".join(f"{e['backend']} dp{e['dp_size']} " + (f"{e['startup_s']:.0f} s" if e["startup_s"] is not None
                                                              else "started elsewhere")
                       for e in engines if "startup_s" in e)
    args = info.get("engine_args")
    model = meta.model_name(info)
    preset = re.fullmatch(r"(.+)-r(\d+)", model)
    if preset:  # make-model names the generated model by its preset and the preset's revision
        model += f"` (bench-pause's generated `{preset[1]}` preset, revision {preset[2]})"
    else:
        model += "`"
    return (f"- **{name}**: vLLM {info.get('vllm_version')} ({info.get('vllm_distribution')}), "
            f"torch {info.get('torch_version')}, {info.get('device')}, model `{model}, "
            f"engine args `{args if isinstance(args, str) else ' '.join(args or [])}`, profile {info.get('profile') or 'custom'}, "
            f"{len(m)} measured pauses ({int(m['ok'].sum())} ok) plus {int(runs['warmup'].sum())} warm-ups, "
            f"started {info.get('started')}. Engine start-ups: {starts or 'n/a'}.")


def _setup_groups(dirs: list[Path]) -> dict[str, list[Path]]:
    """Run directories grouped by setup (:func:`setup_label`): one section and one set of
    figures each, so two models or eager and graphs are never pooled in one box."""
    from bench_pause.results import read_meta
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        groups.setdefault(meta.setup_label(read_meta(d)), []).append(Path(d))
    return groups


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-").lower()


def _section(title: str, dirs: list[Path], out: Path) -> list[str]:
    data = plots.Runs.load(dirs)
    figures = {name: fn(data, out / "figures" / _slug(title)) for name, fn in plots.FIGURES.items()}
    lines = [f"## {title}", "", "### What was run", ""]
    for d in dirs:
        name = Path(d).name
        rel = os.path.relpath(d, out)
        lines.append(_describe(name, data.metas[name], data.runs[data.runs["run"] == name])
                     + f" Raw results: [{rel}/]({rel}/).")
    lines.append("")
    for name, paths in figures.items():
        if not paths:  # a figure with nothing to show for these runs
            continue
        png = os.path.relpath(paths[0], out)
        lines += [f"### {name.replace('_', ' ')}", "", CAPTIONS[name], "", f"![{name}]({png})", ""]
    lines += ["### Per scenario: p50 / p90 / max", "",
              "Times in ms as p50 / p90 / max over the measured pauses of a cell (the first pause after "
              "each engine start is left out here and shown below); `ok` counts the pauses whose mode "
              "contract held; `leak` is the largest number of tokens delivered while paused; `stalls` "
              f"counts pauses with a metric over {summary.STALL_FACTOR:g} x the p50 of the other pauses of "
              f"their cell in their run and over {summary.STALL_MIN_S * 1e3:g} ms beyond it.", ""]
    for d in dirs:
        name = Path(d).name
        lines += [f"#### {name}", "", summary.markdown(summary.cells(data.runs[data.runs["run"] == name]))]
    lines += _stalls(data.runs) + _first_pauses(data.runs) + _ranks(data.runs) + _syncs(data.runs) + _sleeps(data.runs)
    return lines


def _table_section(heading: str, caption: str, table, rows_of) -> list[str]:
    """A heading, its caption and its table; nothing for an empty table."""
    return [f"### {heading}", "", caption, "", summary.markdown(table, rows_of)] if len(table) else []


def _sleeps(runs) -> list[str]:
    return _table_section(
        "Sleep: what a colocated trainer pays and gains",
        "Per sleep cell (times in ms, p50 / p90 / max over its cycles): vLLM's `sleep(level, mode)` call; "
        "a split wake's first call (the weights back); at level 2 the push of a new weight set between the "
        "wake calls; the `wake_up` that resumes scheduling (the KV cache, or everything at once); from it "
        "to the first token and to every stream moving again. GiB: the GPU memory in use (every process "
        "on the engine's GPUs) before the requests, once asleep and after every stream ended (p50), and "
        "what the sleep freed (p50 and the least of any cycle). `wrong tok` (level 2): the most tokens "
        "after a wake made by other weights than the set pushed (0 on a correct engine).",
        summary.sleeps(runs), summary.sleep_rows)


def _syncs(runs) -> list[str]:
    table = summary.syncs(runs)
    return _table_section(
        "Weight sync: where the time goes",
        "Per weight_sync cell (times in ms, p50 / p90 / max over its cycles): the pause call; pause "
        "return to the workers' idle answer; the push's start, update and finish calls; the resume "
        "call; resume to the first token; the whole push; and the time with no token produced "
        "(last token before the pause to the first after the resume). `wrong tok`: the most tokens in "
        "one cycle made by other weights than they should (0 on a correct engine); `checked tok`: the "
        "fewest tokens after a resume whose weights were checked; `trainer GiB`: the most GPU memory a "
        "trainer (CUDA IPC, NCCL) held after a push, its weight sets included where they live on the GPU (growth "
        "from push to push is a leak).", table, summary.sync_rows) + (_sync_check(table) if len(table) else [])


def _sync_check(table) -> list[str]:
    """vLLM's own timing of the push beside the suite's, where its server recorded it."""
    header, body = summary.sync_check_rows(table)
    if not body:
        return []
    return ["", "vLLM's server times the same calls itself (its histogram "
            "`vllm:rl_weight_update_operation_duration_seconds`, read before and after each cycle); the "
            "suite's figure adds the HTTP round trip and the client's side, so it should sit a little "
            "above vLLM's, never below:", "",
            summary.markdown(table, summary.sync_check_rows)]


def _ranks(runs) -> list[str]:
    table = summary.ranks(runs)
    if not len(table):
        return []
    return ["### Data parallel: the slowest rank and server", "",
            "Per cell with several ranks or servers (times in ms, p50 / p90 / max over its pauses): the "
            "worst rank's quiesce and first token after resume, which rank was slowest to resume how often, "
            "and with several servers the slowest server's pause call minus the fastest's.", "",
            summary.ranks_markdown(table)]


def _stalls(runs) -> list[str]:
    found = summary.stalls(runs)
    lines = ["### Stalls", ""]
    if not len(found):
        return lines + ["None: no measured pause was far beyond the other pauses of its cell.", ""]
    names = [m.removesuffix("_s").replace("_", " ") for m in summary.STALL_METRICS]
    lines += ["Every stalled pause, one row each (times in ms): its run, its engine and its number "
              "in that engine's order (the first after start, the warm-up, is pause 1), and each "
              "metric beside the p50 of the other measured pauses of its cell in its run (in brackets); "
              "the stalled metric in bold.", "",
              "| run | engine | pause | backend | mode | cache | " + " | ".join(names) + " | preemptions |",
              "|" + "---|" * (7 + len(names))]
    stalled = found[[f"{m}_stall" for m in summary.STALL_METRICS]].to_numpy()
    worst_first = found[summary.STALL_METRICS].where(stalled).max(axis=1).sort_values(ascending=False).index
    for _, r in found.loc[worst_first].iterrows():
        cells = []
        for m in summary.STALL_METRICS:
            text = f"{summary.fmt_ms(r[m])} ({summary.fmt_ms(r[m + '_ref'])})"
            cells.append(f"**{text}**" if r[m + "_stall"] else text)
        lines.append(f"| {r['run']} | {r['engine']} | {r['pause']} | {r['backend']} | {r['mode']} | "
                     f"{'clear' if r['clear_cache'] else 'keep'} | " + " | ".join(cells) + f" | {r['preemptions']:g} |")
    return lines + [""]


def _first_pauses(runs) -> list[str]:
    first = summary.first_pauses(runs)
    if not len(first):
        return []
    lines = ["### First pause after each engine start", "",
             "The warm-up pause of each engine (times in ms), beside the p50 of the measured pauses of "
             "the same cell: a trainer pays this one too, once per engine start.", "",
             "| run | engine | backend | mode | cache | " + " | ".join(
                 f"{m.removesuffix('_s').replace('_', ' ')} (cell p50)" for m in summary.STALL_METRICS) + " |",
             "|" + "---|" * (5 + len(summary.STALL_METRICS))]
    for _, r in first.iterrows():
        values = " | ".join(f"{summary.fmt_ms(r[m])} ({summary.fmt_ms(r[m + '_cell_p50'])})"
                            for m in summary.STALL_METRICS)
        lines.append(f"| {r['run']} | {r['engine']} | {r['backend']} | {r['mode']} | "
                     f"{'clear' if r['clear_cache'] else 'keep'} | {values} |")
    return lines + [""]



def _answers(root: Path, out: Path) -> list[str]:
    return ["## Answers", "",
            "What users come for, computed by `bench-pause report --answers` from the newest committed runs "
            "that answer each question (p50 / p90 / max over the measured pauses; the first pause after "
            "each engine start is reported on its own). A stall is a pause over "
            f"{summary.STALL_FACTOR:g} x the p50 of the other pauses of its cell in its run and over "
            f"{summary.STALL_MIN_S * 1e3:g} ms beyond it.", "",
            answers_mod.markdown(answers_mod.answer_all(root), out, root)]


def write(dirs: list[Path], out: Path, title: str = "bench-pause results", include: Path | None = None,
          answers: Path | None = None, name: str = "index.md") -> Path:
    """Write out/index.md and its figures under out/figures/, one section per setup
    (device, vLLM version, model, CUDA graphs or eager); with ``answers`` (the results
    directory), the table of answers first."""
    out = Path(out)
    lines = [f"# {title}", ""]
    if answers is not None:
        lines += _answers(Path(answers), out)
    lines += ["Generated by `bench-pause report` from the run directories named below; "
              "every figure and table is reproducible from them without an engine.", ""]
    if include is not None:  # its {{...}} numbers computed from the runs (bench_pause.quote)
        lines += [quote.fill(Path(include).read_text().strip(), Path(answers or "results")), ""]
    for setup, setup_dirs in _setup_groups(dirs).items():
        lines += _section(setup, setup_dirs, out)
    if (out / "asv" / "index.html").exists():
        lines += ["## asv", "", "The asv site (`bench-pause asv-publish`) is at [asv/index.html](asv/index.html). It "
                  "carries its own JavaScript and CSS, so it works without the internet.", ""]
        if (out / ASV_SCREENSHOT).exists():
            lines += ["A graph page of it, as headless Chromium without a network shows it "
                      f"(`tools/asv-screenshot.py`, page `{ASV_SCREENSHOT_PAGE}`: the pause call's "
                      "median per model, mode and clear_cache):", "",
                      f"![a graph page of the asv site]({ASV_SCREENSHOT})", ""]
    out.mkdir(parents=True, exist_ok=True)
    index = out / name
    index.write_text("\n".join(lines) + "\n")
    return index
