"""appliance verify's judgement of the registry's evidence (the registry role's audit)."""

from __future__ import annotations

from appliance.install.verify_models import Check, judge_registry

IMAGES = "registry: every image present with its digest"
PUSH = "registry: the pull identity cannot push"


def _image(ref: str, present: bool, problem: str | None = None) -> dict[str, object]:
    return {"ref": ref, "digest": "sha256:" + "d" * 64, "present": present, "problem": problem}


def test_a_host_without_the_registry_has_no_registry_checks() -> None:
    assert judge_registry("gpu-1", None) == []


def test_every_image_present_and_a_refused_push_pass() -> None:
    evidence = {"images": [_image("a", True), _image("b", True)], "push_status": 403}
    assert judge_registry("depot-1", evidence) == [
        Check("depot-1", IMAGES, True, "2 images, each by its digest, read as the pull identity"),
        Check("depot-1", PUSH, True, "a blob upload as the pull identity got HTTP 403"),
    ]


def test_a_missing_image_and_an_accepted_push_fail_with_what_was_seen() -> None:
    evidence = {
        "images": [_image("a", True), _image("ghcr.io/x/b@sha256:1", False, "manifest not found")],
        "push_status": 202,
    }
    assert judge_registry("depot-1", evidence) == [
        Check("depot-1", IMAGES, False, "ghcr.io/x/b@sha256:1: manifest not found"),
        Check("depot-1", PUSH, False, "a blob upload as the pull identity got HTTP 202"),
    ]


def test_no_evidence_fails_with_the_reason() -> None:
    evidence = {"failed": True, "msg": "cannot reach the registry at 127.0.0.1:5000: refused"}
    assert judge_registry("depot-1", evidence) == [
        Check("depot-1", IMAGES, False, "cannot reach the registry at 127.0.0.1:5000: refused")
    ]


def test_an_empty_image_list_is_not_a_pass() -> None:
    checks = judge_registry("depot-1", {"images": [], "push_status": 403})
    assert checks[0].passed is False
