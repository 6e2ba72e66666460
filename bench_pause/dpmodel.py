"""What a pause costs at data parallel N: a model built from parts that can be measured on
one or two GPUs (issue 33). Pure arithmetic, closed form, no I/O.

Why a model: the suite reaches dp 2 on GPUs and dp 4 on a CPU, RL deployments run MoE
models at dp 8-64. A dp 32 pause is made of parts each measured here: the pause's own cost
at dp 1, the decode step, the dummy forward the frozen ranks run, the ranks' all-reduce and
where in vLLM's sync window the pause lands. :mod:`bench_pause.dpinputs` reads every part
from a committed run and checks the model wherever a measurement exists.

The mechanism (vLLM ``v1/engine/core.py``, ``DPEngineCoreProc``): a MoE model's DP ranks
step in lockstep and agree on their state in an all-reduce only every ``interval`` steps of a
wave (0.26.0: 32, a constant; about 0.30 on ``--dp-sync-interval``, default 16, plus the
wave's first step, #52957). A pause marks each rank pending; the ranks keep stepping (dummy
forwards once the requests are frozen) and stop at the next all-reduce. A dense model's
ranks are independent engines: each pauses on its own, the client waits for the slowest.

Equations, for N ranks (``coordinated`` = MoE):

    slowest(x, N)  = x (1 + spread (N - 1) / (N + 1))       the slowest of N ranks whose
                     times spread uniformly +-spread around x (the mean of the largest of N)
    allreduce(N)   = 2 (N - 1) hop                          gloo's ring on a CPU tensor; hop
                     is host_hop_s within a node, net_hop_s once the ranks span nodes
    pause          = pause_s + r slowest(dummy_s, N) + allreduce(N)   (coordinated)
                   = slowest(pause_s, N)                               (dense)
    r              = dummy forwards to the next all-reduce: interval - (k mod interval) after
                     the wave's k-th step, or, in a wave the pause itself begins (an idle
                     engine), interval (0.26.0) or 1 (first-step sync); uniform landing:
                     r ~ U(0, interval)
    resume_all     = resume_s + slowest(step_s, N) - step_s     the first step waits for the
                     slowest rank (a barrier)
    gpu_idle       = pause - quiesce_s + resume_all             no token made, hold aside
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Release:
    """How a vLLM release syncs its DP ranks."""

    name: str
    interval: int  # steps between the ranks' state all-reduces
    first_step_sync: bool  # the wave's first step syncs too (#52957): an idle pause runs 1 dummy forward


V0_26 = Release("vLLM 0.26.0 (window of 32)", 32, False)
NEWER = Release("vLLM >= ~0.30 (--dp-sync-interval 16, first-step sync)", 16, True)
RELEASES = (V0_26, NEWER)


def release_of(version: str) -> Release:
    """The sync behaviour of a vLLM version: read from 0.26.0's source (32, a constant) and
    0.32.0's (``dp_sync_interval`` 16, step 1 synced); FACTS.md dates the knob to about 0.30."""
    major, minor = (int(p) for p in version.split(".")[:2])
    return V0_26 if (major, minor) < (0, 30) else NEWER


@dataclass(frozen=True)
class Interconnect:
    """The all-reduce's per-message latency. vLLM runs the DP state all-reduce with gloo on a
    CPU tensor, so within a node it travels loopback TCP, not NVLink; across nodes the host
    network. NVLink and the network carry the MoE forward's own collectives, which are inside
    the measured step and dummy forward."""

    host_hop_s: float
    net_hop_s: float
    ranks_per_node: int = 8


def allreduce_s(n: int, net: Interconnect) -> float:
    """A ring all-reduce of a 2-element tensor: 2 (N - 1) latency-bound steps, each as slow
    as its slowest hop."""
    hop = net.net_hop_s if n > net.ranks_per_node else net.host_hop_s
    return 2 * (n - 1) * hop


def slowest(x: float, spread: float, n: int) -> float:
    """The expected largest of N times drawn uniformly from x (1 +- spread): what the slowest
    of N ranks takes, exactly x at N = 1."""
    return x * (1 + spread * (n - 1) / (n + 1))


def dummy_steps(k: int, release: Release) -> int:
    """Dummy forwards run after the wave's ``k``-th step until the all-reduce that stops the
    ranks; ``k`` = 0 is a wave the pause itself begins (an idle engine)."""
    if k == 0:
        return 1 if release.first_step_sync else release.interval
    return -k % release.interval


@dataclass(frozen=True)
class Parts:
    """A model's measured parts (seconds) for one pause cell."""

    step_s: float  # decode step per rank at the load (itl_median_s)
    dummy_s: float  # one dummy forward of a frozen rank
    spread: float  # per-rank step times spread uniformly +-spread (relative)
    pause_s: float  # the pause call at dp 1: its RPC, vLLM's 20 ms sleep, the step in flight
    resume_s: float  # resume call to every stream's next token at dp 1
    quiesce_s: float  # pause call to the engine's last token at dp 1
    coordinated: bool  # MoE: ranks pause together at the all-reduce


@dataclass(frozen=True)
class Quantiles:
    p50: float
    p90: float
    max: float


@dataclass(frozen=True)
class Prediction:
    pause: Quantiles
    resume_all: Quantiles
    gpu_idle: Quantiles


def _pause(parts: Parts, r: float, n: int, net: Interconnect) -> float:
    if not parts.coordinated:
        return slowest(parts.pause_s, parts.spread, n)
    return parts.pause_s + r * slowest(parts.dummy_s, parts.spread, n) + allreduce_s(n, net)


def predict(parts: Parts, n: int, release: Release, net: Interconnect, landing: int | None) -> Prediction:
    """The pause, resume and GPU idle time at ``n`` ranks. ``landing``: the wave's step count
    when the pause stops the requests (every pause at the same point, as in the suite's runs;
    0 for an idle engine), or None for a pause landing uniformly in the window."""
    if n < 1:
        raise ValueError(f"dp size {n}: must be at least 1")
    if landing is None:
        rs = (0.5 * release.interval, 0.9 * release.interval, float(release.interval))
    else:
        rs = (float(dummy_steps(landing, release)),) * 3
    pause = Quantiles(*(_pause(parts, r, n, net) for r in rs))
    resume = parts.resume_s + slowest(parts.step_s, parts.spread, n) - parts.step_s
    return Prediction(pause, Quantiles(resume, resume, resume),
                      Quantiles(*(p - parts.quiesce_s + resume for p in (pause.p50, pause.p90, pause.max))))


def scaled(parts: Parts, factor: float) -> Parts:
    """``parts`` of a model whose step and dummy forward take ``factor`` times as long (the
    whole depth of a model measured as a cut of its layers). The pause, its quiesce and the
    resume each wait for about one step in flight, so they grow by the step's growth; their
    RPCs and vLLM's 20 ms sleep do not."""
    more = parts.step_s * (factor - 1)
    return replace(parts, step_s=parts.step_s * factor, dummy_s=parts.dummy_s * factor,
                   pause_s=parts.pause_s + more, resume_s=parts.resume_s + more, quiesce_s=parts.quiesce_s + more)
