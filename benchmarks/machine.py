"""What a benchmark says about the machine it ran on, and how it shares the cores out: CPU sets
per role (so the load generator and the backend cannot take the gateway's core), CPU time of a
process tree (a gateway with worker processes), the load average."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Plan = dict[str, set[int]]


def cpus() -> list[int]:
    """The CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    return sorted(os.sched_getaffinity(0))


def plan_cpus(roles: list[str], available: list[int], first_gets: int = 1) -> Plan | None:
    """One CPU set per role, disjoint: ``first_gets`` CPUs for the first role (the gateway),
    the rest shared out in turn. None when there are not enough CPUs for a core each."""
    if len(available) < first_gets + len(roles) - 1 or not roles:
        return None
    plan: Plan = {roles[0]: set(available[:first_gets])}
    rest = available[first_gets:]
    others = roles[1:]
    for index, role in enumerate(others):
        plan[role] = set(rest[index :: len(others)])
    return plan


def pinned(cpu_set: set[int] | None) -> Callable[[], None] | None:
    """A Popen ``preexec_fn`` that confines the child (and the threads it starts) to
    ``cpu_set``: set before exec, so a runtime's compute threads inherit it."""
    if cpu_set is None:
        return None
    chosen = set(cpu_set)
    return lambda: os.sched_setaffinity(0, chosen)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue  # the task ended meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used by ``pid`` and its live descendants."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def describe(plan: Plan | None) -> str:
    if plan is None:
        return "not pinned"
    return ", ".join(f"{role} on {sorted(chosen)}" for role, chosen in plan.items())
