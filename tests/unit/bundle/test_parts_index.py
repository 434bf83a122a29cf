"""A parts index from anywhere: read bounded, every field checked for form, a clear error for
anything else (it is unsigned: the archive it joins carries the trust)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bundle.parts import INDEX_LIMIT, MAX_PARTS, read_index
from appliance.errors import BundleCorruptError, BundleLayoutError
from tests.fixtures.hostile import examples, peak_bytes

DIGEST = "a" * 64
HEX = "0123456789abcdefABCDEF"


def part(name: object = "b.tar.001", size: object = 1, sha256: object = DIGEST) -> object:
    return {"name": name, "size": size, "sha256": sha256}


def index_of(*parts: object) -> str:
    return json.dumps({"schema_version": 1, "archive": "b.tar", "parts": list(parts)})


TABLE: dict[str, tuple[str, type[Exception], str]] = {
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, BundleCorruptError, "not a readable"),
    "not json": ("{parts: }", BundleCorruptError, "not a readable parts index"),
    "a list, not a mapping": ("[]", BundleCorruptError, "no list of 1 to"),
    "no parts": (index_of(), BundleCorruptError, "no list of 1 to"),
    "too many parts": (
        index_of(*[part(f"p{i}") for i in range(MAX_PARTS + 1)]),
        BundleCorruptError,
        "no list of 1 to",
    ),
    "a part that is not a mapping": (index_of("b.tar.001"), BundleCorruptError, "parts[0]"),
    "an extra field": (
        index_of({**part(), "path": "/etc/shadow"}),  # type: ignore[dict-item]
        BundleCorruptError,
        "is not {name, size, sha256}",
    ),
    "a name that is a number": (index_of(part(name=7)), BundleLayoutError, "plain file name"),
    "a name with NUL": (index_of(part(name="b\x00")), BundleLayoutError, "plain file name"),
    "a name that climbs": (index_of(part(name="..")), BundleLayoutError, "plain file name"),
    "a name past NAME_MAX": (index_of(part(name="p" * 256)), BundleLayoutError, "plain file"),
    "a size that is text": (index_of(part(size="1")), BundleCorruptError, "is not a size"),
    "a size that is true": (index_of(part(size=True)), BundleCorruptError, "is not a size"),
    "a negative size": (index_of(part(size=-1)), BundleCorruptError, "is not a size"),
    "a size of 2**80": (index_of(part(size=2**80)), BundleCorruptError, "is not a size"),
    "a digest in capitals": (
        index_of(part(sha256=DIGEST.upper())),
        BundleCorruptError,
        "is not a sha256 digest",
    ),
    "a part listed twice": (index_of(part(), part()), BundleLayoutError, "listed twice"),
}


@pytest.mark.parametrize(("text", "error", "message"), TABLE.values(), ids=TABLE.keys())
def test_a_hostile_index_is_refused(
    tmp_path: Path, text: str, error: type[Exception], message: str
) -> None:
    index = tmp_path / "b.tar.parts.json"
    index.write_text(text)
    with pytest.raises(error, match=re.escape(message)):
        read_index(index)


def test_an_index_too_large_is_refused_after_reading_at_most_its_bound(tmp_path: Path) -> None:
    index = tmp_path / "b.tar.parts.json"
    with index.open("wb") as out:
        out.truncate(1 << 30)  # sparse: a GiB claimed, nothing on disk
    raised, peak = peak_bytes(lambda: read_index(index))
    assert isinstance(raised, BundleCorruptError)
    assert f"larger than {INDEX_LIMIT} bytes" in raised.message
    assert peak < 3 * INDEX_LIMIT


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "directory"])
def test_an_index_that_is_not_a_regular_file_is_refused_without_blocking(
    tmp_path: Path, special: str
) -> None:
    index = tmp_path / "b.tar.parts.json"
    if special == "fifo":
        os.mkfifo(index)
    elif special == "directory":
        index.mkdir()
    else:
        index.symlink_to(special)
    with pytest.raises(BundleCorruptError):
        read_index(index)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
PART = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[a-z0-9][a-z0-9.]{0,12}", fullmatch=True) | JSON,
        "size": st.integers(-2, 2**70) | JSON,
        "sha256": st.just(DIGEST)
        | st.text(alphabet="0123456789abcdefABCDEF", min_size=63, max_size=65)
        | JSON,
    }
)


@examples(300)
@given(document=st.fixed_dictionaries({"parts": st.lists(PART | JSON, max_size=4)}) | JSON)
def test_any_index_gives_parts_of_good_form_or_a_clear_error(
    tmp_path: Path, document: object
) -> None:
    index = tmp_path / "b.tar.parts.json"
    index.write_text(json.dumps(document))
    try:
        parts = read_index(index)
    except (BundleCorruptError, BundleLayoutError):
        return
    assert 0 < len(parts) <= MAX_PARTS
    for found in parts:
        assert "/" not in found.name and not found.name.startswith(".")
        assert isinstance(found.size, int) and found.size >= 0
        assert len(found.sha256) == 64
