"""The only place that imports ansible_runner: run a playbook, stream its events, keep the
artifacts as the run's own record, and turn a failure into names a person can act on."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner


@dataclass(frozen=True)
class TaskEvent:
    """What a progress view needs from one runner event."""

    kind: str  # play, task, ok, changed, skipped, failed, unreachable
    play: str = ""
    task: str = ""
    host: str = ""
    message: str = ""


@dataclass(frozen=True)
class TaskFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class RunResult:
    status: str
    rc: int
    artifacts: Path
    seconds: float
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> ok/changed/...
    failures: list[TaskFailure] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(host.get(key, 0) for host in self.stats.values())


_RESULT_KIND = {
    "runner_on_ok": "ok",
    "runner_on_skipped": "skipped",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
}
_STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
}


def _message(result: dict[str, Any]) -> str:
    """The module's own words: its message, plus the command's stderr when there is one; for
    a loop, the words of each item that failed."""
    items = [item for item in result.get("results") or [] if isinstance(item, dict)]
    failed = [_message(item) for item in items if item.get("failed")]
    if failed:
        return "; ".join(failed)
    parts = [str(result[key]).strip() for key in ("msg", "reason", "stderr") if result.get(key)]
    return ": ".join(dict.fromkeys(parts)) or "failed without a message (see the run's record)"


class EventHandler:
    """ansible-runner's ``event_handler``: turns each event into a ``TaskEvent`` for the view and
    gathers the per-host stats and the failures a person has to act on."""

    def __init__(self, on_event: Callable[[TaskEvent], None] = lambda _event: None) -> None:
        self.on_event = on_event
        self.failures: list[TaskFailure] = []
        self.stats: dict[str, dict[str, int]] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        name = event.get("event", "")
        data = event.get("event_data", {})
        if name == "playbook_on_play_start":
            self.on_event(TaskEvent("play", play=data.get("play", "")))
        elif name == "playbook_on_task_start":
            self.on_event(TaskEvent("task", play=data.get("play", ""), task=data.get("task", "")))
        elif name in _RESULT_KIND:
            self._result(_RESULT_KIND[name], data)
        elif name == "playbook_on_stats":
            for source, target in _STAT_KEYS.items():
                for host, count in (data.get(source) or {}).items():
                    self.stats.setdefault(host, {})[target] = count
        return True  # keep the event in the run's artifacts

    def _result(self, kind: str, data: dict[str, Any]) -> None:
        result = data.get("res", {}) or {}
        if kind == "ok" and result.get("changed"):
            kind = "changed"
        host, task = data.get("host", ""), data.get("task", "")
        if kind in {"failed", "unreachable"} and not data.get("ignore_errors"):
            self.failures.append(
                TaskFailure(host, task, _message(result), unreachable=kind == "unreachable")
            )
        self.on_event(TaskEvent(kind, data.get("play", ""), task, host))

    def fatal(self) -> list[TaskFailure]:
        """The failure that stopped each host: its last one. Ansible stops a host at its first
        failure nothing rescues, so an earlier one was rescued by a block (whose rescue may
        well end in the failure that explains it); a host that the final stats count no
        failure for was only rescued."""
        last: dict[str, TaskFailure] = {}
        for failure in self.failures:
            last[failure.host] = failure
        return [
            failure
            for host, failure in last.items()
            if failure.unreachable
            or not self.stats
            or self.stats.get(host, {}).get("failed", 0) > 0
        ]


def run_playbook(
    *,
    data_dir: Path,
    project_dir: Path,
    playbook: str,
    inventory: Path,
    extravars: dict[str, Any],
    envvars: dict[str, str],
    on_event: Callable[[TaskEvent], None] = lambda _event: None,
    limit: str | None = None,
    skip_tags: tuple[str, ...] = (),
) -> RunResult:
    """Run ``playbook`` from ``project_dir`` with ansible-runner in ``data_dir``; tasks tagged
    with any of ``skip_tags`` do not run."""
    handler = EventHandler(on_event)
    # The venv appliance runs from holds ansible-playbook; it need not be on PATH (install.sh
    # does not activate the venv).
    bindir = Path(sys.executable).parent
    envvars = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **envvars}
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(data_dir),
        project_dir=str(project_dir),
        playbook=playbook,
        inventory=str(inventory),
        extravars=extravars,
        envvars=envvars,
        event_handler=handler,
        quiet=True,
        limit=limit,
        skip_tags=",".join(skip_tags) or None,
        rotate_artifacts=0,
    )
    return RunResult(
        status=runner.status,
        rc=runner.rc,
        artifacts=Path(runner.config.artifact_dir),
        seconds=time.monotonic() - started,
        stats=handler.stats,
        # Failures inside a block with a rescue are part of the plan, not of the outcome.
        failures=handler.fatal() if runner.rc != 0 else [],
    )
