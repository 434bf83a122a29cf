"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle.signing import keygen


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(private key, its public key, another signer's public key)."""
    root = tmp_path_factory.mktemp("keys")
    keygen(root / "key", "unit tests")
    keygen(root / "other", "someone else")
    return root / "key", root / "key.pub", root / "other.pub"
