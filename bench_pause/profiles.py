"""Named grids. The README documents them; asv picks one with BENCH_PAUSE_PROFILE."""

from __future__ import annotations

import dataclasses

from bench_pause.scenario import CYCLES, Grid, ScenarioError

PROFILES: dict[str, Grid] = {
    # A few minutes on a 2-core CPU (CI): every mode, both backends, dp 1 and 2, clear_cache
    # both ways, two requests (one per rank at dp 2). 256 tokens last ~0.4 s on the tiny
    # model: a shorter request can finish before a pause sent by a CPU-starved client lands.
    "quick": Grid(backends=("offline", "http"), dp_sizes=(1, 2), modes=("keep", "abort", "wait"),
                  pause_points=("prefill", "tokens:5"), max_tokens=(256,), concurrency=(2,),
                  holds=(0.5,), clear_cache=(True, False), repeats=2),
    # The grid worth publishing: 180 pauses per backend on one GPU, about 5 minutes on an H100
    # (eager OPT-125m; the 108 with clear_cache=True took 3).
    "default": Grid(backends=("offline", "http"), dp_sizes=(1, 2), modes=("keep", "abort", "wait"),
                    pause_points=("prefill", "tokens:16", "frac:0.5"), max_tokens=(32, 128),
                    concurrency=(1, 8), holds=(0.5,), clear_cache=(True, False), repeats=3),
    # Production shape on one GPU, sized so two presets x both backends fit a half-hour
    # booking: 8 streams x 200 tokens paused at token 50 and held 1 s (the shape of the
    # FACTS.md measurements), every mode, clear_cache both ways, 5 repeats: 25 pauses per
    # engine, plus the first pause after the start (kept as the warm-up and reported).
    "gpu": Grid(backends=("offline", "http"), dp_sizes=(1,), modes=("keep", "abort", "wait"),
                pause_points=("tokens:50",), max_tokens=(200,), concurrency=(8,), holds=(1.0,),
                clear_cache=(True, False), repeats=5),
    # One engine run of an interleaved version comparison on a GPU (`interleave`): the gpu grid
    # held 0.5 s, 3 repeats, 15 pauses per engine. The unit of replication is the engine run,
    # so a comparison buys power with rounds (engine starts), not with repeats.
    "compare": Grid(backends=("offline", "http"), dp_sizes=(1,), modes=("keep", "abort", "wait"),
                    pause_points=("tokens:50",), max_tokens=(200,), concurrency=(8,), holds=(0.5,),
                    clear_cache=(True, False), repeats=3),
    # Data parallelism on two GPUs: the gpu grid at dp 1 and 2, and on the dp 2 engines the
    # edge cycles that deadlocked DP engines upstream (idle, double resume, double pause, and
    # back to back: hold 0), keep and abort, twice each: 41 pauses per dp 2 engine.
    "dp": Grid(backends=("offline", "http"), dp_sizes=(1, 2), modes=("keep", "abort", "wait"),
               pause_points=("tokens:50",), max_tokens=(200,), concurrency=(8,), holds=(1.0,),
               clear_cache=(True, False), repeats=5,
               also=(Grid(backends=("offline", "http"), dp_sizes=(2,), modes=("keep", "abort"),
                          pause_points=("tokens:50",), max_tokens=(200,), concurrency=(8,), holds=(0.0,),
                          clear_cache=(True,), cycles=CYCLES, repeats=2),)),
    # Everything, edge cycles and requests arriving during the pause included: hours on a GPU.
    "full": Grid(backends=("offline", "http"), dp_sizes=(1, 2, 4), modes=("keep", "abort", "wait"),
                 pause_points=("prefill", "tokens:1", "tokens:16", "frac:0.25", "frac:0.5", "frac:0.9"),
                 max_tokens=(32, 128, 512), concurrency=(1, 4, 16, 64), holds=(0.0, 0.1, 1.0),
                 clear_cache=(True, False), arrivals=(0, 4), cycles=CYCLES, repeats=5),
}


def resolve(name: str, gpu: bool) -> str:
    """``auto`` is the grid that suits the host: ``gpu`` on a GPU, ``quick`` on a CPU."""
    return ("gpu" if gpu else "quick") if name == "auto" else name


def get(name: str) -> Grid:
    if name not in PROFILES:
        raise ScenarioError(f"unknown profile {name!r}: choose from {', '.join(PROFILES)}")
    return PROFILES[name]


def with_overrides(grid: Grid, **axes: object) -> Grid:
    """The grid with every axis the user gave on the command line replaced, in the grids
    measured beside it (``also``) too."""
    given = {k: v for k, v in axes.items() if v is not None}
    return dataclasses.replace(grid, **given, also=tuple(with_overrides(g, **given) for g in grid.also))
