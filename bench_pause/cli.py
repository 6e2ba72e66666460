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
from pathlib import Path

from bench_pause.profiles import PROFILES
from bench_pause.scenario import BACKENDS, CYCLES, MODES, ScenarioError

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
                   help="what is done around the pause: the normal cycle or an edge cycle (README)")
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
    c = sub.add_parser("recompute", help="recompute the metrics of run directories from their traces")
    c.add_argument("run_dirs", nargs="+", type=Path)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="regressions between runs (e.g. two vLLM versions); exit 1 if any")
    p.add_argument("base", type=Path)
    p.add_argument("new", nargs="+", type=Path, help="one or more runs, each compared with BASE")
    p.add_argument("--factor", type=float, default=1.10, help="slowdown ratio that counts (default 1.10)")
    p.add_argument("--alpha", type=float, default=0.01, help="Mann-Whitney U significance level")
    p.add_argument("--min-delta-ms", type=float, default=1.0, help="ignore slowdowns smaller than this")
    p.add_argument("--md", type=Path, help="also write the comparison as Markdown")
    p.add_argument("--plot", type=Path, help="also plot each headline metric against vLLM version")


START = """start with:
  bench-pause run --profile auto                 measure the host's default grid and model
  bench-pause run --model qwen3-30b-a3b --backend offline http --mode keep --repeats 5
  bench-pause report results/RUN --out docs/     figures and tables from run directories
  bench-pause compare results/OLD results/NEW    regressions between two runs (exit 1 if any)
'bench-pause run --help' lists every axis and the model presets."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench-pause", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 epilog=START, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_make_model(sub)
    _add_plot_report(sub)
    _add_compare(sub)
    return ap


def _grid(args: argparse.Namespace):
    from bench_pause import profiles, vllm_compat
    from bench_pause.scenario import Grid
    # Without a profile, axes not given take Grid's defaults: offline, dp 1, every mode, tokens:5.
    name = profiles.resolve(args.profile, vllm_compat.on_gpu()) if args.profile else None
    args.profile = name
    base = profiles.get(name) if name else Grid()
    clear = [v == "true" for v in args.clear_cache] if args.clear_cache else None
    return profiles.with_overrides(
        base, backends=args.backends, dp_sizes=args.dp_sizes, modes=args.modes,
        pause_points=args.pause_points, max_tokens=args.max_tokens, concurrency=args.concurrency,
        holds=args.holds, clear_cache=clear, arrivals=args.arrivals, cycles=args.cycles, repeats=args.repeats)


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
        seed=args.seed, resume=args.resume, fail_fast=args.fail_fast, profile=args.profile,
        timeouts=Timeouts(startup=args.startup_timeout, pause=args.pause_timeout,
                          resume=args.pause_timeout, stream=args.stream_timeout))
    progress = RichProgress()
    plan = sweep.plan(cfg, say=progress.say)
    if cfg.urls:
        asyncio.run(_check_urls(cfg))
    for line in plan.skipped:
        progress.say(line)
    code = _run_async(sweep.run(plan, progress), progress)
    if (out / results.RUNS).exists():
        runs = results.load(out)[0]
        summary.print_table(summary.cells(runs), f"p50 / p90 / max per scenario ({out})")
        not_ok = int((~results.measured(runs)["ok"].astype(bool)).sum())
        if not_ok:
            progress.say(f"[red]{not_ok} measured pause(s) broke their mode's contract or failed: "
                         "see runs.parquet[/red]")
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


def _run_async(coro, progress) -> int:
    """Run the sweep; SIGTERM and Ctrl-C cancel it so every session closes first."""
    got = {}

    async def main() -> object:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: (got.setdefault("sig", EXIT_TERM), task.cancel()))
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        outcome = asyncio.run(main())
    except KeyboardInterrupt:
        progress.stop()
        progress.say("interrupted: measurements so far are on disk; continue with --resume")
        return EXIT_INT
    except asyncio.CancelledError:
        progress.stop()
        progress.say("terminated: measurements so far are on disk; continue with --resume")
        return got.get("sig", EXIT_INT)
    progress.stop()
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


def _check_run_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        if not (d / "runs.parquet").exists():
            raise ScenarioError(f"{d} is not a bench-pause run directory (no runs.parquet)")


def cmd_plot(args: argparse.Namespace) -> int:
    from bench_pause import plots
    _check_run_dirs(args.run_dirs)
    for name, paths in plots.plot_all(args.run_dirs, args.out).items():
        print(f"{name}: {' '.join(map(str, paths))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench_pause import report
    _check_run_dirs(args.run_dirs)
    print(f"wrote {report.write(args.run_dirs, args.out, title=args.title, include=args.include)}")
    return 0


def cmd_recompute(args: argparse.Namespace) -> int:
    from bench_pause import results
    _check_run_dirs(args.run_dirs)
    for d in args.run_dirs:
        print(f"{d}: {results.recompute(d)} measurements recomputed")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench_pause import compare, plots
    _check_run_dirs([args.base, *args.new])
    th = compare.Thresholds(factor=args.factor, alpha=args.alpha, min_delta_s=args.min_delta_ms / 1e3)
    comparisons = [compare.compare(args.base, new, th) for new in args.new]
    for c in comparisons:
        compare.print_terminal(c, th)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("".join(compare.markdown(c, th) for c in comparisons))
        print(f"wrote {args.md}")
    if args.plot:
        print("wrote " + " ".join(map(str, plots.plot_versions([args.base, *args.new], args.plot))))
    regressed = [c.new for c in comparisons if c.regressed]
    if regressed:
        print(f"regressions or contract changes in: {', '.join(regressed)}")
        return EXIT_FAILED
    print("no regression")
    return 0


COMMANDS = {"run": cmd_run, "make-model": cmd_make_model, "plot": cmd_plot, "report": cmd_report,
            "recompute": cmd_recompute, "compare": cmd_compare}


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
