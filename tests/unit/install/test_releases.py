"""Release order: which release may replace the current one, decided from signed manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest, parse_manifest
from appliance.errors import BundleLayoutError, ReleaseOrderError
from appliance.install.releases import Installed, decide, read_current
from tests.fixtures.bundles import new_manifest


def release(
    label: str, sequence: int | None = None, upgrades_from: tuple[str, ...] = ()
) -> Manifest:
    return new_manifest([], [], label, sequence=sequence, upgrades_from=list(upgrades_from))


def installed(manifest: Manifest) -> Installed:
    return Installed(manifest, f"sha-of-{manifest.release}")


def test_first_install_has_nothing_to_compare() -> None:
    assert decide(release("1", 1), "x", None).kind == "first"


def test_a_higher_sequence_upgrades() -> None:
    decision = decide(release("2026.12.0", 7), "x", installed(release("2026.11.0", 6)))
    assert decision.kind == "upgrade"
    assert decision.note == "upgrade from 2026.11.0 (sequence 6) to 2026.12.0 (sequence 7)"


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (release("2026.10.0", 5), "is older than"),
        (release("2026.11.0-b", 6), "is not newer (the same build sequence) than"),
        (
            release("2025.1", None),
            "is unordered (its manifest has no build sequence), so not newer",
        ),
    ],
    ids=["lower", "same-sequence", "unordered"],
)
def test_an_older_release_is_refused_naming_both(new: Manifest, why: str) -> None:
    current = installed(release("2026.11.0", 6))
    with pytest.raises(ReleaseOrderError) as caught:
        decide(new, "x", current)
    assert why in caught.value.message
    assert caught.value.message.startswith(f"release {new.release} (")
    assert caught.value.message.endswith("the installed release 2026.11.0 (sequence 6)")
    assert "--allow-downgrade" in (caught.value.hint or "")
    assert caught.value.exit_code == 36
    allowed = decide(new, "x", current, allow_downgrade=True)
    assert allowed.kind == "downgrade"


def test_a_replay_of_the_current_bundle_is_recognised_by_its_manifest_digest() -> None:
    current = release("2026.11.0", 6)
    decision = decide(current, "sha-of-2026.11.0", installed(current))
    assert decision.kind == "replay"
    assert "already current" in decision.note
    # The same label with other bytes is no replay: the same sequence is not newer.
    with pytest.raises(ReleaseOrderError):
        decide(current, "other", installed(current))


def test_upgrades_from_limits_where_an_upgrade_may_start() -> None:
    new = release("3", 3, upgrades_from=("2",))
    assert decide(new, "x", installed(release("2", 2))).kind == "upgrade"
    with pytest.raises(ReleaseOrderError) as caught:
        decide(new, "x", installed(release("1", 1)))
    assert caught.value.message == "release 3 upgrades only from 2; the installed release is 1"
    assert (caught.value.hint or "").startswith("install one of 2 first")
    # Going back on purpose ignores it: an older bundle never lists its successors.
    back = release("1", 1, upgrades_from=("0",))
    assert decide(back, "x", installed(new), allow_downgrade=True).kind == "downgrade"


def test_unordered_releases_keep_the_old_behaviour() -> None:
    assert decide(release("b"), "x", installed(release("a"))).kind == "unordered"
    # An ordered release may follow an unordered one: there is nothing to compare against.
    assert decide(release("b", 1), "x", installed(release("a"))).kind == "upgrade"


def test_read_current_reads_the_staged_manifest_behind_the_link(tmp_path: Path) -> None:
    assert read_current(tmp_path) is None
    manifest = release("2026.11.0", 6)
    directory = tmp_path / "releases" / "2026.11.0"
    directory.mkdir(parents=True)
    (directory / layout.MANIFEST).write_bytes(manifest.canonical())
    (tmp_path / "current").symlink_to("releases/2026.11.0")
    found = read_current(tmp_path)
    assert found is not None
    assert found.manifest == manifest


def test_unsafe_upgrades_from_labels_are_refused_in_any_manifest() -> None:
    data = release("2", 2, upgrades_from=("../../etc",)).canonical()
    with pytest.raises(BundleLayoutError) as caught:
        parse_manifest(data, "m.json")
    assert [p.path for p in caught.value.problems] == ["upgrades_from[0]"]


def test_old_manifests_without_order_still_parse() -> None:
    data = (
        release("1")
        .canonical()
        .replace(b',"sequence":null', b"")
        .replace(b',"upgrades_from":[]', b"")
    )
    assert b"sequence" not in data
    parsed = parse_manifest(data, "old.json")
    assert parsed.sequence is None and parsed.upgrades_from == []


def test_an_upgrade_between_orchestrators_is_refused_naming_both() -> None:
    def on(label: str, sequence: int, orchestrator: str) -> Manifest:
        return release(label, sequence).model_copy(update={"stack": {"orchestrator": orchestrator}})

    for new, current in (
        (on("2", 2, "k3s"), release("1", 1)),
        (on("3", 3, "systemd"), on("2", 2, "k3s")),
    ):
        with pytest.raises(ReleaseOrderError, match=r"cannot move an appliance") as caught:
            decide(new, "x", installed(current))
        assert current.release in str(caught.value) and new.release in str(caught.value)
    # The same orchestrator on both sides upgrades, an absent one being systemd.
    assert decide(on("2", 2, "systemd"), "x", installed(release("1", 1))).kind == "upgrade"
