"""The runner's event handling, fed the events one real ansible-runner run produced.

tests/fixtures/runner_events.json holds every event of one run of a tiny playbook (an ok, a
changed, a skipped, an ignored failure, a loop with one failing item, an unreachable host),
recorded by tests/fixtures/record_runner_events.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.runner import EventHandler, RunResult, TaskEvent, TaskFailure

FIXTURE = Path(__file__).parents[2] / "fixtures" / "runner_events.json"


@pytest.fixture(scope="module")
def recorded() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["events"]
    return events


def replay(events: list[dict[str, Any]]) -> tuple[EventHandler, list[TaskEvent]]:
    seen: list[TaskEvent] = []
    handler = EventHandler(seen.append)
    assert all(handler(event) is True for event in events)  # every event stays in the record
    return handler, seen


def test_the_view_gets_one_line_per_play_task_and_host_result(
    recorded: list[dict[str, Any]],
) -> None:
    _, seen = replay(recorded)
    results = [(e.kind, e.host, e.task) for e in seen if e.kind not in {"play", "task"}]
    assert results == [
        ("unreachable", "gone", "Reach the host"),
        ("ok", "here", "Reach the host"),
        ("ok", "here", "Report ok"),
        ("changed", "here", "Report changed"),
        ("skipped", "here", "Skip this"),
        ("failed", "here", "Fail but ignored"),
        ("failed", "here", "Fail inside a block"),
        ("ok", "here", "Note the recovery"),
        ("failed", "here", "Fail one loop item"),
    ]
    assert [e.play for e in seen if e.kind == "play"] == ["One of each outcome"]
    assert [e.task for e in seen if e.kind == "task"] == [
        "Reach the host",
        "Report ok",
        "Report changed",
        "Skip this",
        "Fail but ignored",
        "Fail inside a block",
        "Note the recovery",
        "Fail one loop item",
    ]
    assert {e.play for e in seen} == {"One of each outcome"}


def test_failures_name_host_task_and_the_modules_words_and_skip_ignored_ones(
    recorded: list[dict[str, Any]],
) -> None:
    handler, _ = replay(recorded)
    assert handler.fatal() == [
        TaskFailure(
            "gone",
            "Reach the host",
            "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 "
            "port 9: Connection refused",
            unreachable=True,
        ),
        # A loop: the words of the item that failed, not the loop's summary.
        TaskFailure("here", "Fail one loop item", "non-zero return code"),
    ]


def test_stats_per_host_from_the_final_event(recorded: list[dict[str, Any]]) -> None:
    handler, _ = replay(recorded)
    assert handler.stats == {
        "here": {"ok": 5, "changed": 2, "failed": 1, "skipped": 1, "rescued": 1},
        "gone": {"unreachable": 1},
    }
    result = RunResult("failed", 2, Path("/nonexistent"), 1.0, handler.stats, handler.failures)
    assert (result.total("ok"), result.total("changed"), result.total("failed")) == (5, 2, 1)


def test_a_failure_marked_ignored_is_no_failure(recorded: list[dict[str, Any]]) -> None:
    (ignored,) = [
        e
        for e in recorded
        if e["event"] == "runner_on_failed" and e["event_data"]["task"] == "Fail but ignored"
    ]
    assert ignored["event_data"]["ignore_errors"] is True
    handler, _ = replay([ignored])
    assert handler.failures == []
    unignored = {**ignored, "event_data": {**ignored["event_data"], "ignore_errors": None}}
    handler, _ = replay([unignored])
    assert handler.failures == [TaskFailure("here", "Fail but ignored", "non-zero return code")]


def test_a_rescued_failure_is_not_what_stopped_the_host(recorded: list[dict[str, Any]]) -> None:
    handler, _ = replay(recorded)
    rescued = TaskFailure("here", "Fail inside a block", "non-zero return code")
    assert rescued in handler.failures
    assert rescued not in handler.fatal()
    # A host whose only failure was rescued stopped for no failure of its own.
    events = [
        {**e, "event_data": {**e["event_data"], "failures": {}}}
        if e["event"] == "playbook_on_stats" else e
        for e in recorded
        if e["event_data"].get("task") != "Fail one loop item"
    ]  # fmt: skip
    handler, _ = replay(events)
    assert [f.host for f in handler.fatal()] == ["gone"]
