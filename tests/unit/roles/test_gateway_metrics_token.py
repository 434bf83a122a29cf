"""The gateway role's metrics token: the config Ansible renders carries its SHA-256 only when
one is set, and the gateway loads it (a token that is not 64 hex digits is refused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.gateway.config import GatewayConfig
from tests.fixtures.templates import render

BACKENDS = [{"name": "m", "digest": "sha256:" + "0" * 64, "url": "http://127.0.0.1:8081"}]


def config(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    extravars = {"gateway_backends": BACKENDS, "gateway_tls": "off", **settings}
    tmp_path.mkdir()
    files = render(tmp_path, "gateway", {"config.json.j2": "config.json"}, extravars)
    document: dict[str, Any] = json.loads(files["config.json"])
    return document


def test_the_metrics_token_goes_into_the_config_only_when_set(tmp_path: Path) -> None:
    assert "metrics_token_sha256" not in config(tmp_path / "none")
    digest = hashlib.sha256(b"scraper").hexdigest()
    document = config(tmp_path / "set", gateway_metrics_token_sha256=digest.upper())
    assert document["metrics_token_sha256"] == digest
    assert GatewayConfig.model_validate(document).metrics_token_sha256 == digest
    with pytest.raises(ValidationError, match="metrics_token_sha256"):
        GatewayConfig.model_validate({**document, "metrics_token_sha256": "scraper"})
