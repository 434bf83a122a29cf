"""appliance-gateway overhead: the same requests sent to the runtime directly and through the
gateway (HTTPS, as installed), in one run. Prints added p50/p99 latency (goal: p50 <= 2 ms) and
the throughput ratio (goal: >= 95%), non-streaming and streaming. Asserts nothing.

Runtimes:
- the real llama.cpp server (xllamacpp, through the llamacpp role's launcher) serving the tiny
  GGUF model from examples/tiny_model.py, a few calls at a time (its CPU work is the limit);
- a backend that answers like a GPU server: the stand-in (tests/fixtures/openai_backend.py)
  with a prefill delay and a delay per token (``--gpu-prefill-ms``, ``--gpu-token-ms``), which
  a batching GPU server keeps whatever the number of streams, with 32 calls at a time. Its
  near-zero CPU work leaves the gateway's own cost as the difference.

The gateway serves HTTPS (TLS 1.3, a P-256 certificate from a test CA) unless ``--plain``; the
runtime alone is plain HTTP on loopback, as installed, so the TLS cost counts as overhead.
Everything runs on this machine, on 127.0.0.1: the load generator, the gateway and the runtime
share its cores, so the throughput ratio also counts the gateway's CPU taken from the others.
Latency is measured twice: sequential calls (the gateway's added time per call), and p50 under
the concurrent load (what a user sees when the gateway is busy).

``--pin`` makes the comparison fair on a small machine: the gateway gets CPUs of its own
(``--gateway-cpus``, default 1), the runtimes and the load generator share the others out, so
neither can take the gateway's core nor the gateway theirs (with 2 CPUs: the gateway on one, the
rest on the other). Every run prints the CPUs, the load average before and after each
measurement, and the gateway's CPU time per call (its process and any worker processes), and
the load generator's own (through the gateway it also does TLS: with 2 CPUs that runs on the
runtime's CPU and counts against the gateway's ratio, where a real client's TLS runs elsewhere).
``--workers N`` is passed through to the gateway's config as ``workers``.

    .venv/bin/python benchmarks/gateway.py [--requests 300] [--concurrency 4] [--gpu-requests 2000]
        [--pin] [--gateway-cpus 1] [--workers N] [--awake] [--runs N]

With ``--workers`` above 1 the gateway's CPU is that of the supervisor (the audit owner) and
its workers together.

Every run first prints what an idle CPU costs here (benchmarks/idle.py: a round trip to a
process on a CPU idle for 50 ms). ``--awake`` keeps idle CPUs from halting during the
sequential calls (a ``SCHED_IDLE`` spinner per CPU, which takes no time from anything else),
as a host tuned for latency does; the figures with and without it, side by side, show how much
of the added latency is this machine waking its CPUs rather than the gateway's work. The
throughput rounds run without it: a spinning virtual CPU may slow its hyperthread sibling on
the host, and the runtime's throughput with it. ``--runs N`` measures
each case N times and the summary judges the median.

On a machine others share, the load moves the figures more than a change does: ``--compare
DIR`` runs a second gateway from another checkout (e.g. main) beside this one, its calls
alternating with this one's in the sequential run, so both see the same load (before/after).
``--profile DIR`` runs the gateway under cProfile (benchmarks/profiled.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.gateway.audit import log_files  # noqa: E402
from appliance.gateway.keys import add_key  # noqa: E402
from benchmarks.gateway_load import Target, latency, ms, pct, throughput  # noqa: E402
from benchmarks.gateway_report import summary  # noqa: E402
from benchmarks.gateway_start import gateway_command, gateway_config, wait_for_gateway  # noqa: E402
from benchmarks.idle import KeptAwake, describe_wake, wake_costs  # noqa: E402
from benchmarks.machine import (  # noqa: E402
    Plan,
    cpu_seconds,
    cpus,
    describe,
    load,
    pinned,
    plan_cpus,
)
from tests.fixtures.servers import LAUNCHER, free_port, wait_for  # noqa: E402

ROUNDS = 4  # throughput runs per target, taken in turn


def start(
    command: list[str], log: Path, health: str, accept: set[int], cpu_set: set[int] | None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu_set)
        )
    wait_for(health, process, accept, log)
    return process


async def measure(
    label: str,
    targets: dict[str, Target],
    client_tls: ssl.SSLContext | None,
    body: dict[str, Any],
    sequential: int,
    n: int,
    c: int,
    pids: dict[str, int],
    awake: list[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Figures per gateway (``pids``: target name to process) against ``direct``; the
    sequential calls with the CPUs ``awake`` kept from halting."""
    data = json.dumps(body).encode()
    load_before = load()
    # A connection idle while the other targets take their turn is let go before the gateway
    # closes it (header_timeout_s, 10 s): reusing one it is closing fails the call.
    connector = aiohttp.TCPConnector(
        limit=max(64, 2 * c), ssl=client_tls or False, keepalive_timeout=4
    )
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await latency(session, targets, data, 10)  # warm up connections and caches
        with KeptAwake(awake or []):
            times = await latency(session, targets, data, sequential)
        for target in targets.values():
            await throughput(session, target, data, min(n, 4 * c), c)  # warm up c connections
        # In rounds, each target in turn, so that the machine's other load hits all alike.
        spent = dict.fromkeys(targets, 0.0)
        loaded: dict[str, list[float]] = {name: [] for name in targets}
        cpu = dict.fromkeys(pids, 0.0)
        client = dict.fromkeys(targets, 0.0)  # the load generator's own CPU (TLS included)
        first, *others = targets
        for round_number in range(ROUNDS):
            # direct first, then the gateways, in reverse every other round: the one right
            # after the runtime's turn (llama.cpp's threads spin on for a while) takes turns.
            turn = [first, *(reversed(others) if round_number % 2 else others)]
            for name in turn:
                target = targets[name]
                before = cpu_seconds(pids[name]) if name in pids else 0.0
                ours = time.process_time()
                started = time.perf_counter()
                _, times_taken = await throughput(session, target, data, n // ROUNDS, c)
                spent[name] += time.perf_counter() - started
                client[name] += time.process_time() - ours
                loaded[name].extend(times_taken)
                if name in pids:
                    cpu[name] += cpu_seconds(pids[name]) - before
        rates = {name: len(loaded[name]) / spent[name] for name in targets}
    direct = times["direct"]
    print(label)
    figures = {}
    for name in pids:
        via = times[name]
        added50 = statistics.median(via) - statistics.median(direct)
        added99 = pct(via, 0.99) - pct(direct, 0.99)
        loaded50 = statistics.median(loaded[name]) - statistics.median(loaded["direct"])
        ratio = rates[name] / rates["direct"]
        cpu_ms = cpu[name] / len(loaded[name]) * 1000
        tag = "" if name == "gateway" else f" [{name}]"
        print(f"  latency{tag}  direct p50 {ms(statistics.median(direct))}  p99 "
              f"{ms(pct(direct, 0.99))} | gateway p50 {ms(statistics.median(via))}  p99 "
              f"{ms(pct(via, 0.99))}")  # fmt: skip
        print(f"  added{tag}    p50 {added50 * 1000:+.2f} ms (goal <= 2)  p99 "
              f"{added99 * 1000:+.2f} ms  [{sequential} sequential calls each]")  # fmt: skip
        print(f"  loaded{tag}   direct p50 {ms(statistics.median(loaded['direct']))} | gateway "
              f"p50 {ms(statistics.median(loaded[name]))}  added {loaded50 * 1000:+.2f} ms"
              f"  [{c} at a time]")  # fmt: skip
        print(f"  rate{tag}     direct {rates['direct']:7.1f}/s  gateway {rates[name]:7.1f}/s  "
              f"ratio {ratio:.1%} (goal >= 95%)  [{n} calls, {ROUNDS} rounds, {c} at a "
              "time]")  # fmt: skip
        # What sizes the gateway on another machine: one process serves about 1000/this
        # calls a second on one core of this kind.
        print(f"  cpu{tag}      gateway {cpu_ms:.2f} ms of CPU per call (TLS, proxy, audit); "
              f"load generator {client[name] / len(loaded[name]) * 1000:.2f} ms per call "
              f"(direct {client['direct'] / len(loaded['direct']) * 1000:.2f} ms)")  # fmt: skip
        figures[name] = {
            "added_p50_ms": added50 * 1000,
            "loaded_p50_ms": loaded50 * 1000,
            "ratio": ratio,
            "cpu_ms": cpu_ms,
        }
    print(f"  load     average {load_before} before, {load()} after (1, 5, 15 min)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="tiny model: calls per run")
    parser.add_argument("--concurrency", type=int, default=4, help="tiny model: at a time")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--gpu-requests", type=int, default=2000)
    parser.add_argument("--gpu-concurrency", type=int, default=32)
    parser.add_argument("--gpu-prefill-ms", type=float, default=20)
    parser.add_argument("--gpu-token-ms", type=float, default=2)
    parser.add_argument("--plain", action="store_true", help="the gateway on plain HTTP")
    parser.add_argument("--skip-tiny", action="store_true", help="the GPU-like backend only")
    # llama.cpp's compute threads spin while they wait; on a small machine with every thread
    # taken they starve the gateway's one Python thread, and the ratio measures that instead.
    parser.add_argument("--runtime-threads", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="CPUs of its own for each role")
    parser.add_argument("--gateway-cpus", type=int, default=1, help="with --pin")
    parser.add_argument("--workers", type=int, help="the gateway config's workers")
    parser.add_argument("--only", choices=("whole", "stream"), help="one kind of answer only")
    parser.add_argument("--runs", type=int, default=1, help="measure each case N times")
    parser.add_argument(
        "--awake",
        action="store_true",
        help="keep idle CPUs from halting (a SCHED_IDLE spinner per CPU): a latency-tuned host",
    )
    parser.add_argument(
        "--gateway-source", type=Path, help="run another checkout's gateway (before/after figures)"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="a second gateway from another checkout, measured in the same run, call for call "
        "alternating with this one (before/after figures on a busy machine)",
    )
    parser.add_argument(
        "--profile", type=Path, help="the gateway under cProfile: a .prof per thread here"
    )
    args = parser.parse_args()
    available = cpus()
    plan: Plan | None = None
    if args.pin:
        plan = plan_cpus(["gateway", "runtime", "load generator"], available, args.gateway_cpus)
        if plan is None and len(available) > args.gateway_cpus:
            plan = plan_cpus(["gateway", "runtime"], available, args.gateway_cpus)
            if plan is not None:
                plan["load generator"] = plan["runtime"]
        if plan is None:
            print(f"--pin: {len(available)} CPU(s) is too few to give the gateway its own")
    print(f"machine: {os.cpu_count()} CPUs, this run may use {len(available)}; "
          f"{describe(plan)}; load average {load()}")  # fmt: skip
    print(f"idle CPUs: {describe_wake(wake_costs(available))}")
    if args.awake:
        with KeptAwake(available):
            print(f"idle CPUs kept awake (--awake, for the sequential calls): "
                  f"{describe_wake(wake_costs(available))}")  # fmt: skip
    runtime_cpus = plan["runtime"] if plan else None
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = root / "tiny.gguf"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(model)],
            check=True,
        )
        llama_port, stand_in_port, gateway_port = free_port(), free_port(), free_port()
        compare_port = free_port()
        llama, stand_in = f"http://127.0.0.1:{llama_port}", f"http://127.0.0.1:{stand_in_port}"
        try:
            if not args.skip_tiny:
                runtime = [sys.executable, str(LAUNCHER), "--model", str(model), "--alias",
                           "tiny-llama", "--port", str(llama_port), "--ctx-size", "2048",
                           "--parallel", str(args.concurrency),
                           "--threads", str(args.runtime_threads)]  # fmt: skip
                processes.append(
                    start(runtime, root / "llama.log", llama + "/health", {200}, runtime_cpus)
                )
            fixture = "tests.fixtures.openai_backend"
            backend = [sys.executable, "-m", fixture, "--port", str(stand_in_port)]
            processes.append(
                start(
                    backend, root / "stand-in.log", stand_in + "/api/version", {200}, runtime_cpus
                )
            )
            digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
            routes = [{"name": "gpu-like", "digest": "sha256:" + "5" * 64, "backend": stand_in,
                       "health_path": "/api/version"}]  # fmt: skip
            if not args.skip_tiny:
                routes.append({"name": "tiny-llama", "digest": digest, "backend": llama})
            config = gateway_config(root, gateway_port, routes, args.plain, args.workers)
            key, _ = add_key(root / "keys.json", "bench", ["*"])
            scheme = "http" if args.plain else "https"
            gateway = f"{scheme}://127.0.0.1:{gateway_port}"
            client_tls = None
            if not args.plain:
                client_tls = ssl.create_default_context(cafile=str(root / "pki" / "ca.crt"))
            with (root / "gateway.log").open("wb") as sink:
                processes.append(subprocess.Popen(
                    [*gateway_command(args.gateway_source, args.profile), "--config", str(config)],
                    stdout=sink, stderr=subprocess.STDOUT,
                    preexec_fn=pinned(plan["gateway"] if plan else None),
                ))  # fmt: skip
            if plan is not None:
                os.sched_setaffinity(0, plan["load generator"])
            wait_for_gateway(gateway, client_tls, processes[-1])
            pids = {"gateway": processes[-1].pid}
            other = None
            if args.compare is not None:
                other = f"{scheme}://127.0.0.1:{compare_port}"
                config_data = json.loads(config.read_text())
                config_data["listen"]["port"] = compare_port
                config_data["audit"]["dir"] = str(root / "audit-compared")
                (root / "compared.json").write_text(json.dumps(config_data))
                with (root / "compared.log").open("wb") as sink:
                    processes.append(subprocess.Popen(
                        [*gateway_command(args.compare), "--config", str(root / "compared.json")],
                        stdout=sink, stderr=subprocess.STDOUT,
                        preexec_fn=pinned(plan["gateway"] if plan else None),
                    ))  # fmt: skip
                wait_for_gateway(other, client_tls, processes[-1])
                pids[f"compared: {args.compare}"] = processes[-1].pid
            print(f"gateway: {scheme}, {'TLS 1.3' if client_tls else 'no TLS'}, "
                  f"{args.workers or 1} worker(s); runtimes direct over plain HTTP")  # fmt: skip
            tokens = args.max_tokens
            runs: list[tuple[str, str, int, int, dict[str, Any]]] = []
            results: list[tuple[str, dict[str, dict[str, float]]]] = []
            if not args.skip_tiny:
                runs.append(("tiny-llama", llama, args.requests, args.concurrency, {}))
            gpu = {"x_delay": args.gpu_prefill_ms / 1000, "x_token_delay": args.gpu_token_ms / 1000}
            runs.append(("gpu-like", stand_in, args.gpu_requests, args.gpu_concurrency, gpu))
            for name, backend_url, n, c, extra in runs * args.runs:
                for stream in {None: (False, True), "whole": (False,), "stream": (True,)}[
                    args.only
                ]:
                    body = {"model": name, "prompt": "the appliance answers",
                            "max_tokens": tokens, "ignore_eos": True, "temperature": 0,
                            "stream": stream, **extra}  # fmt: skip
                    if stream:
                        body["stream_options"] = {"include_usage": True}  # same bytes both ways
                    plain = {"Content-Type": "application/json"}
                    # llama.cpp closes the connection after each stream: say so, or the next
                    # call on it fails.
                    closes = stream and name == "tiny-llama"
                    targets = {
                        "direct": (f"{backend_url}/v1/completions",
                                   {**plain, "Connection": "close"} if closes else plain),
                        "gateway": (f"{gateway}/v1/completions",
                                    {**plain, "Authorization": f"Bearer {key}"}),
                    }  # fmt: skip
                    if other is not None:
                        targets[f"compared: {args.compare}"] = (
                            f"{other}/v1/completions",
                            targets["gateway"][1],
                        )
                    kind = "streaming" if stream else "non-streaming"
                    label = f"{name}, {kind}, {tokens} tokens"
                    sequential = min(n, 200 if name == "gpu-like" else n)
                    awake = available if args.awake else None
                    figures = asyncio.run(measure(label, targets, client_tls, body, sequential,
                                                  n, c, pids, awake))  # fmt: skip
                    results.append((f"{name}, {kind}", figures))
            summary(results)
            records = sum(sum(1 for _ in path.open()) for path in log_files(root / "audit"))
            print(f"audit records written: {records}")
        except Exception:
            for log in sorted(root.glob("*.log")):
                print(f"--- {log.name}", *log.read_text().splitlines()[-15:], sep="\n")
            raise
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
