"""Figures and the report, drawn from the committed real-engine fixture run."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd

from bench_pause import plots, report

from .conftest import FIXTURES, bench_pause

RUN = FIXTURES / "cpu-run"
SLEEP_RUN = FIXTURES.parent.parent / "results" / "cpu-v0.32.0-sleep-l0"  # the pause and sleep cycles, real engine


def test_every_figure_is_a_real_image(tmp_path):
    figures = plots.plot_all([RUN], tmp_path)
    # The fixture has dp 1 and 2, both cache settings and warm-ups: every figure but the
    # weight sync's (its own fixture, tests/test_weight_sync.py) has something to draw.
    assert set(figures) == {"timeline", "time_to_pause", "gap", "clear_cache", "stalls", "first_pause", "ranks",
                            "dp_size", "leak", "weight_sync", "sleep"}
    assert figures.pop("weight_sync") == [] and figures.pop("sleep") == []
    for name, (png, svg) in figures.items():
        image = mpimg.imread(png)
        assert image.shape[0] > 300 and image.shape[1] > 500, name
        # Not blank: many distinct colours were drawn.
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, name
        assert svg.read_text().startswith("<?xml"), name
        assert "vLLM 0.32.0" in svg.read_text(), name


def test_a_leak_is_impossible_to_miss(tmp_path):
    data = plots.Runs.load([RUN])
    data.runs.loc[data.runs.index[5], "leak_tokens"] = 3
    png, svg = plots.leak(data, tmp_path)
    assert "LEAK" in svg.read_text()
    clean = plots.leak(plots.Runs.load([RUN]), tmp_path / "clean")[1]
    assert "LEAK" not in clean.read_text()


def test_report_references_every_figure_it_wrote(tmp_path):
    # With the weight_sync fixture and a sleep run beside it (each recorded on its own: their
    # own sections) every figure is drawn somewhere.
    index = report.write([RUN, FIXTURES / "cpu-weight-sync", SLEEP_RUN], tmp_path / "docs")
    text = index.read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    written = {str(p.relative_to(tmp_path / "docs")) for p in (tmp_path / "docs" / "figures").rglob("*.png")}
    assert linked == written and {Path(p).stem for p in written} == set(plots.FIGURES)
    assert "| backend |" in text and "vLLM 0.32.0" in text
    assert "### Data parallel: the slowest rank and server" in text
    assert "### Sleep: what a colocated trainer pays and gains" in text and "sleep L0 wake all" in text


def test_the_sleep_figure_keeps_to_the_engines_that_slept():
    """A section pools every run of its setup; the sleep figure sets a sleep beside the pause
    of the same engine, so another run's pauses stay out of it."""
    alone = plots.sleep_phases(plots.Runs.load([SLEEP_RUN]).measured)
    pooled = plots.sleep_phases(plots.Runs.load([SLEEP_RUN, RUN]).measured)
    assert len(alone) and (alone["cycle"] == "pause").any()
    pd.testing.assert_frame_equal(pooled, alone)
    assert plots.sleep_phases(plots.Runs.load([RUN]).measured).empty


def test_report_command(tmp_path):
    r = bench_pause("report", RUN, "--out", tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "index.md").exists()
    r = bench_pause("plot", tmp_path, "--out", tmp_path, timeout=120)
    assert r.returncode == 2 and "not a bench-pause run directory" in r.stderr


def test_a_report_of_edge_cycles_only_has_no_timeline_and_does_not_fail(tmp_path):
    # The committed dp 2 edge-cycle run (idle, double pause, double resume) has no normal pause.
    edge = Path(__file__).parent.parent / "results" / "cpu-v0.32.0-edge-cycles-dp2"
    text = report.write([edge], tmp_path).read_text()
    assert "cpu-v0.32.0-edge-cycles-dp2" in text and "timeline.png" not in text
