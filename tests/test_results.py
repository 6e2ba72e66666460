"""The run directory: appends keep traces in parts, readers merge them, the end of a
sweep folds them into the three tables."""

from __future__ import annotations

import pandas as pd

from bench_pause import results, trace as tr
from bench_pause.scenario import Scenario


def measurement(n_tokens: int) -> tr.Measurement:
    t = tr.Trace()
    for _ in range(n_tokens):
        t.token(0, 1)
    t.event(tr.PAUSE_CALL)
    sc = Scenario("offline", 1, "keep", "tokens:2", 8, 1, 0.1, True)
    return tr.Measurement(sc, t.tokens_frame(), t.events_frame(), {"ok": True, "pause_api_s": 0.03}, False)


def test_appends_write_parts_and_readers_merge_them(tmp_path):
    rd = results.RunDir(tmp_path)
    for n in (3, 5):
        rd.append(measurement(n), {"warmup": False})
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "0000000.events.parquet", "0000000.tokens.parquet", "0000001.events.parquet", "0000001.tokens.parquet"]
    assert not (tmp_path / "tokens.parquet").exists()  # nothing big rewritten per append
    runs, tokens, events, _ = results.load(tmp_path)  # an interrupted sweep reads whole
    assert list(runs["measurement"]) == [0, 1]
    assert tokens.groupby("measurement").size().to_dict() == {0: 3, 1: 5}
    rd.consolidate()
    assert not (tmp_path / "parts").exists()
    assert len(pd.read_parquet(tmp_path / "tokens.parquet")) == 8
    assert len(pd.read_parquet(tmp_path / "events.parquet")) == 2
    more = results.RunDir(tmp_path)  # --resume appends after the consolidated ones
    assert more.append(measurement(2), {"warmup": False}) == 2
    assert results.load(tmp_path)[1].groupby("measurement").size().to_dict() == {0: 3, 1: 5, 2: 2}
