"""Names inside a bundle, and the one rule for which relative paths are safe."""

from __future__ import annotations

from pathlib import PurePosixPath

BLOBS = "blobs/sha256"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.json.sig"
SHA256SUMS = "SHA256SUMS"
SHA256SUMS_SIG = "SHA256SUMS.sig"
SBOM = "sbom.cdx.json"
INSTALL_SH = "install.sh"
REPO = "repo"

# Signed over, not listed in the manifest: the manifest cannot list its own digest.
TRUST_FILES = (MANIFEST, MANIFEST_SIG, SHA256SUMS, SHA256SUMS_SIG)
# Sent first in a packed bundle, so a reader can check the signature before any payload.
PACK_FIRST = (MANIFEST, MANIFEST_SIG, SHA256SUMS, SHA256SUMS_SIG)


def blob_path(hexdigest: str) -> str:
    return f"{BLOBS}/{hexdigest}"


def unsafe_reason(path: str) -> str | None:
    """Why ``path`` (as written in a manifest or tar header) may not appear in a bundle."""
    if not path or path in {".", "./"}:
        return "empty path"
    if "\\" in path or "\x00" in path:
        return "backslash or NUL in path"
    if path.startswith("/"):
        return "absolute path"
    parts = PurePosixPath(path).parts
    if ".." in path.split("/"):
        return "'..' in path"
    if str(PurePosixPath(*parts)) != path.removeprefix("./").rstrip("/"):
        return "path is not normalized"
    return None
