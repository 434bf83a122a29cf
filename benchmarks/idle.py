"""What an idle CPU costs a benchmark on this machine, and a way to take that cost away.

A proxy adds hops: the client's CPU wakes the gateway's, the gateway's wakes the runtime's and
back. On a virtual machine an idle vCPU halts, and waking it goes through the hypervisor: on
this project's 2-vCPU test VM a message to a CPU idle for 50 ms takes a few hundred
microseconds more than one to a CPU that is running, and the caches it left are cold. The
runtime alone has fewer such hops, so a gateway's added latency measured with a backend that
keeps the machine idle for tens of milliseconds per call is mostly this machine's wake-up
cost. ``wake_costs`` measures it; ``KeptAwake`` removes it for a run, as a host tuned for
latency does (tuned's latency-performance profile holds ``/dev/cpu_dma_latency`` so that idle
CPUs stay in a shallow state; a VM without a cpuidle driver, as this one, has no such knob).

``KeptAwake`` starts one spinner per CPU under ``SCHED_IDLE``: the kernel runs it only when
nothing else wants that CPU, so it takes no time from the gateway, the runtime or the load
generator, for direct and gateway calls alike; the CPU just never halts. It is not free on a
VM: a process that sleeps for a few milliseconds at a time (the stand-in's 2 ms per token, the
client beside it) was measured slower with the spinners (its p99 up by 5-7 ms), so a case of
many short waits (the GPU-like stream) says little under ``KeptAwake``.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from types import TracebackType

_SPIN = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True:\n"
    "    pass\n"
)


def _round_trip_us(here: int, there: int, idle_s: float, rounds: int) -> float:
    """Median microseconds for one byte to ``there`` and back, each after ``idle_s`` idle."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:  # the echo, on its own CPU
        try:
            ours.close()
            os.sched_setaffinity(0, {there})
            while data := theirs.recv(1):
                theirs.send(data)
        finally:
            os._exit(0)
    theirs.close()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {here})
    try:
        times = []
        for _ in range(rounds):
            time.sleep(idle_s)
            started = time.perf_counter()
            ours.send(b"x")
            ours.recv(1)
            times.append(time.perf_counter() - started)
    finally:
        ours.close()
        os.waitpid(child, 0)
        os.sched_setaffinity(0, before)
    return statistics.median(times) * 1e6


def wake_costs(cpus: list[int], idle_s: float = 0.05, rounds: int = 30) -> dict[str, float]:
    """Round trips after ``idle_s`` of idle: to a process on the same CPU and on another."""
    costs = {"same_cpu_us": _round_trip_us(cpus[0], cpus[0], idle_s, rounds)}
    if len(cpus) > 1:
        costs["other_cpu_us"] = _round_trip_us(cpus[0], cpus[1], idle_s, rounds)
    return costs


def describe_wake(costs: dict[str, float]) -> str:
    text = f"a round trip after 50 ms idle: {costs['same_cpu_us']:.0f} us on one CPU"
    if "other_cpu_us" in costs:
        text += f", {costs['other_cpu_us']:.0f} us between two"
    return text


class KeptAwake:
    """One ``SCHED_IDLE`` spinner per CPU in ``cpus`` while the block runs."""

    def __init__(self, cpus: list[int]) -> None:
        self.cpus = cpus
        self.spinners: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> KeptAwake:
        for cpu in self.cpus:
            self.spinners.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu)]))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for spinner in self.spinners:
            spinner.kill()
            spinner.wait()
