#!/usr/bin/env python3
"""Keep each asv machine's newest reading of the release histories, drop the older ones.

`history.History` reads committed history directories; asv files the values under the
bench-pause commit it ran at. Read again at a later commit (after more runs joined the
history), the same history shows as a change between two bench-pause commits, and `asv
publish` lists it as a regression that no comparison finds (issue 31). A history is one
measurement of vLLM releases, not of bench-pause: only its newest reading stays.

    python3 tools/asv-history-newest.py [results/asv]     # then: .venv/bin/bench-pause asv-publish
"""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/asv")
for machine in sorted(p for p in root.iterdir() if p.is_dir()):
    readings = []
    for f in machine.glob("*.json"):
        if f.name == "machine.json":
            continue
        data = json.loads(f.read_text())
        if data["results"] and all(k.startswith("history.") for k in data["results"]):
            readings.append((data["date"], f))
    for _, f in sorted(readings)[:-1]:
        f.unlink()
        print(f"{machine.name}: dropped the older history reading {f.name}")
