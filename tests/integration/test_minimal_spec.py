"""The smallest spec a new user writes: one package, no stack. It must build a bundle that
installs on an isolated server with no network at all, not even a default route.

Before the roles declared their own OS packages, this bundle failed at the firewall step
("Unable to locate package python3-apt") after the host's package sources were replaced, and
preflight refused the host for its missing default route, which only k3s needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.specs import spec_text

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, test_image: str) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("minimal")
    signed_bundle(root, spec_text("minimal", packages=["jq"]), "minimal test")
    host = start_host(
        test_image,
        {root / "bundle": "/srv/bundle", root / "key.pub": "/srv/key.pub"},
        default_route=False,
    )
    try:
        yield host
    finally:
        host.remove()


def test_the_host_has_no_route_at_all(installed: Host) -> None:
    assert installed.run("ip", "-4", "route", "show", "default").stdout == ""
    assert installed.run("ip", "-4", "route", "show").stdout.strip() == ""


def test_the_minimal_bundle_installs(installed: Host) -> None:
    done = installed.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "failed=0" in done.stdout
    # What the spec asked for, and what the roles brought themselves.
    assert installed.run("jq", "--version").returncode == 0
    table = installed.run("nft", "list", "table", "inet", "appliance")
    assert table.returncode == 0 and "policy drop" in table.stdout, table.stderr
    sources = installed.run("sh", "-c", "ls /etc/apt/sources.list.d; cat /etc/apt/sources.list")
    assert sources.stdout.split() == ["appliance.sources"], sources.stdout


def test_a_second_install_changes_nothing(installed: Host) -> None:
    again = installed.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "changed=0" in again.stdout, again.stdout[-2000:]
