"""Debian version comparison, as dpkg does it (``dpkg --compare-versions``).

Neither python-debian nor apt_pkg is among the installer's wheels (apt_pkg is a Debian package,
not a wheel), and the plan must order versions on a depot that has only python3, so this is
dpkg's own algorithm (lib/dpkg/version.c, ``dpkg_version_compare`` and ``verrevcmp``): the epoch
as a number, then the upstream version and the revision, each compared as alternating runs of
non-digits (letters before other characters, ``~`` before anything, even the end) and digits
(as numbers). Tested against dpkg's own examples and against dpkg itself.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# dpkg's c_isdigit and c_isalpha: ASCII only, whatever Python's str methods think of Unicode.
_DIGITS = frozenset(string.digits)
_LETTERS = frozenset(string.ascii_letters)


@dataclass(frozen=True)
class DebVersion:
    epoch: int
    upstream: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> DebVersion:
        """``[epoch:]upstream[-revision]``; a bad epoch is refused with ValueError."""
        value = text.strip()
        if not value:
            raise ValueError("an empty version string")
        epoch_text, colon, rest = value.partition(":")
        if not colon:
            epoch_text, rest = "0", value
        if not epoch_text or not set(epoch_text) <= _DIGITS:
            raise ValueError(f"{text!r}: the epoch is not a number")
        upstream, hyphen, revision = rest.rpartition("-")
        if not hyphen:
            upstream, revision = rest, ""
        if not upstream:
            raise ValueError(f"{text!r}: no upstream version")
        return cls(int(epoch_text), upstream, revision)


def compare(a: str, b: str) -> int:
    """<0, 0 or >0 as version ``a`` sorts before, with or after ``b``."""
    left, right = DebVersion.parse(a), DebVersion.parse(b)
    if left.epoch != right.epoch:
        return -1 if left.epoch < right.epoch else 1
    return _verrevcmp(left.upstream, right.upstream) or _verrevcmp(left.revision, right.revision)


def _order(char: str) -> int:
    if char in _DIGITS:
        return 0
    if char in _LETTERS:
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + (i < len(a)), j + (j < len(b))
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i] in _DIGITS and j < len(b) and b[j] in _DIGITS:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i] in _DIGITS:
            return 1
        if j < len(b) and b[j] in _DIGITS:
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0
