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

    @property
    def point(self) -> PausePoint:
        return PausePoint.parse(self.pause_point)

    @property
    def engine_key(self) -> tuple[str, int]:
        """Scenarios with the same key run on one engine."""
        return (self.backend, self.dp_size)

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
            f"{'' if self.clear_cache else ' keepcache'} #{self.repeat}"
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
    repeats: int = 3

    def scenarios(self) -> list[Scenario]:
        """Every combination, validated; raises ScenarioError on the first bad one."""
        if self.repeats < 1:
            raise ScenarioError(f"repeats must be >= 1, got {self.repeats}")
        combos = itertools.product(
            self.backends, self.dp_sizes, self.modes, self.pause_points, self.max_tokens,
            self.concurrency, self.holds, self.clear_cache, range(self.repeats),
        )
        return [Scenario(*combo) for combo in combos]


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
