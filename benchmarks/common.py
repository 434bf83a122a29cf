"""Helpers shared by the benchmarks: synthetic data, timing, page-cache control."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 << 20


def write_random(path: Path, size: int) -> None:
    """Incompressible bytes, written in chunks (never the whole file in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(CHUNK, size - written)]
            # Vary each chunk so no two blocks hash alike.
            out.write(written.to_bytes(8, "big") + piece[8:])
            written += len(piece)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(*command: str, cwd: Path | None = None) -> float:
    return timed(lambda: subprocess.run(command, check=True, capture_output=True, cwd=cwd))


def drop_caches() -> bool:
    """Empty the page cache (root only); False when this machine does not allow it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f} GB/s"
