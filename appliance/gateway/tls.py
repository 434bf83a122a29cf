"""The gateway's HTTPS: a server context from the config's certificate, key and client CA.

Everything is checked before the gateway serves (and by ``--check-config``, which the role
runs before it replaces the config): each file readable, the certificate and key PEM that
parse, the key the one the certificate certifies, the client CA a certificate. Each problem is
a GatewayConfigError naming the file and the field, never OpenSSL's bare reason code.

Only a file's PEM blocks are kept: text around them (a site's comment, the "Bag Attributes" that
``openssl pkcs12`` writes with a friendlyName in any encoding) is ignored, as OpenSSL ignores it.
The blocks themselves are base64 text: a byte that is not ASCII inside one is refused with its
line. What is kept is ASCII, as the channel to the workers carries it.

TLS 1.2 is the least version offered (1.3 when the config says so); TLS 1.2 only with
forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305), as Mozilla's
"intermediate" profile; no compression, no renegotiation. TLS 1.3's suites are OpenSSL's
defaults, all AEAD.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import ssl
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from appliance.errors import GatewayConfigError
from appliance.gateway.config import TLSSettings

LOG = logging.getLogger("appliance.gateway")
# What each served context was last given (load_material), for check_reload.
_LOADED: weakref.WeakKeyDictionary[ssl.SSLContext, TLSMaterial] = weakref.WeakKeyDictionary()

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!MD5"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# A PEM block: BEGIN and END lines with the same label (CERTIFICATE, EC PRIVATE KEY ...).
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9][A-Z0-9 ]*)-----.*?-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class TLSMaterial:
    """The certificate chain, key and client CA as read once, so that every process serving
    the port serves the same ones: with worker processes the supervisor reads them (at start
    and on SIGHUP) and hands them to each worker, also to one started again after the files
    changed on disk (supervisor.py)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def to_json(self) -> dict[str, str | None]:
        ca = None if self.client_ca is None else self.client_ca.decode("ascii")
        return {"cert": self.cert.decode("ascii"), "key": self.key.decode("ascii"), "client_ca": ca}

    @classmethod
    def from_json(cls, data: dict[str, str | None]) -> TLSMaterial:
        ca = data.get("client_ca")
        return cls(str(data["cert"]).encode("ascii"), str(data["key"]).encode("ascii"),
                   None if ca is None else ca.encode("ascii"))  # fmt: skip


def _read(path: Path, field: str) -> bytes:
    try:
        return _pem_blocks(path.read_bytes(), path, field)
    except FileNotFoundError:
        raise GatewayConfigError(
            f"listen.tls.{field}: {path} does not exist",
            hint="give the path of the PEM file, or issue it again (gateway_tls in the role)",
        ) from None
    except OSError as error:
        raise GatewayConfigError(
            f"listen.tls.{field}: cannot read {path}: {error.strerror}",
            hint="the gateway's user must be able to read it (the key: 0600, owned by that user)",
        ) from None


def _pem_blocks(data: bytes, path: Path, field: str) -> bytes:
    """The file's PEM blocks alone (see the module text); a file without any as it is, to be
    refused for what it holds."""
    blocks = list(_BLOCK.finditer(data))
    if not blocks:
        return data
    for block in blocks:
        if not block.group(0).isascii():
            at = block.start() + next(i for i, byte in enumerate(block.group(0)) if byte > 0x7F)
            line = data.count(b"\n", 0, at) + 1
            raise GatewayConfigError(
                f"listen.tls.{field}: {path} line {line} holds a byte "
                "that is not ASCII inside its PEM block (base64 text): the file was changed or "
                "converted",
                hint="issue it again, or copy it again as the PKI issued it",
            )
    return b"".join(block.group(0) + b"\n" for block in blocks)


def _certificates(data: bytes, path: Path, field: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
        data.decode("ascii")  # PEM is ASCII: what the channel to the workers carries
    except ValueError:
        found = []
    if not found:
        raise GatewayConfigError(
            f"listen.tls.{field}: {path} holds no PEM certificate",
            hint="a PEM file starts with -----BEGIN CERTIFICATE-----",
        )
    return found


def read_material(settings: TLSSettings) -> TLSMaterial:
    """The files' contents, each read once and checked together (see the module text)."""
    material = TLSMaterial(
        _read(settings.cert, "cert"),
        _read(settings.key, "key"),
        None if settings.client_ca is None else _read(settings.client_ca, "client_ca"),
    )
    check_material(settings, material)
    # What only OpenSSL refuses (a chain certificate's key too small for its security level)
    # is found in a context of its own: loaded into the context a listener serves with, it
    # would leave that context with the new certificate and no key, every new handshake failing.
    server_context(settings, material)
    return material


def check_files(settings: TLSSettings) -> x509.Certificate:
    """The server certificate, once every file is checked (see the module text)."""
    return check_material(settings, read_material(settings))


def check_material(settings: TLSSettings, material: TLSMaterial) -> x509.Certificate:
    chain = _certificates(material.cert, settings.cert, "cert")
    try:
        key = serialization.load_pem_private_key(material.key, password=None)
        material.key.decode("ascii")
    except TypeError:
        raise GatewayConfigError(
            f"listen.tls.key: {settings.key} is encrypted",
            hint="the gateway starts unattended: give it the key without a passphrase (0600)",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise GatewayConfigError(
            f"listen.tls.key: {settings.key} is not a PEM private key ({error})"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, raw) != chain[0].public_key().public_bytes(pem, raw):
        raise GatewayConfigError(
            f"listen.tls.key: {settings.key} is not the key of the certificate {settings.cert}",
            hint="the certificate's first entry must be the server certificate made for this key",
        )
    if settings.client_ca is not None and material.client_ca is not None:
        _certificates(material.client_ca, settings.client_ca, "client_ca")
    expires = chain[0].not_valid_after_utc
    if expires < datetime.now(UTC):
        LOG.warning("the gateway's certificate %s expired on %s", settings.cert, expires)
    return chain[0]


def server_context(settings: TLSSettings, material: TLSMaterial | None = None) -> ssl.SSLContext:
    """The context the gateway's listener serves with: from ``material`` when given (a
    worker's, from the supervisor), else from the files."""
    if material is None:
        material = read_material(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    load_material(context, material)
    return context


def _client_cas(pem: bytes | None) -> set[bytes]:
    if pem is None:
        return set()
    return {
        certificate.public_bytes(serialization.Encoding.DER)
        for certificate in x509.load_pem_x509_certificates(pem)
    }


def check_reload(served: TLSMaterial | None, material: TLSMaterial) -> None:
    """Refuse a reload that takes a client CA away (or client certificates off): OpenSSL only
    adds to a served context's trust store, so the running gateway would go on trusting it
    while the journal said the files were reloaded. A restart applies such a change."""
    if served is None or served.client_ca is None:
        return
    gone = _client_cas(served.client_ca) - _client_cas(material.client_ca)
    if gone:
        raise GatewayConfigError(
            f"listen.tls.client_ca: the new files stop trusting {len(gone)} client CA(s) the "
            "running gateway trusts, which a reload cannot take back",
            hint="restart the gateway (systemctl restart appliance-gateway) to apply them; until "
            "then it serves with the files it has",
        )


def load_material(context: ssl.SSLContext, material: TLSMaterial) -> None:
    """Put ``material`` into ``context``: at start, and on a reload into the context the
    listener already serves with, so that new connections get the new certificate (those
    open keep theirs). A client CA is added to those trusted; a reload that would take one
    away is refused (check_reload)."""
    check_reload(_LOADED.get(context), material)
    try:
        # OpenSSL reads a chain and key only from files: memory-only files, never on disk.
        cert, key = os.memfd_create("gateway-cert"), os.memfd_create("gateway-key")
        try:
            for fd, data in ((cert, material.cert), (key, material.key)):
                with os.fdopen(os.dup(fd), "wb") as sink:
                    sink.write(data)
            context.load_cert_chain(f"/proc/self/fd/{cert}", f"/proc/self/fd/{key}")
        finally:
            os.close(cert)
            os.close(key)
        if material.client_ca is not None:
            context.load_verify_locations(cadata=material.client_ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as error:  # checked before; what OpenSSL still refuses
        raise GatewayConfigError(f"listen.tls: OpenSSL refuses the files: {error}") from None
    _LOADED[context] = material


def client_certificate(transport: Any) -> dict[str, str] | None:
    """The subject and SHA-256 fingerprint of the certificate the client authenticated with on
    this connection (client-certificate auth), for its calls' audit records; None without."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return _describe(der) if der else None


# Parsed once per certificate, not per call: a few hundred users keep their certificates.
@functools.lru_cache(maxsize=1024)
def _describe(der: bytes) -> dict[str, str]:
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return {"subject": subject, "sha256": hashlib.sha256(der).hexdigest()}
