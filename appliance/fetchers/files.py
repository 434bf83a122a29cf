"""files: the spec's http(s) and file:// artifacts pinned by sha256, one component each."""

from __future__ import annotations

from appliance.bundle.manifest import Component
from appliance.fetchers.download import Fetched, Wanted, url_basename
from appliance.fetchers.source import Job, Part, Request, blob_entry
from appliance.spec.models import FileArtifact


class FilesSource:
    """The spec's ``files:``: each one component, its blob named by the URL's file name."""

    def check(self, request: Request) -> list[FileArtifact] | None:
        return list(request.spec.files) or None

    def fetch(self, job: Job, plan: list[FileArtifact]) -> list[tuple[FileArtifact, Fetched]]:
        fetched = job.fetcher.fetch_all(Wanted(f"file {f.name}", f.url, f.sha256) for f in plan)
        return list(zip(plan, fetched, strict=True))

    def describe(self, job: Job, fetched: list[tuple[FileArtifact, Fetched]]) -> Part:
        part = Part()
        for artifact, item in fetched:
            part.add(
                Component(
                    name=artifact.name, kind="file", version=artifact.version, source=artifact.url
                ),
                blob_entry(
                    artifact.sha256, item.size, "file", artifact.name, url_basename(artifact.url)
                ),
            )
        return part
