"""Split archives: parts of an exact size, an index that names each, joined as one stream."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from appliance.bundle.parts import INDEX_SUFFIX, JoinedReader, PartWriter, check_parts, read_index
from appliance.errors import BundleCorruptError, BundleLayoutError

MIB = 1 << 20
DATA = bytes(range(251)) * 10_000  # 2.4 MiB, not a multiple of anything


def split(tmp_path: Path, pieces: list[int]) -> tuple[Path, PartWriter]:
    writer = PartWriter(tmp_path / "media" / "b.tar", MIB)
    offset = 0
    for size in pieces:
        writer.write(DATA[offset : offset + size])
        offset += size
    writer.write(DATA[offset:])
    return writer.close(), writer


def test_parts_are_cut_at_the_size_whatever_the_writes(tmp_path: Path) -> None:
    index, writer = split(tmp_path, [1, MIB - 1, 3, 700_000])
    assert [p.size for p in writer.parts] == [MIB, MIB, len(DATA) - 2 * MIB]
    document = json.loads(index.read_text())
    assert index.name == "b.tar" + INDEX_SUFFIX
    assert document["total_size"] == len(DATA)
    for part in document["parts"]:
        body = (index.parent / part["name"]).read_bytes()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (part["size"], part["sha256"])


@pytest.mark.parametrize("size", [1, 7, 4096, MIB + 1, -1])
def test_joined_reader_gives_the_bytes_back_in_any_read_size(tmp_path: Path, size: int) -> None:
    index, _ = split(tmp_path, [])
    reader = JoinedReader(check_parts(index))
    chunks = []
    while chunk := reader.read(size):
        chunks.append(chunk)
        if size > 0:
            assert len(chunk) <= size
    reader.close()
    assert b"".join(chunks) == DATA


def test_every_missing_or_corrupt_part_is_named_at_once(tmp_path: Path) -> None:
    index, writer = split(tmp_path, [])
    first, second, third = (index.parent / p.name for p in writer.parts)
    first.unlink()
    damaged = bytearray(second.read_bytes())
    damaged[10] ^= 1
    second.write_bytes(bytes(damaged))
    third.write_bytes(third.read_bytes()[:-1])
    with pytest.raises(BundleCorruptError) as caught:
        check_parts(index)
    assert caught.value.message == f"{index}: 3 of 3 parts missing or corrupt"
    found = [(p.path, p.message.split(" ")[0]) for p in caught.value.problems]
    assert found == [(first.name, "missing"), (second.name, "sha256"), (third.name, "size")]


def test_an_unreadable_index_is_corrupt(tmp_path: Path) -> None:
    index = tmp_path / ("b.tar" + INDEX_SUFFIX)
    index.write_text("{not json")
    with pytest.raises(BundleCorruptError, match="not a readable parts index"):
        read_index(index)


def test_a_part_name_that_is_a_path_is_refused(tmp_path: Path) -> None:
    index = tmp_path / ("b.tar" + INDEX_SUFFIX)
    index.write_text(json.dumps({"parts": [{"name": "../etc/x", "size": 1, "sha256": "0"}]}))
    with pytest.raises(
        BundleLayoutError, match=re.escape("part name '../etc/x' is not a plain file name")
    ):
        read_index(index)
