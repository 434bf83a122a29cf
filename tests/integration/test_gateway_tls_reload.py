"""The certificate of a gateway with worker processes: every worker serves the one the
supervisor read (supervisor.py, tls.TLSMaterial), also a worker started again after the operator
replaced the files on disk; a SIGHUP (``systemctl reload``) moves all of them to the new files at
once, and files that do not pass the checks leave the old certificate in use.

Which worker took a connection is the kernel's choice (SO_REUSEPORT spreads them by address and
port): each look at "what the gateway serves" opens enough connections that both workers are all
but certainly among them, and collects every certificate seen.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures.gateway_process import Running, gateway_process
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port
from tests.fixtures.tls import make_pki

pytestmark = pytest.mark.slow

LOOKS = 24  # connections per look: both workers among them but with odds 2**-23


def fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def served(port: int) -> set[str]:
    """The SHA-256 of each certificate the gateway served on ``LOOKS`` new connections."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # compared, not trusted
    seen = set()
    for _ in range(LOOKS):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            seen.add(hashlib.sha256(der).hexdigest())
    return seen


def workers(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def replace(source: Path, target: Path) -> None:
    """As an operator's tooling would: the new file renamed over the old one."""
    shutil.copyfile(source, target.with_suffix(".new"))
    target.with_suffix(".new").replace(target)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The directory the gateway reads, and the first and the second certificate's PKI."""
    root = tmp_path_factory.mktemp("pki")
    first, second = make_pki(root / "first"), make_pki(root / "second")
    live = root / "live"
    live.mkdir()
    shutil.copyfile(first.cert, live / "server.crt")
    shutil.copyfile(first.key, live / "server.key")
    return live, first.cert.parent, second.cert.parent


@contextmanager
def tls_gateway(root: Path, live: Path, workers: int) -> Iterator[Running]:
    """``appliance-gateway`` with ``workers`` serving HTTPS from the files in ``live``."""
    tls = {"cert": str(live / "server.crt"), "key": str(live / "server.key")}
    listen = {"plain_http": False, "tls": tls}
    with (
        serve_in_thread(free_port()) as backend,
        gateway_process(root, backend, workers, listen=listen) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, Path, Path]
            ) -> Iterator[Running]:  # fmt: skip
    with tls_gateway(tmp_path_factory.mktemp("gateway-tls"), pki[0], 2) as running:
        yield running


def test_a_restarted_worker_serves_the_certificate_of_its_siblings(
    gateway: Running, pki: tuple[Path, Path, Path]
) -> None:
    live, first, second = pki
    assert gateway.process is not None
    supervisor = gateway.process.pid
    old, new = fingerprint(first / "server.crt"), fingerprint(second / "server.crt")
    assert served(gateway.port) == {old}
    replace(second / "server.crt", live / "server.crt")
    replace(second / "server.key", live / "server.key")
    before = workers(supervisor)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    found = gateway.until(lambda: len(w := workers(supervisor)) == 2 and victim not in w and w, 30)
    (started,) = found - before
    gateway.until(lambda: f"(pid {started}) serving" in gateway.log.read_text(), 30)
    # Without the supervisor's reading handed down, the new worker read the files on disk.
    assert served(gateway.port) == {old}

    os.kill(supervisor, signal.SIGHUP)  # systemctl reload: all of them, together
    assert gateway.until(lambda: served(gateway.port) == {new}, 10)
    assert "TLS certificate reloaded" in gateway.log.read_text()

    (live / "server.key").write_text("not a key\n")  # a half-done rotation
    os.kill(supervisor, signal.SIGHUP)
    gateway.until(lambda: "TLS files not reloaded" in gateway.log.read_text(), 10)
    assert served(gateway.port) == {new}


def test_a_single_process_reloads_its_certificate_on_sighup(tmp_path: Path) -> None:
    first, second = make_pki(tmp_path / "first"), make_pki(tmp_path / "second")
    live = tmp_path / "live"
    live.mkdir()
    for source in (first.cert, first.key):
        shutil.copyfile(source, live / source.name)
    (tmp_path / "gateway").mkdir()
    with tls_gateway(tmp_path / "gateway", live, 1) as single:
        assert single.process is not None
        port = single.port
        assert served(port) == {fingerprint(first.cert)}
        replace(second.cert, live / "server.crt")
        replace(second.key, live / "server.key")
        assert served(port) == {fingerprint(first.cert)}  # until told
        single.process.send_signal(signal.SIGHUP)
        assert single.until(lambda: served(port) == {fingerprint(second.cert)}, 10)
