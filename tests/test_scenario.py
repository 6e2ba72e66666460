"""Scenario parsing and validation: bad input is caught before any engine starts."""

import pytest

from bench_pause import profiles
from bench_pause.scenario import CYCLES, Grid, PausePoint, Scenario, ScenarioError, group_by_engine


@pytest.mark.parametrize("text,before", [("prefill", 0), ("tokens:5", 5), ("frac:0.5", 32), ("frac:0.01", 1)])
def test_pause_points(text, before):
    assert PausePoint.parse(text).tokens_before(64) == before
    assert str(PausePoint.parse(text)) == text


@pytest.mark.parametrize("text", ["", "tokens", "tokens:0", "tokens:x", "frac:1.5", "frac:0", "decode", "at:3"])
def test_bad_pause_points(text):
    with pytest.raises(ScenarioError, match="bad pause point"):
        PausePoint.parse(text)


@pytest.mark.parametrize("field,value,message", [
    ("mode", "freeze", "unknown pause mode"),
    ("backend", "grpc", "unknown backend"),
    ("max_tokens", 4, "not before the end"),
    ("concurrency", 0, "concurrency"),
    ("hold_s", -1.0, "hold"),
])
def test_bad_scenarios(field, value, message):
    args = dict(backend="offline", dp_size=1, mode="keep", pause_point="tokens:5", max_tokens=64,
                concurrency=1, hold_s=0.5, clear_cache=True)
    args[field] = value
    with pytest.raises(ScenarioError, match=message):
        Scenario(**args)


def test_grid_expands_every_combination_and_groups_per_engine():
    grid = Grid(backends=("offline", "http"), dp_sizes=(1, 2), modes=("keep", "abort"), repeats=3)
    scenarios = grid.scenarios()
    assert len(scenarios) == 2 * 2 * 2 * 3
    groups = group_by_engine(scenarios, seed=0)
    assert set(groups) == {("offline", 1), ("offline", 2), ("http", 1), ("http", 2)}
    assert all(len(cells) == 6 for cells in groups.values())
    # Seeded: the same order every time, and not the grid's order.
    again = group_by_engine(scenarios, seed=0)
    assert groups == again
    in_grid_order = [s for s in scenarios if s.engine_key == ("offline", 1)]
    assert groups[("offline", 1)] != in_grid_order
    assert sorted(groups[("offline", 1)], key=in_grid_order.index) == in_grid_order


def test_profiles_are_valid_grids():
    for name, grid in profiles.PROFILES.items():
        assert grid.scenarios(), name
    with pytest.raises(ScenarioError, match="unknown profile"):
        profiles.get("huge")


def test_overrides_replace_only_given_axes():
    grid = profiles.with_overrides(profiles.get("quick"), modes=["keep"], repeats=None)
    assert grid.modes == ["keep"]
    assert grid.repeats == profiles.get("quick").repeats


def test_grids_measured_beside_a_grid_share_its_engines():
    grid = profiles.get("dp")
    scenarios = grid.scenarios()
    edge = [sc for sc in scenarios if sc.hold_s == 0.0]
    assert {sc.cycle for sc in edge} == set(CYCLES) and {sc.dp_size for sc in edge} == {2}
    assert len(scenarios) == len(set(scenarios))
    # An option given on the command line applies to the grids beside it too.
    http = profiles.with_overrides(grid, backends=["http"])
    assert {sc.backend for sc in http.scenarios()} == {"http"}


def test_several_servers_only_over_http():
    with pytest.raises(ScenarioError, match="servers"):
        Scenario("offline", 1, "keep", "tokens:5", 64, 1, 0.5, True, servers=2)


def test_the_sleep_axes_expand_only_the_sleep_cycle():
    """Level 0 wakes at once, level 2 only split (its weights are pushed between the calls);
    a sleep's clear_cache is its level's, whatever the axis says; other cycles ignore the axes."""
    grid = Grid(modes=("keep",), cycles=("pause", "sleep"), clear_cache=(True, False), sleep_levels=(0, 1, 2),
                wakes=("all", "split"), repeats=1)
    cells = {(sc.cycle, sc.sleep_level, sc.wake, sc.clear_cache) for sc in grid.scenarios()}
    assert cells == {("pause", 0, "all", True), ("pause", 0, "all", False), ("sleep", 0, "all", False),
                     ("sleep", 1, "all", True), ("sleep", 1, "split", True), ("sleep", 2, "split", True)}
    assert len(grid.scenarios()) == len(cells)


@pytest.mark.parametrize("kwargs, says", [
    ({"cycle": "pause", "sleep_level": 1}, "belong to the sleep cycle"),
    ({"cycle": "sleep", "sleep_level": 3}, "unknown sleep level"),
    ({"cycle": "sleep", "sleep_level": 0, "wake": "split", "clear_cache": False}, "nothing to wake in parts"),
    ({"cycle": "sleep", "sleep_level": 2, "wake": "all"}, "use --wake split"),
    ({"cycle": "sleep", "sleep_level": 1, "clear_cache": False}, "clears the prefix cache itself"),
])
def test_bad_sleep_cells_are_refused(kwargs, says):
    base = {"backend": "offline", "dp_size": 1, "mode": "keep", "pause_point": "tokens:5", "max_tokens": 64,
            "concurrency": 1, "hold_s": 0.5, "clear_cache": True}
    with pytest.raises(ScenarioError, match=says):
        Scenario(**{**base, **kwargs})
