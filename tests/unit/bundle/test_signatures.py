"""Every signature a bundle carries is checked, and any damage to one is a signature error."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from appliance.bundle import layout
from appliance.bundle.signing import sign, verify_bytes
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import BundleCorruptError, BundleSignatureError
from tests.fixtures.bundles import make_bundle
from tests.fixtures.hostile import examples

Keys = tuple[Path, Path, Path]
BEGIN = b"-----BEGIN SSH SIGNATURE-----"


def test_a_sha256sums_signature_that_does_not_verify_is_refused(tmp_path: Path, keys: Keys) -> None:
    """SHA256SUMS.sig is what `ssh-keygen -Y verify` and `sha256sum -c` trust: a bundle whose
    SHA256SUMS.sig signs something else is refused though its manifest's signature holds."""
    bundle = make_bundle(tmp_path, keys[0])
    other = tmp_path / "other"
    other.write_bytes(b"not the SHA256SUMS\n")
    sign(keys[0], other)
    (bundle / layout.SHA256SUMS_SIG).write_bytes((tmp_path / "other.sig").read_bytes())
    with pytest.raises(BundleSignatureError) as caught:
        verify_dir(bundle, keys[1])
    assert caught.value.message == (
        f"{bundle}/{layout.SHA256SUMS}: signature does not verify with {keys[1]}"
    )


def test_a_sha256sums_signed_by_another_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    sign(keys[0].with_name("other"), bundle / layout.SHA256SUMS)
    with pytest.raises(BundleSignatureError, match="signed by another key"):
        verify_dir(bundle, keys[1])


def test_sha256sums_without_its_signature_is_refused(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / layout.SHA256SUMS_SIG).unlink()
    with pytest.raises(BundleSignatureError, match="SHA256SUMS comes without its signature"):
        verify_dir(bundle, keys[1])


def test_a_bundle_without_sha256sums_is_still_corrupt_content(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / layout.SHA256SUMS).unlink()
    (bundle / layout.SHA256SUMS_SIG).unlink()
    with pytest.raises(BundleCorruptError) as caught:
        verify_dir(bundle, keys[1])
    assert [p.path for p in caught.value.problems] == [layout.SHA256SUMS]


def test_the_sha256sums_signature_is_checked_before_any_payload_is_read(
    tmp_path: Path, keys: Keys
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / layout.SHA256SUMS_SIG).write_bytes(b"-----BEGIN SSH SIGNATURE-----\n")
    with pytest.raises(BundleSignatureError), open_bundle(bundle, keys[1]):
        pytest.fail("opened")


@pytest.fixture(scope="module")
def signature(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> tuple[bytes, bytes]:
    """(data, its armored signature) made by ssh-keygen."""
    root = tmp_path_factory.mktemp("sig")
    (root / "data").write_bytes(b"signed data\n")
    sign(keys[0], root / "data")
    return b"signed data\n", (root / "data.sig").read_bytes()


def armored(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join([BEGIN.decode(), *lines, "-----END SSH SIGNATURE-----"]).encode()


def decoded(signature: bytes) -> bytes:
    return base64.b64decode(b"".join(signature.splitlines()[1:-1]))


def decoded_or_none(signature: bytes) -> bytes | None:
    try:
        lines = signature.splitlines()
        return (
            decoded(signature) if lines and lines[0] == b"-----BEGIN SSH SIGNATURE-----" else None
        )
    except ValueError:
        return None


@examples(300)
@given(data=st.data())
def test_any_damaged_signature_is_a_signature_error(
    keys: Keys, signature: tuple[bytes, bytes], data: st.DataObject
) -> None:
    """Bytes of the decoded signature overwritten, cut or extended (lengths, namespace, hash
    name, key, signature): always BundleSignatureError, never another exception."""
    signed, good = signature
    blob = bytearray(decoded(good))
    how = data.draw(st.sampled_from(["overwrite", "cut", "extend", "armor"]), label="how")
    if how == "overwrite":
        for _ in range(data.draw(st.integers(1, 4), label="changes")):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        damaged = armored(bytes(blob))
    elif how == "cut":
        damaged = armored(bytes(blob[: data.draw(st.integers(0, len(blob) - 1))]))
    elif how == "extend":
        damaged = armored(bytes(blob) + data.draw(st.binary(min_size=1, max_size=64)))
    else:
        damaged = data.draw(st.binary(max_size=200)) + good[data.draw(st.integers(0, 40)) :]
    assume(decoded_or_none(damaged) != decoded(good))  # an overwrite with the same byte
    with pytest.raises(BundleSignatureError):
        verify_bytes(keys[1], signed, damaged, "bundle")


def test_the_signature_fixture_itself_verifies(keys: Keys, signature: tuple[bytes, bytes]) -> None:
    verify_bytes(keys[1], *signature, "bundle")
    assert decoded(armored(decoded(signature[1]))) == decoded(signature[1])
