"""The site manifest: which site models exist, each file with its sha256, signed on site.

``<site dir>/models.json`` is canonical JSON; ``models.json.sig`` an SSHSIG signature in the
``appliance-site-models`` namespace by ``site-key`` (ed25519, made on site at first use, root
only, never in a bundle or a log), whose public half ``site-key.pub`` lies beside it. A stock
tool checks it too::

    ssh-keygen -Y verify -f <(echo "site $(cut -d' ' -f1,2 site-key.pub)") -I site \\
        -n appliance-site-models -s models.json.sig < models.json
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.bundle.layout import unsafe_reason
from appliance.bundle.manifest import canonical_json, files_digest
from appliance.bundle.signing import sign_bytes, verify_bytes
from appliance.errors import ApplianceError, Problem, SiteModelError
from appliance.names import NAME_RE

NAMESPACE = "appliance-site-models"
MANIFEST = "models.json"
SIGNATURE = "models.json.sig"
PRIVATE_KEY = "site-key"
PUBLIC_KEY = "site-key.pub"
DOCUMENT_KIND = "appliance-site-models"
NAME_RULE = (
    "1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(it becomes a directory and a unit name on every host)"
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str) -> str:
    """``name`` if it can name a model on every host, else a SiteModelError saying the rule."""
    if not NAME_RE.match(name):
        raise SiteModelError(
            f"model name {name!r} is not allowed: use {NAME_RULE}",
            hint="pass another --name, e.g. --name my-model-v2",
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteFile(_Strict):
    name: str  # the file's path inside the model directory
    sha256: Annotated[str, Field(pattern=_HEX64.pattern)]
    size: Annotated[int, Field(ge=0)]

    @field_validator("name")
    @classmethod
    def _safe(cls, name: str) -> str:
        reason = unsafe_reason(name)
        if reason:
            raise ValueError(f"{name!r}: {reason}")
        return name


class SiteModel(_Strict):
    name: str
    format: str
    digest: str
    added: str
    files: Annotated[list[SiteFile], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(f"{name!r}: a model name is {NAME_RULE}")
        return name

    @model_validator(mode="after")
    def _digest_names_the_files(self) -> SiteModel:
        if self.digest != files_digest([(f.name, f.sha256) for f in self.files]):
            raise ValueError(f"model {self.name}: digest does not match its files")
        return self

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class SiteManifest(_Strict):
    kind: str = DOCUMENT_KIND
    version: int = 1
    models: list[SiteModel] = []

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[SiteModel]) -> list[SiteModel]:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        return sorted(models, key=lambda m: m.name)

    def model(self, name: str) -> SiteModel | None:
        return next((m for m in self.models if m.name == name), None)

    def canonical(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


def load(site_dir: Path) -> SiteManifest:
    """The site manifest of ``site_dir``, its signature checked with the site's public key
    before anything in it is believed; an empty one when no site model was ever added."""
    manifest, signature, public = (site_dir / n for n in (MANIFEST, SIGNATURE, PUBLIC_KEY))
    if not manifest.exists() and not signature.exists():
        return SiteManifest()
    try:
        data, sig = manifest.read_bytes(), signature.read_bytes()
    except OSError as exc:
        raise SiteModelError(
            f"site manifest {manifest}: cannot read it or its signature ({exc.strerror}: "
            f"{exc.filename})",
            hint="restore both files from a backup; serving site models needs both",
        ) from exc
    try:
        verify_bytes(public, data, sig, f"site manifest {manifest}", NAMESPACE)
    except ApplianceError as exc:
        raise SiteModelError(
            f"{exc.message}; no site model is served from it",
            hint="the site manifest or its signature changed outside `appliance models`: "
            "restore them from a backup, or check what changed before trusting it again",
        ) from exc
    try:
        return SiteManifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        problems = (
            [Problem(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
            if isinstance(exc, ValidationError)
            else [Problem("", str(exc))]
        )
        raise SiteModelError(
            f"site manifest {manifest} is signed but not a valid site manifest",
            hint="it was written by another version of appliance, or by hand",
            problems=problems,
        ) from exc


def save(site_dir: Path, manifest: SiteManifest) -> None:
    """Write and sign ``manifest``: the signature first, then the manifest it signs, each by an
    atomic rename (a reader sees either the old pair or, at worst, a pair that fails to verify
    and is refused, never an unsigned model)."""
    data = manifest.canonical()
    signature = sign_bytes(site_dir / PRIVATE_KEY, data, NAMESPACE)
    for name, content in ((SIGNATURE, signature), (MANIFEST, data)):
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=site_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp).chmod(0o644)
        Path(temp).replace(site_dir / name)


def ensure_key(site_dir: Path) -> bool:
    """Make the site's signing key at first use; True when it was made now.

    The private key is made here, in Python (no OpenSSH tools on an isolated depot), written
    0600 by its owner (root on a depot) and never printed; the public key lies beside it.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = site_dir / PRIVATE_KEY, site_dir / PUBLIC_KEY
    if private.exists() and public.exists():
        return False
    if private.exists() or public.exists():
        raise SiteModelError(
            f"{site_dir} holds only half of the site's signing key pair",
            hint=f"restore {PRIVATE_KEY} and {PUBLIC_KEY} together; a new key would not verify "
            "the site manifest signed before",
        )
    site_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    # O_EXCL and the mode at creation: the private key is never readable by others, not even
    # for a moment.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(line + b" appliance-site-models\n")
    public.chmod(0o644)
    return True
