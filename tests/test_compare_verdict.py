"""The per-metric verdict of `compare` on samples built by hand."""

from __future__ import annotations

import numpy as np

from bench_pause import compare


def test_a_rise_from_a_zero_base_can_regress():
    # 0 preemptions (or 0 s quiesce) in every base pause, 20 ms in every new one.
    v = compare._verdict(np.zeros(6), np.full(6, 0.020) + np.arange(6) * 1e-4, compare.Thresholds())
    assert v["ratio"] == np.inf and v["significant"] and v["regression"]


def test_zero_against_zero_is_no_change():
    v = compare._verdict(np.zeros(6), np.zeros(6), compare.Thresholds())
    assert v["ratio"] == 1.0 and not v["regression"]
