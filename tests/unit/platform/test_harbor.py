"""Harbor, checked without Harbor: harbor.yml's keys against the pinned release's own template,
and the API client (the very module_utils file the role's module runs) against a labelled
stand-in of Harbor's API over TLS (tests/fixtures/harbor_standin.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.platform.harbor import SECRET_KEYS, HarborSettings, harbor_yml, project_name
from appliance.platform.harbor_api import PULL, PUSH, HarborAPI, HarborError
from tests.fixtures.harbor_standin import harbor_standin
from tests.fixtures.harbor_template import TEMPLATE_KEYS, TEMPLATE_VERSION
from tests.fixtures.tls import make_pki

PASSWORD = "admin-password-made-on-site-A1"  # noqa: S105 (the stand-in's, made up here)
SETTINGS = HarborSettings("198.18.10.2", "/etc/h/public.crt", "/etc/h/private.key")


def key_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found.add(path)
        if isinstance(value, dict):
            found |= key_paths(value, path + ".")
    return found


def test_harbor_yml_uses_only_keys_the_pinned_template_knows() -> None:
    rendered = harbor_yml(SETTINGS)
    unknown = key_paths(rendered) - TEMPLATE_KEYS
    assert not unknown, f"keys Harbor's prepare would ignore: {sorted(unknown)}"
    # The role fills in the two passwords on the depot; the template knows them too.
    assert {".".join(key) for key in SECRET_KEYS} <= TEMPLATE_KEYS
    assert "harbor_admin_password" not in rendered
    assert "password" not in rendered["database"]
    assert rendered["_version"] == TEMPLATE_VERSION


def test_harbor_yml_is_offline_and_tls_only() -> None:
    rendered = harbor_yml(SETTINGS)
    assert rendered["https"]["certificate"] == "/etc/h/public.crt"
    trivy = rendered["trivy"]
    assert trivy["skip_update"] and trivy["skip_java_db_update"] and trivy["offline_scan"]
    assert not any(rendered["proxy"][k] for k in ("http_proxy", "https_proxy"))
    assert rendered["data_volume"].startswith("/var/lib/appliance/")


def test_a_project_is_named_after_its_upstream_registry() -> None:
    assert project_name("GHCR.io") == "ghcr.io"
    with pytest.raises(ValueError, match="has a port"):
        project_name("registry.internal:5000")


def test_the_client_makes_projects_and_robots_once_and_rotates_on_request(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with harbor_standin(pki, PASSWORD) as (url, state):
        api = HarborAPI(url, "admin", PASSWORD, str(pki.ca))
        assert api.ping() == (True, [])
        assert api.ensure_project("ghcr.io") is True
        assert api.ensure_project("ghcr.io") is False
        assert state.projects["ghcr.io"]["public"] is False
        push = api.ensure_robot("appliance-push", ["ghcr.io"], PUSH)
        pull = api.ensure_robot("appliance-pull", ["ghcr.io"], PULL)
        assert push and pull and push["secret"] != pull["secret"]
        robots = {r["name"]: r for r in state.robots.values()}
        actions = [a["action"] for a in robots["robot$appliance-pull"]["permissions"][0]["access"]]
        assert actions == ["pull"]
        # Again: nothing made, no secret shown (Harbor shows one once).
        calls = len(state.calls)
        assert api.ensure_robot("appliance-pull", ["ghcr.io"], PULL) is None
        assert not [c for c in state.calls[calls:] if c[0] in {"POST", "PUT", "PATCH"}]
        # A new upstream registry: the robot's permissions follow, same identity.
        api.ensure_project("docker.io")
        assert api.ensure_robot("appliance-pull", ["docker.io", "ghcr.io"], PULL) is None
        assert len(robots["robot$appliance-pull"]["permissions"]) == 2
        # Rotation: a new secret for the same robot.
        rotated = api.ensure_robot("appliance-pull", ["docker.io", "ghcr.io"], PULL, rotate=True)
        assert rotated and rotated["secret"] != pull["secret"]
        assert len(state.robots) == 2


def test_the_client_refuses_plain_http_a_wrong_ca_and_a_wrong_password(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
    with pytest.raises(ValueError, match="https"):
        HarborAPI("http://127.0.0.1:1", "admin", PASSWORD, str(pki.ca))
    with harbor_standin(pki, PASSWORD) as (url, _state):
        with pytest.raises(HarborError, match=r"cannot connect.*CERTIFICATE_VERIFY_FAILED"):
            HarborAPI(url, "admin", PASSWORD, str(other.ca)).ensure_project("ghcr.io")
        with pytest.raises(HarborError, match="401 Unauthorized") as raised:
            HarborAPI(url, "admin", "wrong", str(pki.ca)).ensure_project("ghcr.io")
        assert raised.value.status == 401
