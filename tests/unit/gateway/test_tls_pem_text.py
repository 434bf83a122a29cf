"""PEM files with text that is not ASCII: outside the PEM blocks it is ignored, as OpenSSL does
(``openssl pkcs12`` writes "Bag Attributes" with a friendlyName in any encoding, sites add
comments); inside a block it is refused, naming the file, the line and the problem."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from appliance.errors import GatewayConfigError
from appliance.gateway.config import TLSSettings
from appliance.gateway.tls import TLSMaterial, read_material, server_context
from tests.fixtures.gateway import gateway_in_thread
from tests.fixtures.pki import CA

UTF8_COMMENT = "# Zertifikat für das Gateway, ausgestellt von der Stelle Ø\n".encode()
LATIN1_BAG = b"Bag Attributes\n    friendlyName: Schl\xfcssel des Gateways\n"


def with_text(path: Path, before: bytes, after: bytes = b"") -> Path:
    """``path`` again, as ``<name>.text.pem``, with ``before`` and ``after`` around its PEM."""
    out = path.with_name(path.name + ".text.pem")
    out.write_bytes(before + path.read_bytes() + after)
    return out


def test_text_outside_the_pem_blocks_is_ignored(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("gateway")
    settings = TLSSettings(
        cert=with_text(issued.cert, UTF8_COMMENT, b"\xe9t\xe9 \xa9 2026\n"),
        key=with_text(issued.key, LATIN1_BAG),
        client_ca=with_text(ca.cert, LATIN1_BAG + UTF8_COMMENT),
    )
    material = read_material(settings)
    # What the worker processes get over their channel (JSON, ASCII): only the PEM blocks.
    assert TLSMaterial.from_json(material.to_json()) == material
    assert material.cert == issued.cert.read_bytes()
    assert material.key == issued.key.read_bytes()
    assert material.client_ca == ca.cert.read_bytes()
    assert isinstance(server_context(settings), ssl.SSLContext)


def test_the_gateway_serves_with_commented_files(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("gateway")
    listen = {
        "plain_http": False,
        "tls": {
            "cert": str(with_text(issued.cert, UTF8_COMMENT)),
            "key": str(with_text(issued.key, LATIN1_BAG)),
        },
    }
    with gateway_in_thread(tmp_path, listen=listen) as gateway:
        context = ssl.create_default_context(cafile=str(ca.cert))
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
        with raw, context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(
                f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                f"{gateway.key}\r\nConnection: close\r\n\r\n".encode()
            )
            assert sock.recv(12) == b"HTTP/1.1 200"


def broken_inside(path: Path) -> Path:
    """``path`` (a comment line, then PEM) with a letter of its first base64 line (line 3, inside
    the block) made non-ASCII."""
    lines = path.read_bytes().split(b"\n")
    assert lines[1].startswith(b"-----BEGIN ")
    lines[2] = "é".encode() + lines[2][1:]
    out = path.with_name(path.name + ".broken.pem")
    out.write_bytes(b"\n".join(lines))
    return out


@pytest.mark.parametrize("field", ["cert", "key", "client_ca"])
def test_non_ascii_inside_a_pem_block_is_named(tmp_path: Path, field: str) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("gateway")
    files = {"cert": issued.cert, "key": issued.key, "client_ca": ca.cert}
    broken = broken_inside(with_text(files[field], UTF8_COMMENT))
    settings = TLSSettings(**{**files, field: broken})
    with pytest.raises(GatewayConfigError) as refused:
        read_material(settings)
    assert refused.value.message == (
        f"listen.tls.{field}: {broken} line 3 holds a byte that is not ASCII inside its PEM "
        "block (base64 text): the file was changed or converted"
    )
    assert refused.value.hint is not None and "issue it again" in refused.value.hint
