"""Site models in the depot's S3 store (``object_store: minio``), through the store interface.

Where the depot runs an S3 store, the object_store role has written its client configuration
(``store.json``, root only) on it; a site model's files then go into the store's models bucket
by digest with ``publish`` (each upload checked by the server against its sha256, read back,
and never uploaded again once there), and the signed site manifest is copied beside them under
``site/``. Every GPU node then fetches a site model by digest like a bundle model. Without
that configuration (``object_store: filesystem``) the directory store in models.py is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from appliance.errors import SiteModelError
from appliance.site import manifest as site_manifest
from appliance.site.manifest import SiteFile
from appliance.store import (
    PublishReport,
    S3Store,
    StoreError,
    load_config,
    open_store,
    publish,
)

PURPOSE = "models"
RECORD_PREFIX = "site"


def open_s3(config: Path | None) -> S3Store | None:
    """The depot's S3 store when ``config`` (store.json) exists and names one, else None."""
    if config is None or not config.is_file():
        return None
    try:
        store = open_store(load_config(str(config)))
    except (StoreError, OSError, ValueError, KeyError) as exc:
        raise SiteModelError(
            f"cannot read the object store's configuration {config}: {exc}",
            hint="site models go into the depot's store: run appliance models as root on the "
            "depot, after an install that set it up; nothing was changed",
        ) from exc
    return store if isinstance(store, S3Store) else None


def _failed(store: S3Store, what: str, exc: Exception) -> SiteModelError:
    return SiteModelError(
        f"the object store {store.endpoint} refused or failed {what}: {exc}",
        hint="check that the object store runs on the depot (systemctl status "
        "appliance-object-store), then run the command again: objects already there are not "
        "uploaded twice",
    )


def reachable(store: S3Store) -> None:
    """The store answers (its models bucket exists or is made): checked before the site
    manifest changes, so a store that is down leaves everything as it was."""
    try:
        store.ensure_bucket(PURPOSE)
    except (StoreError, OSError) as exc:
        raise _failed(store, "a request for its models bucket", exc) from exc


def publish_files(store: S3Store, files: Sequence[tuple[Path, SiteFile]]) -> PublishReport:
    """Upload each file under its digest unless there; each upload is read back and hashed.
    The server refuses bytes that changed since they were hashed (the payload is signed)."""
    try:
        store.ensure_bucket(PURPOSE)
        return publish(store, PURPOSE, [(f.sha256, str(path), f.size) for path, f in files])
    except (StoreError, OSError) as exc:
        raise _failed(store, "the upload of the model's files", exc) from exc


def publish_records(store: S3Store, site_dir: Path) -> None:
    """A copy of the signed site manifest in the store, beside the objects it names: the
    signature first, so a reader never sees a manifest newer than its signature."""
    try:
        for name in (site_manifest.SIGNATURE, site_manifest.MANIFEST, site_manifest.PUBLIC_KEY):
            store.put_bytes(PURPOSE, f"{RECORD_PREFIX}/{name}", (site_dir / name).read_bytes())
    except (StoreError, OSError) as exc:
        raise _failed(store, "the copy of the site manifest", exc) from exc


def holds(store: S3Store, file: SiteFile) -> bool:
    """Whether the store has ``file``'s object, written by publish (its digest in the
    metadata) with the recorded size."""
    try:
        info = store.stat(PURPOSE, file.sha256)
    except (StoreError, OSError) as exc:
        raise _failed(store, f"a look-up of {file.name} (sha256 {file.sha256})", exc) from exc
    return info is not None and info.size == file.size and info.sha256 == file.sha256


def remove_objects(store: S3Store, digests: Iterable[str]) -> None:
    try:
        for sha256 in sorted(set(digests)):
            if store.stat(PURPOSE, sha256) is not None:
                store.remove(PURPOSE, f"sha256/{sha256}")
    except (StoreError, OSError) as exc:
        raise _failed(store, "the removal of the model's files", exc) from exc
