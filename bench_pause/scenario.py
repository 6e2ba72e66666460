"""What one measured pause is: the scenario, its pause point, and the grid of scenarios.

A scenario is everything that decides how a single pause is provoked. Engine-level axes
(backend, dp_size, model) decide which engine serves it; the rest is varied on one
running engine, so the grid is grouped by :attr:`Scenario.engine_key`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

MODES = ("keep", "abort", "wait")
BACKENDS = ("offline", "http")
# What is done around the pause. ``pause``: the normal cycle (pause, hold, resume). The
# others are the edge cycles that have deadlocked DP engines upstream: ``idle`` pauses and
# resumes an engine with nothing running (the requests are sent after the resume, to show
# it still serves); ``double_resume`` calls resume a second time while not paused;
# ``double_pause`` calls pause again while the first pause call is still in progress.
# (Back to back with no hold is the hold axis at 0.) ``weight_sync`` is what an RL trainer
# does: pause, push a full set of new weights through vLLM's weight-transfer API, resume
# (bench_pause.weight_sync); the hold is then the least time paused. ``sleep`` is what a
# colocated trainer does instead: ``AsyncLLM.sleep(level, mode)`` in place of the pause (the
# pause mode is the sleep's mode), the hold, then ``wake_up`` in place of the resume.
CYCLES = ("pause", "idle", "double_resume", "double_pause", "weight_sync", "sleep")
# vLLM's sleep levels: 0 stops scheduling only; 1 also offloads the weights to host memory
# and drops the KV cache; 2 drops both (the weights must be pushed again). A sleep at level
# 1 or 2 clears the prefix cache itself, level 0 does not: a sleep cell's clear_cache is that.
SLEEP_LEVELS = (0, 1, 2)
# How the engine is woken: ``all`` in one wake_up call; ``split``: the weights first, then
# the KV cache (verl's order: a trainer pushes weights between the two). Only ``all`` at
# level 0, which has nothing to bring back; only ``split`` at level 2, whose weights must be
# pushed again before the engine resumes (the cycle pushes the weight_sync cycle's next set).
WAKES = ("all", "split")


def pushes(cycle: str, sleep_level: int) -> bool:
    """Whether a cycle pushes a weight set (bench_pause.weight_sync) and checks it with one
    more request: the weight_sync cycle, and a level-2 sleep between its wakes."""
    return cycle == "weight_sync" or (cycle == "sleep" and sleep_level == 2)


class ScenarioError(ValueError):
    """Bad input, reported as one line before any engine starts."""


@dataclass(frozen=True)
class PausePoint:
    """When the pause is called, relative to the first request of the scenario.

    ``prefill``: right after submission, before the first token;
    ``tokens:N``: right after the first request's N-th token arrived;
    ``frac:F``: after ceil(F x max_tokens) tokens.
    """

    kind: str
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "PausePoint":
        text = text.strip()
        if text == "prefill":
            return cls("prefill")
        kind, sep, raw = text.partition(":")
        if sep and kind in ("tokens", "frac"):
            try:
                value = int(raw) if kind == "tokens" else float(raw)
            except ValueError:
                value = None
            if kind == "tokens" and value is not None and value >= 1:
                return cls("tokens", value)
            if kind == "frac" and value is not None and 0.0 < value < 1.0:
                return cls("frac", value)
        raise ScenarioError(
            f"bad pause point {text!r}: use 'prefill', 'tokens:N' (N >= 1) or 'frac:F' (0 < F < 1)"
        )

    def tokens_before(self, max_tokens: int) -> int:
        """How many tokens the first request has when the pause is called."""
        if self.kind == "prefill":
            return 0
        if self.kind == "tokens":
            return int(self.value)
        return max(1, math.ceil(self.value * max_tokens))

    def __str__(self) -> str:
        if self.kind == "prefill":
            return "prefill"
        if self.kind == "tokens":
            return f"tokens:{int(self.value)}"
        return f"frac:{self.value:g}"


@dataclass(frozen=True)
class Scenario:
    """One cell of the grid plus its repeat index; the unit a trace is recorded for."""

    backend: str
    dp_size: int
    mode: str
    pause_point: str
    max_tokens: int
    concurrency: int
    hold_s: float
    clear_cache: bool
    arrivals: int = 0
    cycle: str = "pause"
    servers: int = 1
    sleep_level: int = 0  # the sleep cycle's level (SLEEP_LEVELS); 0 in every other cycle
    wake: str = "all"  # and how it wakes (WAKES)
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ScenarioError(f"unknown backend {self.backend!r}: choose from {', '.join(BACKENDS)}")
        if self.mode not in MODES:
            raise ScenarioError(f"unknown pause mode {self.mode!r}: choose from {', '.join(MODES)}")
        point = PausePoint.parse(self.pause_point)
        if self.max_tokens < 1:
            raise ScenarioError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if point.tokens_before(self.max_tokens) >= self.max_tokens:
            raise ScenarioError(
                f"pause point {self.pause_point} is not before the end of a {self.max_tokens}-token "
                "request: raise --max-tokens or pause earlier"
            )
        if self.concurrency < 1:
            raise ScenarioError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.dp_size < 1:
            raise ScenarioError(f"dp size must be >= 1, got {self.dp_size}")
        if not (self.hold_s >= 0):
            raise ScenarioError(f"hold must be >= 0 seconds, got {self.hold_s}")
        if self.arrivals < 0:
            raise ScenarioError(f"arrivals during the pause must be >= 0, got {self.arrivals}")
        if self.cycle not in CYCLES:
            raise ScenarioError(f"unknown cycle {self.cycle!r}: choose from {', '.join(CYCLES)}")
        if self.servers < 1 or (self.servers > 1 and self.backend != "http"):
            raise ScenarioError(f"servers must be 1, or more with the http backend; got {self.servers}")
        if self.cycle == "weight_sync" and self.servers > 1:
            raise ScenarioError("the weight_sync cycle pushes weights into one server: use --servers 1")
        if self.sleep_level not in SLEEP_LEVELS:
            raise ScenarioError(f"unknown sleep level {self.sleep_level}: choose from "
                                f"{', '.join(map(str, SLEEP_LEVELS))}")
        if self.wake not in WAKES:
            raise ScenarioError(f"unknown wake {self.wake!r}: choose from {', '.join(WAKES)}")
        if self.cycle != "sleep" and (self.sleep_level, self.wake) != (0, "all"):
            raise ScenarioError("--sleep-level and --wake belong to the sleep cycle: add --cycle sleep")
        if self.cycle == "sleep":
            if self.servers > 1:
                raise ScenarioError("the sleep cycle puts one server to sleep: use one --url")
            if self.wake == "split" and self.sleep_level == 0:
                raise ScenarioError("a level-0 sleep has nothing to wake in parts: use --wake all")
            if self.wake == "all" and self.sleep_level == 2:
                raise ScenarioError("a level-2 sleep drops the weights: they are pushed between a split wake's "
                                    "two calls, use --wake split")
            if self.clear_cache != (self.sleep_level >= 1):
                raise ScenarioError(f"a level-{self.sleep_level} sleep {'clears' if self.sleep_level else 'keeps'} "
                                    "the prefix cache itself: its clear_cache is that")

    @property
    def pushes(self) -> bool:
        return pushes(self.cycle, self.sleep_level)

    @property
    def point(self) -> PausePoint:
        return PausePoint.parse(self.pause_point)

    @property
    def engine_key(self) -> tuple[str, int]:
        """Scenarios with the same key run on one engine (or one set of servers)."""
        return (self.backend, self.dp_size)

    def route(self, request: int) -> tuple[int, int]:
        """(server, data-parallel rank) that request ``request`` is sent to: round robin
        over the servers, then over each server's ranks, so every rank gets requests."""
        return route(request, self.servers, self.dp_size)

    @property
    def cell_key(self) -> tuple:
        """The scenario without its repeat index: what repeats are grouped by."""
        return tuple(v for k, v in self.as_dict().items() if k != "repeat")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def label(self) -> str:
        return (
            f"{self.backend} dp{self.dp_size} {self.mode} @{self.pause_point} "
            f"max{self.max_tokens} c{self.concurrency} hold{self.hold_s:g}"
            f"{'' if self.clear_cache else ' keepcache'}{f' +{self.arrivals}' if self.arrivals else ''}"
            f"{'' if self.cycle == 'pause' else ' ' + self.cycle}"
            f"{f' L{self.sleep_level} wake-{self.wake}' if self.cycle == 'sleep' else ''}"
            f"{f' x{self.servers} servers' if self.servers > 1 else ''} #{self.repeat}"
        )


@dataclass(frozen=True)
class Grid:
    """The list-valued options of a sweep; :meth:`scenarios` expands them."""

    backends: Sequence[str] = ("offline",)
    dp_sizes: Sequence[int] = (1,)
    modes: Sequence[str] = MODES
    pause_points: Sequence[str] = ("tokens:5",)
    max_tokens: Sequence[int] = (64,)
    concurrency: Sequence[int] = (1,)
    holds: Sequence[float] = (0.5,)
    clear_cache: Sequence[bool] = (True,)
    arrivals: Sequence[int] = (0,)
    cycles: Sequence[str] = ("pause",)
    sleep_levels: Sequence[int] = (0, 1)  # the sleep cycle's axes; other cycles ignore them
    wakes: Sequence[str] = WAKES
    repeats: int = 3
    # Further grids measured on the same engines: cells that are not a product of this
    # grid's axes (the edge cycles at hold 0 beside the normal cycle, say) without paying
    # another engine start for them.
    also: Sequence["Grid"] = ()

    def scenarios(self) -> list[Scenario]:
        """Every combination, validated; raises ScenarioError on the first bad one.

        When the grid has both clear_cache values, ``wait`` runs only with True: a wait
        pause drains the running requests before the cache is cleared, so False changes
        nothing but what the prefix cache still holds. Asked for alone, it still runs.
        """
        if self.repeats < 1:
            raise ScenarioError(f"repeats must be >= 1, got {self.repeats}")
        combos = itertools.product(
            self.backends, self.dp_sizes, self.modes, self.pause_points, self.max_tokens,
            self.concurrency, self.holds, self.clear_cache, self.arrivals, self.cycles, range(self.repeats),
        )
        both = len(set(self.clear_cache)) > 1
        own: list[Scenario] = []
        seen: set[Scenario] = set()
        for combo in combos:
            if both and combo[2] == "wait" and not combo[7]:
                continue
            for sleep in self._sleeps(combo[9]):
                # A sleep sets its own clear_cache (SLEEP_LEVELS): the axis' values collapse to it.
                sc = Scenario(*combo[:7], sleep["clear_cache"] if sleep else combo[7], *combo[8:10],
                              **{k: v for k, v in sleep.items() if k != "clear_cache"}, repeat=combo[10])
                if sc not in seen:
                    seen.add(sc)
                    own.append(sc)
        return own + [sc for grid in self.also for sc in grid.scenarios() if sc not in seen]

    def _sleeps(self, cycle: str) -> list[dict]:
        """The sleep axes one cycle is measured at: [{}] outside the sleep cycle."""
        if cycle != "sleep":
            return [{}]
        return [{"sleep_level": level, "wake": wake, "clear_cache": level >= 1}
                for level in self.sleep_levels for wake in self.wakes
                if (level or wake == "all") and (level < 2 or wake == "split")]


def route(request: int, servers: int, dp_size: int) -> tuple[int, int]:
    """Where request ``request`` goes: server ``request % servers``, and within it rank
    ``(request // servers) % dp_size``. Metrics read the same routing back."""
    return request % servers, (request // servers) % dp_size


def group_by_engine(scenarios: Iterable[Scenario], seed: int) -> dict[tuple[str, int], list[Scenario]]:
    """Group scenarios per engine and shuffle each group with a seeded RNG.

    A randomized order keeps slow drift (thermal, caches, fragmentation) from looking
    like the effect of whichever axis happens to be swept last.
    """
    groups: dict[tuple[str, int], list[Scenario]] = {}
    for sc in scenarios:
        groups.setdefault(sc.engine_key, []).append(sc)
    rng = random.Random(seed)
    for cells in groups.values():
        rng.shuffle(cells)
    return groups
