"""Starting the gateway for benchmarks/gateway.py: its config (HTTPS with a test CA), the
command (this checkout's, another's, or under the profiler), and waiting for it."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.pki import CA  # noqa: E402

BIN = Path(sys.executable).parent


def gateway_config(
    root: Path, port: int, models: list[dict[str, Any]], plain: bool, workers: int | None
) -> Path:
    listen: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if plain:
        listen["plain_http"] = True
    else:
        issued = CA(root / "pki", "benchmark CA").issue("gateway")
        listen["tls"] = {"cert": str(issued.cert), "key": str(issued.key)}
    config: dict[str, Any] = {
        "listen": listen,
        "keys_file": str(root / "keys.json"),
        "audit": {"dir": str(root / "audit")},
        "models": models,
    }
    if workers is not None:  # the gateway's own option; passed through as given
        config["workers"] = workers
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json"


def gateway_command(source: Path | None, profile: Path | None = None) -> list[str]:
    if profile is not None:
        tail = [] if source is None else [str(source)]
        return [sys.executable, str(ROOT / "benchmarks" / "profiled.py"), str(profile), *tail, "--"]
    if source is None:
        return [str(BIN / "appliance-gateway")]
    # The venv's editable install would import this checkout's package: out of the way.
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)];"
        f"sys.path.insert(0, {str(source.resolve())!r});"
        "from appliance.gateway.app import main; main()"
    )
    return [sys.executable, "-c", code]


def wait_for_gateway(
    url: str, context: ssl.SSLContext | None, process: subprocess.Popen[bytes]
) -> None:
    """The gateway's /health over its own scheme (wait_for speaks plain HTTP only)."""

    async def ask() -> int:
        connector = aiohttp.TCPConnector(ssl=context or False)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url + "/health") as answer,
        ):
            return answer.status

    deadline = time.monotonic() + 30
    while True:
        try:
            if asyncio.run(ask()) in (200, 503):
                return
        except aiohttp.ClientError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not answer at {url}/health")
        time.sleep(0.2)
