"""Fixtures for the integration tests that install a bundle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from appliance.bundle.signing import keygen
from tests.fixtures.bundles import signed_bundle
from tests.fixtures.multihost import internal_network
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with jq, nftables, python3-apt and nginx-light, built once per session."""
    root = tmp_path_factory.mktemp("install")
    keygen(root / "other", "someone else")
    spec = spec_text(
        "install-test",
        "2026.11.7",
        stack=SYSTEMD_LLAMACPP,
        packages=["jq", "nftables", "python3-apt", "nginx-light"],
    )
    signed_bundle(root, spec, "install test")
    return root


@pytest.fixture
def lab_network() -> Iterator[Callable[[str], str]]:
    """Internal docker networks (no way out) in the lab range: call with a subnet."""
    with ExitStack() as networks:
        yield lambda subnet: networks.enter_context(internal_network(subnet))
