"""The gateway's HTTPS: versions, the server's certificate, client certificates, bad files.

Real TLS on 127.0.0.1 against the real app (gateway_in_thread), with certificates from a test
CA (tests/fixtures/pki.py); clients are Python's ssl module, set up as each case needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.errors import GatewayConfigError
from appliance.gateway.config import TLSSettings
from appliance.gateway.tls import server_context
from tests.fixtures.gateway import RunningGateway, gateway_config, gateway_in_thread, parse_reply
from tests.fixtures.pki import CA, Issued

BIN = Path(sys.executable).parent


def _client(
    ca: Path,
    version: ssl.TLSVersion | None = None,
    cert: Issued | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 offers TLS 1.1 only at security level 0: let this client offer it, so
            # the refusal seen is the gateway's.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = version
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def _get(gateway: RunningGateway, context: ssl.SSLContext, path: str = "/v1/models") -> Any:
    """A GET over TLS; (TLS version, reply)."""
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as sock:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {gateway.key}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return sock.version(), parse_reply(b"".join(chunks))


def _refused(gateway: RunningGateway, context: ssl.SSLContext) -> bool:
    """No HTTP answer: the handshake failed (TLS 1.2), or the gateway closed the connection
    right after it (TLS 1.3 checks the client's certificate once the client is done)."""
    try:
        _, reply = _get(gateway, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return reply is None


def _tls(ca_dir: Path, client_ca: Path | None = None, min_version: str = "1.2") -> dict[str, Any]:
    server = CA(ca_dir).issue("gateway") if not (ca_dir / "gateway.crt").exists() else None
    assert server is not None
    tls: dict[str, Any] = {"cert": str(server.cert), "key": str(server.key)}
    if client_ca is not None:
        tls["client_ca"] = str(client_ca)
    return {"plain_http": False, "tls": {**tls, "min_version": min_version}}


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("https")
    with gateway_in_thread(root, listen=_tls(root / "pki")) as gateway:
        yield gateway, root / "pki" / "ca.crt"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_are_served(https: Any, version: ssl.TLSVersion) -> None:
    gateway, ca = https
    seen, reply = _get(gateway, _client(ca, version))
    assert seen == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert reply.status == 200
    assert [m["id"] for m in reply.json()["data"]] == ["stand-in"]


def test_every_call_over_tls_is_audited(https: Any) -> None:
    gateway, ca = https
    _, reply = _get(gateway, _client(ca))
    record = gateway.record_of(reply)
    assert (record["path"], record["status"]) == ("/v1/models", 200)
    assert record["client_cert"] is None  # none asked for
    gateway.verify()


def _handshake_with_any_version(cert: Path, key: Path) -> tuple[int, threading.Thread, list[str]]:
    """A control server that accepts TLS 1.0 and up: proves the client below does offer 1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        raw = listener.accept()[0]
        with listener, raw, context.wrap_socket(raw, server_side=True) as tls:
            seen.append(str(tls.version()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, seen


def test_tls_11_is_refused_by_the_gateway(https: Any) -> None:
    gateway, ca = https
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _client(ca, ssl.TLSVersion.TLSv1_1)
    # The same client gets TLS 1.1 from a server that allows it...
    pki = ca.parent
    port, thread, seen = _handshake_with_any_version(pki / "gateway.crt", pki / "gateway.key")
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    with raw, old.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.version() == "TLSv1.1"
    thread.join(timeout=15)
    assert seen == ["TLSv1.1"]
    # ... and none from the gateway: the handshake fails, no request is made or recorded.
    before = len(gateway.records())
    with pytest.raises(ssl.SSLError):
        _get(gateway, old)
    assert len(gateway.records()) == before


def test_plain_http_to_the_tls_port_gets_no_api(https: Any) -> None:
    gateway, _ = https
    reply = gateway.raw(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply is None or reply.status != 200


def test_a_client_trusting_another_ca_refuses_the_gateway(https: Any, tmp_path: Path) -> None:
    gateway, _ = https
    other = CA(tmp_path / "other", "another CA")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _get(gateway, _client(other.cert))


def test_min_version_13_refuses_tls_12(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path, listen=_tls(tmp_path / "pki", min_version="1.3")) as gateway:
        ca = tmp_path / "pki" / "ca.crt"
        assert _get(gateway, _client(ca))[0] == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            _get(gateway, _client(ca, ssl.TLSVersion.TLSv1_2))


def test_client_certificates_when_required(tmp_path: Path) -> None:
    users = CA(tmp_path / "users", "site users CA")
    alice = users.issue("alice", client=True)
    mallory = CA(tmp_path / "elsewhere", "someone else's CA").issue("mallory", client=True)
    listen = _tls(tmp_path / "pki", client_ca=users.cert)
    with gateway_in_thread(tmp_path, listen=listen) as gateway:
        ca = tmp_path / "pki" / "ca.crt"
        version, reply = _get(gateway, _client(ca, cert=alice))
        assert reply.status == 200
        # The record says who the TLS layer let in, not only which key was used.
        der = x509.load_pem_x509_certificate(alice.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        assert gateway.record_of(reply)["client_cert"] == {
            "subject": "CN=alice",
            "sha256": hashlib.sha256(der).hexdigest(),
        }
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for who in (None, mallory):
                assert _refused(gateway, _client(ca, version, cert=who)), (version, who)
        # Refused handshakes never reached HTTP: only alice's call is in the log.
        calls = [r["path"] for r in gateway.records() if "event" not in r]
        assert calls == ["/v1/models"]


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CA, Issued]:
    ca = CA(tmp_path / "pki")
    return ca, ca.issue("gateway")


def _settings(issued: Issued, **change: Any) -> TLSSettings:
    return TLSSettings(**{"cert": issued.cert, "key": issued.key, **change})


def test_missing_files_are_named(pki: tuple[CA, Issued], tmp_path: Path) -> None:
    _, issued = pki
    with pytest.raises(GatewayConfigError, match=r"listen.tls.cert: .*nope.crt does not exist"):
        server_context(_settings(issued, cert=tmp_path / "nope.crt"))
    with pytest.raises(GatewayConfigError, match=r"listen.tls.key: .*nope.key does not exist"):
        server_context(_settings(issued, key=tmp_path / "nope.key"))
    with pytest.raises(GatewayConfigError, match=r"listen.tls.client_ca: .*does not exist"):
        server_context(_settings(issued, client_ca=tmp_path / "ca.pem"))


def test_a_key_not_matching_the_certificate_is_refused(pki: tuple[CA, Issued]) -> None:
    ca, issued = pki
    other = ca.issue("other")
    with pytest.raises(GatewayConfigError) as caught:
        server_context(_settings(issued, key=other.key))
    assert caught.value.message == (
        f"listen.tls.key: {other.key} is not the key of the certificate {issued.cert}"
    )


def test_files_that_are_not_pem_are_refused(pki: tuple[CA, Issued], tmp_path: Path) -> None:
    _, issued = pki
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(GatewayConfigError, match="holds no PEM certificate"):
        server_context(_settings(issued, cert=junk))
    with pytest.raises(GatewayConfigError, match="is not a PEM private key"):
        server_context(_settings(issued, key=junk))
    with pytest.raises(GatewayConfigError, match=r"listen\.tls\.client_ca: .* holds no PEM"):
        server_context(_settings(issued, client_ca=junk))
    # The key where the certificate belongs: no certificate in it.
    with pytest.raises(GatewayConfigError, match=r"listen\.tls\.cert: .* holds no PEM certificate"):
        server_context(_settings(issued, cert=issued.key))


def test_check_config_refuses_a_bad_key_before_serving(
    pki: tuple[CA, Issued], tmp_path: Path
) -> None:
    ca, issued = pki
    other = ca.issue("other")
    config = gateway_config(tmp_path, "http://127.0.0.1:9", listen={
        "plain_http": False, "tls": {"cert": str(issued.cert), "key": str(other.key)},
    })  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    for extra in (["--check-config"], []):
        done = subprocess.run(
            [str(BIN / "appliance-gateway"), "--config", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 35, done.stderr
        assert f"Error: listen.tls.key: {other.key} is not the key of the certificate" in (
            done.stderr
        )
    assert not (tmp_path / "audit").exists()  # refused before the audit log was opened


def test_a_chain_openssl_refuses_is_refused_before_it_reaches_the_served_context(
    pki: tuple[CA, Issued], tmp_path: Path
) -> None:
    """A chain the gateway's own checks pass but OpenSSL refuses (a CA's RSA-1024 key, under
    its security level) is refused by the reading: loaded into the context a listener serves
    with, OpenSSL had taken the new certificate before refusing the chain, leaving the context
    without a key and every later handshake failing while the log said the old one served on."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from appliance.gateway.tls import load_material, read_material

    _, issued = pki
    served = server_context(_settings(issued))
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - too small is the point
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak CA")])
    now = datetime.datetime.now(datetime.UTC)
    weak_ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(weak.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(weak, hashes.SHA256())
    )  # fmt: skip
    chain = tmp_path / "chain.pem"
    ca, _ = pki
    renewed = ca.issue("renewed")  # a new key, as a renewal brings
    chain.write_bytes(renewed.cert.read_bytes() + weak_ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(GatewayConfigError, match="OpenSSL refuses"):
        load_material(served, read_material(_settings(renewed, cert=chain)))
    # Still serving the certificate it had: a handshake succeeds.
    client = ssl.create_default_context(cafile=str(ca.cert))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), served.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() is not None
    finally:
        thread.join(10)
        listener.close()


def test_a_reload_that_stops_trusting_a_client_ca_is_refused(
    pki: tuple[CA, Issued], tmp_path: Path
) -> None:
    """OpenSSL only adds to a served context's trust store: a reload that dropped a client CA
    would leave it trusted while the journal said the files were reloaded."""
    from appliance.gateway.tls import check_reload, load_material, read_material

    _, issued = pki
    users = CA(tmp_path / "users", "site users CA")
    partners = CA(tmp_path / "partners", "partners CA")
    both = tmp_path / "both.pem"
    both.write_bytes(users.cert.read_bytes() + partners.cert.read_bytes())
    served = server_context(_settings(issued, client_ca=both))
    started = read_material(_settings(issued, client_ca=both))
    for narrower, gone in ((_settings(issued, client_ca=users.cert), 1), (_settings(issued), 2)):
        material = read_material(narrower)
        with pytest.raises(GatewayConfigError, match=rf"stop trusting {gone} client CA"):
            load_material(served, material)
        with pytest.raises(GatewayConfigError, match=rf"stop trusting {gone} client CA"):
            check_reload(started, material)  # the supervisor's check, before any push
    # Client certificates are still required by the served context.
    assert served.verify_mode == ssl.CERT_REQUIRED
    # A CA added, or the same files again, reloads.
    more = CA(tmp_path / "more", "more CA")
    wider = tmp_path / "wider.pem"
    wider.write_bytes(both.read_bytes() + more.cert.read_bytes())
    load_material(served, read_material(_settings(issued, client_ca=wider)))
    load_material(served, read_material(_settings(issued, client_ca=wider)))
    # Without client certificates at the start, any change reloads.
    plain = server_context(_settings(issued))
    load_material(plain, read_material(_settings(issued, client_ca=users.cert)))
