"""The verify role's egress module: only the probe's own "no answer" counts as blocked."""

from __future__ import annotations

import importlib.util
import subprocess
from types import ModuleType
from typing import Any

import pytest

from appliance.roles import ROLES_DIR

MODULE = ROLES_DIR / "verify" / "library" / "appliance_runtime_egress.py"


@pytest.fixture(scope="module")
def egress() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_runtime_egress", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished(rc: int, stdout: str = "", stderr: str = "") -> Any:
    return lambda command, **_kwargs: subprocess.CompletedProcess(command, rc, stdout, stderr)


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "reached"),
    [
        (0, "answered HTTP 200\n", "", True),
        (3, "no answer (timed out)\n", "", False),
        # nsenter or setpriv refused (the process went away, no permission), python3 missing,
        # the probe crashed or was killed: it proves nothing, so it must not read as blocked.
        (1, "", "nsenter: cannot open /proc/4242/ns/net: No such file or directory\n", None),
        (127, "", "setpriv: failed to execute python3: No such file or directory\n", None),
        (-9, "", "", None),
    ],
)
def test_only_the_probes_no_answer_is_blocked(
    egress: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    rc: int,
    stdout: str,
    stderr: str,
    reached: bool | None,
) -> None:
    monkeypatch.setattr(egress.subprocess, "run", finished(rc, stdout, stderr))
    probe = egress._probe(4242, 998, 998, False, "http://198.19.255.10/", 3)
    assert probe["reached"] is reached
    assert probe["detail"]
