"""Progress for long work: per-artifact and total bytes, behind a small interface.

Library code reports through ``Progress``; the CLI decides whether people see bars (a terminal,
not --json or --quiet) or nothing. Thread-safe: fetchers report from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # rich is imported when bars are drawn: quiet runs start faster without it
    from rich.console import Console
    from rich.progress import TaskID


class Task(Protocol):
    def advance(self, count: int) -> None: ...


class Progress(Protocol):
    def task(self, label: str, total: int | None) -> Task: ...
    def finish(self, task: Task) -> None: ...
    def note(self, message: str) -> None: ...


class _NullTask:
    def advance(self, count: int) -> None:
        pass


class NullProgress:
    """Reports nothing; for --json, --quiet, tests and library use."""

    def task(self, label: str, total: int | None) -> Task:
        return _NullTask()

    def finish(self, task: Task) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class _BarTask:
    def __init__(self, bars: BarProgress, task_id: TaskID) -> None:
        self._bars = bars
        self.task_id = task_id

    def advance(self, count: int) -> None:
        self._bars.advance(self.task_id, count)


class BarProgress:
    """rich bars: one per artifact in flight, and a total."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._rich = RichProgress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._lock = threading.Lock()
        # Shown once there is something to count (a rebuild from cache has nothing).
        self._total = self._rich.add_task("total", total=0, visible=False)

    def task(self, label: str, total: int | None) -> Task:
        with self._lock:
            task_id = self._rich.add_task(f"  {label}", total=total)
            grand = self._rich.tasks[self._total].total or 0
            self._rich.update(self._total, total=grand + (total or 0), visible=True)
            return _BarTask(self, task_id)

    def advance(self, task_id: TaskID, count: int) -> None:
        with self._lock:
            self._rich.advance(task_id, count)
            self._rich.advance(self._total, count)

    def finish(self, task: Task) -> None:
        if isinstance(task, _BarTask):
            with self._lock:
                self._rich.remove_task(task.task_id)

    def note(self, message: str) -> None:
        self._rich.console.print(message, markup=False, highlight=False)

    @contextmanager
    def running(self) -> Iterator[BarProgress]:
        with self._rich:
            yield self
