"""The live progress bar of a sweep: current cell, cells done/total, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from bench_pause import sweep


class RichProgress(sweep.Progress):
    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console, transient=False)
        self.task = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total)

    def cell(self, label: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=label)

    def advance(self) -> None:
        if self.task is not None:
            self.bar.advance(self.task)

    def say(self, text: str) -> None:
        self.console.print(text)

    def stop(self) -> None:
        self.bar.stop()
