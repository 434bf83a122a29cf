"""Debian version order: dpkg's own examples, then every pair checked against dpkg itself."""

from __future__ import annotations

import functools
import itertools
import shutil
import subprocess

import pytest

from appliance.install.debversion import DebVersion, compare

# (a, b, sign of compare(a, b)): Debian Policy 5.6.12's tilde order and the cases of dpkg's
# lib/dpkg/t/t-version.c and t/dpkg_version.t.
DPKG_EXAMPLES = [
    ("1.0", "1.0", 0),
    ("0:1.0", "1.0", 0),
    ("1.0-0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0", "1.0", 1),
    ("1:1.0", "2.0", 1),
    ("1.0-1", "1.0-2", -1),
    ("1.0-1", "1.0", 1),
    ("1.0~rc1", "1.0", -1),
    ("1.0~~", "1.0~~a", -1),
    ("1.0~~a", "1.0~", -1),
    ("1.0~", "1.0", -1),
    ("1.0", "1.0a", -1),
    ("1.0a", "1.0+", -1),
    ("1.0+", "1.0.", -1),
    ("1.2.3", "1.2.10", -1),
    ("2.30", "2.4", 1),
    ("1.001", "1.1", 0),
    ("1.0-1ubuntu1", "1.0-1", 1),
    ("1.0-1+deb12u1", "1.0-1", 1),
    ("1.0-1+b1", "1.0-1.1", -1),
    ("535.261.03-1", "535.309.01-1~deb12u1", -1),
    ("2:1.0", "1:9.9", 1),
    ("1.0-a-1", "1.0-a-2", -1),  # the revision follows the last hyphen
    ("a", "b", -1),
    ("A", "a", -1),
]


@pytest.mark.parametrize(("a", "b", "sign"), DPKG_EXAMPLES)
def test_dpkg_examples(a: str, b: str, sign: int) -> None:
    assert _sign(compare(a, b)) == sign
    assert _sign(compare(b, a)) == -sign


def test_the_order_agrees_with_dpkg() -> None:
    """Sorted by ``compare``, each version against the next must hold for dpkg too (``lt`` or
    ``eq``): neighbours that agree make the whole order agree, since both orders are total."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.fail("dpkg is not installed: this test compares with it (Debian has it)")
    versions = {v for a, b, _ in DPKG_EXAMPLES for v in (a, b)} | {"1.0+dfsg", "0.9~1", "10"}
    ordered = sorted(versions, key=functools.cmp_to_key(compare))
    for a, b in itertools.pairwise(ordered):
        relation = "eq" if compare(a, b) == 0 else "lt"
        theirs = subprocess.run([dpkg, "--compare-versions", a, relation, b], check=False)
        assert theirs.returncode == 0, (a, relation, b)


def test_parse() -> None:
    assert DebVersion.parse("1:2.0-3") == DebVersion(1, "2.0", "3")
    assert DebVersion.parse("2.0") == DebVersion(0, "2.0", "")
    for bad in ("", "x:1.0", ":1.0", "-1"):
        with pytest.raises(ValueError):
            DebVersion.parse(bad)


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)
