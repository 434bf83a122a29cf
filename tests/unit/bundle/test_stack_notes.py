"""What inspect and build-bundle say about a stack choice."""

from __future__ import annotations

from appliance.bundle.inspect import stack_notes


def test_minio_is_named_with_its_license_its_end_of_binaries_and_its_release() -> None:
    (note,) = stack_notes({"object_store": "minio"}, {"minio": "RELEASE.2025-09-07T16-13-09Z"})
    assert note == (
        "object_store minio: MinIO stopped publishing binaries in 2025 and is licensed "
        "AGPL-3.0; this bundle carries the last published server release "
        "(RELEASE.2025-09-07T16-13-09Z, the spec's files: entry 'minio'). The store is used "
        "through plain S3 only, so SeaweedFS, Garage or Ceph RGW can replace it."
    )


def test_the_default_stack_has_no_notes() -> None:
    assert stack_notes({"object_store": "filesystem"}, {}) == []
