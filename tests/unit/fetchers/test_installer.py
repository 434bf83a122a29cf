"""The installer's wheel set is pinned to what is installed here: one source of truth, whether
appliance runs from a checkout or from a wheel."""

from __future__ import annotations

import importlib.metadata

from appliance.fetchers.installer import canonical, installed_pins, runtime_requirements
from appliance.fetchers.own_wheel import metadata_headers


def pinned(pins: list[str]) -> dict[str, str]:
    return {canonical(name): version for name, _, version in (p.partition("==") for p in pins)}


def test_pins_follow_requirements_transitively_at_the_installed_versions() -> None:
    pins = pinned(installed_pins(["pydantic>=2"]))
    assert set(pins) >= {"pydantic", "pydantic-core", "annotated-types", "typing-extensions"}
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version


def test_appliance_runtime_pins_leave_out_its_extras_unless_asked() -> None:
    requirements = runtime_requirements()
    assert requirements and not any("extra ==" in r for r in requirements)
    runtime = pinned(installed_pins(requirements))
    assert {"ansible-core", "cryptography", "pydantic", "rich"} <= set(runtime)
    assert "huggingface-hub" not in runtime and "pytest" not in runtime
    assert "huggingface-hub" in pinned(installed_pins(["appliance[build]"]))


def test_a_requirement_not_installed_here_stays_unpinned() -> None:
    assert installed_pins(["no-such-project-appliance-test", "click"]) == [
        f"click=={importlib.metadata.version('click')}"
    ]


def test_metadata_headers_are_read_without_the_email_parser() -> None:
    text = (
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: a>=1\n"
        "Requires-Dist: b; extra == 'x'\n\nRequires-Dist: not a header, the description\n"
    )
    assert metadata_headers(text) == {
        "Metadata-Version": ["2.1"],
        "Name": ["demo"],
        "Version": ["1.0"],
        "Requires-Dist": ["a>=1", "b; extra == 'x'"],
    }
