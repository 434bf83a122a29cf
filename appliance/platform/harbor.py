"""Harbor's ``harbor.yml``, rendered for an appliance.

The offline installer's ``prepare`` step reads harbor.yml and renders every component's
configuration from it; a key it does not know is ignored without a word, so the tests check
ours against the key structure of the pinned release's own ``make/harbor.yml.tmpl``.
Harbor then serves HTTPS only with the site CA's certificate; its plain HTTP port only
redirects, and the firewall keeps it inside the boundary. Trivy never updates its database:
there is nothing to update from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The installer release this file is rendered for (harbor.yml's ``_version``).
HARBOR_VERSION = "2.15.0"


@dataclass(frozen=True)
class HarborSettings:
    hostname: str
    certificate: str
    private_key: str
    data_volume: str = "/var/lib/appliance/harbor"
    https_port: int = 443
    http_port: int = 80
    log_dir: str = "/var/log/harbor"


# Filled in on the depot by the harbor role from the passwords it generated there (root-only,
# no_log): the installer never holds them and they never enter the bundle.
SECRET_KEYS = (("harbor_admin_password",), ("database", "password"))


def harbor_yml(settings: HarborSettings) -> dict[str, Any]:
    """harbor.yml for ``settings``, without the two passwords (SECRET_KEYS)."""
    return {
        "hostname": settings.hostname,
        "http": {"port": settings.http_port},
        "https": {
            "port": settings.https_port,
            "certificate": settings.certificate,
            "private_key": settings.private_key,
        },
        "database": {
            "max_idle_conns": 100,
            "max_open_conns": 900,
            "conn_max_lifetime": "5m",
            "conn_max_idle_time": 0,
        },
        # Outside every release directory: registry storage is data, upgrades keep it.
        "data_volume": settings.data_volume,
        "trivy": {
            "ignore_unfixed": False,
            "skip_update": True,
            "skip_java_db_update": True,
            "offline_scan": True,
            "security_check": "vuln",
            "insecure": False,
            "timeout": "5m0s",
        },
        "jobservice": {
            "max_job_workers": 10,
            "max_job_duration_hours": 24,
            "job_loggers": ["STD_OUTPUT", "FILE"],
            "logger_sweeper_duration": 1,
        },
        "notification": {"webhook_job_max_retry": 3, "webhook_job_http_client_timeout": 3},
        "log": {
            "level": "info",
            "local": {"rotate_count": 50, "rotate_size": "200M", "location": settings.log_dir},
        },
        "_version": HARBOR_VERSION,
        # No proxy: there is nowhere to go.
        "proxy": {"http_proxy": "", "https_proxy": "", "no_proxy": "", "components": []},
        "upload_purging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False},
        "cache": {"enabled": False, "expire_hours": 24},
    }


def project_name(upstream_host: str) -> str:
    """The Harbor project holding one upstream registry's images (the local layout keeps the
    upstream host as the first path component). Harbor's project names are lowercase letters,
    digits and ``._-`` separators: a host with a port cannot be one."""
    name = upstream_host.lower()
    if ":" in name:
        raise ValueError(
            f"upstream registry {upstream_host!r} has a port: Harbor cannot name a project after "
            "it; use registry: distribution for images from it"
        )
    return name
