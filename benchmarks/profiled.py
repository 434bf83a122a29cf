"""Run the gateway under cProfile, every thread its own profile (the event loop, the audit
writer), each written to ``<dir>/<thread>.prof`` when the gateway exits (SIGTERM), for
``python -m pstats``. Used by ``benchmarks/gateway.py --profile DIR``: measured figures run
slower under the profiler; read the shares, not the times.

    python benchmarks/profiled.py DIR [SOURCE] -- gateway arguments
"""

from __future__ import annotations

import cProfile
import sys
import threading
from pathlib import Path


def main() -> None:
    marker = sys.argv.index("--")
    out, *source = sys.argv[1:marker]
    sys.argv = ["appliance-gateway", *sys.argv[marker + 1 :]]
    if source:  # another checkout's gateway (gateway.py --gateway-source)
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
        sys.path.insert(0, str(Path(source[0]).resolve()))
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    started = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            started(thread)
        finally:
            profile.disable()
            profile.dump_stats(directory / f"{thread.name}.prof")

    threading.Thread.run = profiled_run  # type: ignore[method-assign,assignment]
    from appliance.gateway.app import main as gateway

    profile = cProfile.Profile()
    profile.enable()
    try:
        gateway()
    finally:
        profile.disable()
        profile.dump_stats(directory / "main.prof")


if __name__ == "__main__":
    main()
