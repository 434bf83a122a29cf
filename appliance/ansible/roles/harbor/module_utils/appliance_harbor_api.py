"""The few calls of Harbor's v2.0 API the appliance makes: one project per upstream registry
and two robot accounts, one that pushes (seeding only) and one that only pulls (the engines).

Standard library only: it runs on the depot inside an Ansible module, and appliance imports it
for its tests. Only HTTPS with a CA file: the admin password crosses this connection.
"""

from __future__ import annotations

import base64
import http
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

API = "/api/v2.0"
PULL = ("pull",)
PUSH = ("pull", "push")


class HarborError(Exception):
    """An answer Harbor gave that the appliance cannot go on from."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"Harbor {method} {path}: {status} {message}")
        self.status = status


class HarborAPI:
    def __init__(
        self, url: str, username: str, password: str, cafile: str, timeout: float = 30.0
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ValueError(f"Harbor's URL must be https://HOST[:PORT], got {url!r}")
        self.base = f"https://{parsed.netloc}{API}"
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._context = ssl.create_default_context(cafile=cafile)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._timeout = timeout

    def _call(
        self, method: str, path: str, body: Any = None, accept: tuple[int, ...] = (200,)
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        # https only: the scheme is checked in __init__.
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", self._auth)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self._timeout, context=self._context
            ) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except urllib.error.URLError as error:
            # A wrong CA lands here too: say so, the operator's next step depends on it.
            raise HarborError(method, path, 0, f"cannot connect ({error.reason})") from error
        if status not in accept:
            # A HEAD answer has no body: fall back on the status's own phrase.
            message = _message(raw) or http.HTTPStatus(status).phrase
            raise HarborError(method, path, status, message)
        return status, (json.loads(raw) if raw.strip() else None)

    def ping(self) -> tuple[bool, list[str]]:
        """Harbor's own health: every component healthy."""
        _, health = self._call("GET", "/health")
        unhealthy: list[str] = [
            c.get("name")
            for c in (health or {}).get("components", [])
            if c.get("status") != "healthy"
        ]
        healthy = (health or {}).get("status") == "healthy" and not unhealthy
        return healthy, unhealthy

    def ensure_project(self, name: str) -> bool:
        """A private project ``name``; True when this call created it."""
        query = urllib.parse.urlencode({"project_name": name})
        status, _ = self._call("HEAD", f"/projects?{query}", accept=(200, 404))
        if status == 200:
            return False
        body = {"project_name": name, "public": False, "metadata": {"public": "false"}}
        self._call("POST", "/projects", body, accept=(201, 409))
        return True

    def find_robot(self, name: str) -> dict[str, Any] | None:
        query = urllib.parse.urlencode({"q": f"name={name}", "page_size": 100})
        _, robots = self._call("GET", f"/robots?{query}")
        for robot in robots or []:
            # Harbor prefixes system robots' names (robot$ by default, configurable).
            if robot.get("name") == name or str(robot.get("name", "")).endswith("$" + name):
                return dict(robot)
        return None

    def ensure_robot(
        self, name: str, projects: list[str], actions: tuple[str, ...], rotate: bool = False
    ) -> dict[str, str] | None:
        """A system robot that may do ``actions`` on ``projects``. Its secret when it was made
        or rotated now, else None (Harbor never shows a secret twice: the caller keeps it)."""
        permissions = [
            {
                "kind": "project",
                "namespace": project,
                "access": [{"resource": "repository", "action": action} for action in actions],
            }
            for project in sorted(projects)
        ]
        robot = self.find_robot(name)
        if robot is None:
            body = {
                "name": name,
                "description": "appliance: " + ("seeding" if "push" in actions else "pull only"),
                "level": "system",
                "duration": -1,
                "disable": False,
                "permissions": permissions,
            }
            _, made = self._call("POST", "/robots", body, accept=(201,))
            return {"name": str(made["name"]), "secret": str(made["secret"])}
        if _permissions(robot) != _permissions({"permissions": permissions}):
            self._call("PUT", f"/robots/{robot['id']}", {**robot, "permissions": permissions})
        if not rotate:
            return None
        # An empty secret asks Harbor to generate a new one; the old one stops working now.
        _, fresh = self._call("PATCH", f"/robots/{robot['id']}", {"secret": ""})
        return {"name": str(robot["name"]), "secret": str(fresh["secret"])}


def _permissions(robot: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return sorted(
        (p["namespace"], sorted(a["action"] for a in p.get("access", [])))
        for p in robot.get("permissions", [])
    )


def _message(raw: bytes) -> str:
    text = raw[:200].decode("utf-8", "replace")
    try:
        errors = json.loads(raw).get("errors") or []
    except (ValueError, AttributeError):
        return text
    return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or text
