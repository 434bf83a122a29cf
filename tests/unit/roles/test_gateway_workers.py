"""The gateway role's worker count, rendered by Ansible itself into the gateway's config
(checked by the gateway's own loader) and the unit that supervises the workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.config import AUTO_WORKERS, load_config
from tests.fixtures.templates import render as render_templates


def render(tmp_path: Path, **settings: Any) -> tuple[Path, str]:
    extravars = {
        "gateway_config_dir": str(tmp_path / "etc"),
        "gateway_backends": [
            {"name": "tiny", "digest": "sha256:" + "1" * 64, "url": "http://127.0.0.1:8081"}
        ],
        **settings,
    }
    files = render_templates(
        tmp_path,
        "gateway",
        {"config.json.j2": "config.json", "appliance-gateway.service.j2": "gateway.service"},
        extravars,
    )
    return tmp_path / "config.json", files["gateway.service"]


def test_auto_by_default_one_worker_per_cpu_but_one_up_to_four(tmp_path: Path) -> None:
    config, unit = render(tmp_path)
    loaded = load_config(config)
    assert loaded.workers == "auto"
    assert loaded.worker_count() == max(1, min(len(os.sched_getaffinity(0)) - 1, AUTO_WORKERS))
    # SIGTERM to the supervisor alone: it stops the workers, then closes the audit log.
    assert "\nKillMode=mixed\n" in unit and "\nTimeoutStopSec=60\n" in unit


@pytest.mark.parametrize("workers", [3, "2"])
def test_a_set_number_of_workers(tmp_path: Path, workers: int | str) -> None:
    config, _ = render(tmp_path, gateway_workers=workers)
    assert load_config(config).worker_count() == int(workers)
