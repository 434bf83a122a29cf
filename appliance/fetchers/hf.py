"""hf: model files from a Hugging Face repository at a pinned commit.

huggingface_hub answers one question: what the pinned commit holds (the model info API with
per-file metadata). The bytes come through appliance's own downloader, like every other
artifact: streamed into the blob store, hashed on the way, resumable, retried, cached by
sha256, in parallel across files.

What each check proves:
- The commit the hub reports must be the pinned revision: the file list belongs to that
  commit and not to whatever a branch points at today.
- LFS files (the weights): the hub lists the sha256 of the content (the LFS object id). The
  download must hash to it, and that same digest goes into the signed manifest, so one digest
  follows the file from the hub to the isolated host.
- Files kept in git itself (configs, tokenizers; the hub allows up to 10 MB): the hub lists
  only the git blob id, sha1 over ``blob <size>\\0`` + content. A match proves the bytes are
  the ones in the pinned commit's tree, against corruption and silent changes; sha1 is not
  collision resistant, so it is weaker against someone able to craft colliding files (as
  is the commit pin itself, which is a sha1 too). The manifest records the sha256 we compute.
- All expected digests come from the hub over TLS: they prove the bytes match what the hub
  says the commit holds, not that the hub is honest.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from appliance import __version__
from appliance.bundle.layout import unsafe_reason
from appliance.errors import BuildError, ChecksumMismatchError, FetchError
from appliance.fetchers.download import Fetched, Fetcher, Wanted
from appliance.fetchers.http import GitBlob, RetryPolicy
from appliance.fetchers.local_models import ModelFile, ModelsFetched, models_part
from appliance.fetchers.source import Job, Part, Request
from appliance.spec.models import HuggingFaceModel

if TYPE_CHECKING:
    from huggingface_hub.hf_api import BlobLfsInfo

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFile:
    path: str  # inside the repository
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # files kept in git itself


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def repo_id(model: HuggingFaceModel) -> str:
    return model.source.removeprefix("hf://")


def list_files(
    model: HuggingFaceModel, hub: str, token: str | None, policy: RetryPolicy | None = None
) -> list[HubFile]:
    """The files of the pinned commit that include/exclude select, with expected digests."""
    # Imported here: a build-machine dependency (the build extra), and slow to import.
    import httpx
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Without this, huggingface_hub's user agent reports the torch version and first fetches
    # an "agent harness" list from its default endpoint, a request appliance did not ask for
    # (and, in tests, one to the real hub). The build asks the hub for the file list alone.
    constants.HF_HUB_DISABLE_TELEMETRY = True

    repo = repo_id(model)
    # token=False: never fall back to a token stored in ~/.cache/huggingface by someone else.
    api = HfApi(
        endpoint=hub, token=token or False, library_name="appliance", library_version=__version__
    )
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.backoff * (2 ** (attempt - 1)))
        try:
            info = api.model_info(
                repo, revision=model.revision, files_metadata=True, timeout=policy.timeout
            )
            break
        except (RepositoryNotFoundError, GatedRepoError) as exc:
            raise FetchError(
                f"model {model.name}: {hub} has no repository {repo} this machine may read "
                f"({type(exc).__name__})",
                hint="check models[].source; for a gated or private repository set HF_TOKEN to "
                "a token that has access",
            ) from exc
        except RevisionNotFoundError as exc:
            raise FetchError(
                f"model {model.name}: {repo} has no revision {model.revision}",
                hint="pin a commit that exists in the repository (models[].revision)",
            ) from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is None or status < 500:
                raise FetchError(
                    f"model {model.name}: the hub refused the file list of {repo}: {exc}",
                    hint="check models[].source and HF_ENDPOINT",
                ) from exc
            last = f"HTTP {status}"
        except (httpx.HTTPError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
    else:
        raise FetchError(
            f"model {model.name}: cannot read the file list of {repo} from {hub} after "
            f"{policy.attempts} attempts: {last}",
            hint="check that this machine reaches the hub (HF_ENDPOINT)",
        )
    if info.sha != model.revision:
        raise ChecksumMismatchError(
            f"model {model.name}: the hub answered for commit {info.sha} of {repo}, expected "
            f"the pinned revision {model.revision}",
            hint="the hub (or something in between) did not serve the pinned commit; nothing "
            "was downloaded",
        )
    if info.siblings is None:
        raise FetchError(f"model {model.name}: the hub sent no file list for {repo}")
    files = [_hub_file(model, s.rfilename, s.size, s.blob_id, s.lfs) for s in info.siblings]
    selected = [f for f in files if selected_by(f.path, model.include, model.exclude)]
    if not selected:
        raise BuildError(
            f"model {model.name}: include/exclude select none of the {len(files)} files of "
            f"{repo} at {model.revision}",
            hint="fix models[].include / models[].exclude (globs on paths in the repository)",
        )
    return sorted(selected, key=lambda f: f.path)


def selected_by(path: str, include: list[str], exclude: list[str]) -> bool:
    """huggingface_hub's rule (snapshot_download's allow/ignore patterns): fnmatch, case
    sensitive, ``*`` crosses '/', and a pattern ending in '/' means everything under it."""

    def matches(patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)

    return (not include or matches(include)) and not (exclude and matches(exclude))


def _hub_file(
    model: HuggingFaceModel,
    path: str,
    size: int | None,
    blob_id: str | None,
    lfs: BlobLfsInfo | None,
) -> HubFile:
    # The install side places each file at this path: nothing may point outside the model.
    reason = unsafe_reason(path)
    if reason is not None:
        raise FetchError(
            f"model {model.name}: the hub lists a file '{path}' ({reason})",
            hint="refusing the repository: a model file may not name a path outside the model",
        )
    if lfs is not None:
        if _SHA256.match(str(lfs.sha256)) and isinstance(lfs.size, int):
            return HubFile(path, lfs.size, lfs.sha256, None)
    elif blob_id and _SHA1.match(blob_id) and isinstance(size, int):
        return HubFile(path, size, None, blob_id)
    raise FetchError(
        f"model {model.name}: the hub gives no usable digest or size for '{path}'",
        hint="without a digest the file cannot be checked; exclude it (models[].exclude) if "
        "the model does not need it",
    )


def fetch_hf_model(
    model: HuggingFaceModel, fetcher: Fetcher
) -> tuple[list[ModelFile], list[Fetched]]:
    """Download the selected files of ``model`` into the fetcher's store, each checked."""
    hub, token = endpoint(), _token()
    files = list_files(model, hub, token, fetcher.policy)
    repo = repo_id(model)
    auth = (("Authorization", f"Bearer {token}"),) if token else ()
    wanted = [
        Wanted(
            f"model {model.name} {f.path}",
            f"{hub}/{repo}/resolve/{quote(model.revision, safe='')}/{quote(f.path)}",
            f.sha256,
            f.size,
            git_blob=GitBlob(f.git_sha1, f.size) if f.git_sha1 else None,
            headers=auth,
        )
        for f in files
    ]
    fetched = fetcher.fetch_all(wanted)
    return [
        ModelFile(f.path, item.sha256, item.size) for f, item in zip(files, fetched, strict=True)
    ], fetched


class HfModelsSource:
    """hf:// models: the pinned commit's files, each checked against the hub's digest."""

    def check(self, request: Request) -> list[HuggingFaceModel] | None:
        models = [m for m in request.spec.models if isinstance(m, HuggingFaceModel)]
        if models and importlib.util.find_spec("huggingface_hub") is None:
            raise BuildError(
                f"model {models[0].name}: huggingface_hub is not installed; it lists the files "
                "of hf:// models",
                hint="install appliance with its build extra: pip install 'appliance[build]'",
            )
        return models or None

    def fetch(self, job: Job, plan: list[HuggingFaceModel]) -> ModelsFetched:
        fetched: ModelsFetched = []
        for model in plan:
            files, _ = fetch_hf_model(model, job.fetcher)
            fetched.append((model, model.revision, files))
        return fetched

    def describe(self, job: Job, fetched: ModelsFetched) -> Part:
        return models_part(fetched)
