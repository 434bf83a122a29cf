"""The object_store role's modules, run by Ansible on this machine against an S3 server (moto,
the stand-in for MinIO: tests/fixtures/minio_standin.py): publish by digest, presign, fetch
through the cache, audit; and the check a runtime's unit runs before it starts."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.install.verify_models import judge_store
from appliance.roles import ROLES_DIR
from appliance.site import models as site_models
from appliance.site.models import SitePaths
from tests.fixtures.hosts import ROOT
from tests.fixtures.minio_standin import S3Server, s3_server, store_config

pytestmark = [pytest.mark.slow]

ROLE = ROLES_DIR / "object_store"


def adhoc(module: str, args: dict[str, Any], *, check: bool = False) -> dict[str, Any]:
    """Run one of the role's modules with Ansible (ansiballz, module_utils and all)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "localhost", "-i", "localhost,",
         "-c", "local", "-m", module, "-a", json.dumps(args),
         "-e", f"ansible_python_interpreter={sys.executable}", *(["--check"] if check else [])],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "ANSIBLE_LIBRARY": str(ROLE / "library"),
             "ANSIBLE_MODULE_UTILS": str(ROLE / "module_utils"), "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
             "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections")},
    )  # fmt: skip
    output = json.loads(done.stdout)
    result: dict[str, Any] = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result


def release(tmp_path: Path, sizes: list[int]) -> tuple[Path, list[dict[str, Any]]]:
    """A release directory with model files as blobs, and their entries as install lists them."""
    root = tmp_path / "release"
    files = []
    for index, size in enumerate(sizes):
        data = os.urandom(size)
        sha256 = hashlib.sha256(data).hexdigest()
        path = root / "blobs" / "sha256" / sha256
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append({"name": f"part-{index}.gguf", "path": f"blobs/sha256/{sha256}",
                      "sha256": sha256, "size": size})  # fmt: skip
    return root, files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as running:
        yield running


def test_publish_uploads_once_and_audit_finds_a_changed_object(
    server: S3Server, tmp_path: Path
) -> None:
    config = store_config(tmp_path, server, "publish")
    root, files = release(tmp_path, [4096, 100])
    args = {"config": str(config), "root": str(root), "files": files}
    digests = sorted(f["sha256"] for f in files)

    planned = adhoc("appliance_store_publish", args, check=True)
    assert planned["changed"] is True and sorted(planned["uploaded"]) == digests

    first = adhoc("appliance_store_publish", args)
    assert first["changed"] is True, first
    assert sorted(first["uploaded"]) == digests == sorted(first["verified"])
    again = adhoc("appliance_store_publish", args)
    assert again["changed"] is False
    assert (again["uploaded"], sorted(again["present"])) == ([], digests)

    audited = adhoc("appliance_store_audit", {"config": str(config), "expected": digests})
    assert (audited["objects"], audited["problems"], audited["error"]) == (2, [], "")
    assert judge_store("depot-1", audited)[0].passed

    client: Any = server.boto3()
    client.put_object(Bucket="publish", Key=f"sha256/{digests[0]}", Body=b"tampered",
                      Metadata={"sha256": digests[0]})  # fmt: skip
    audited = adhoc("appliance_store_audit", {"config": str(config), "expected": digests})
    tampered = hashlib.sha256(b"tampered").hexdigest()
    assert audited["problems"] == [
        {"key": f"sha256/{digests[0]}", "problem": f"bytes have sha256 {tampered}"}
    ]
    (check,) = judge_store("depot-1", audited)
    assert not check.passed
    assert check.evidence == f"sha256/{digests[0]}: bytes have sha256 {tampered}"


def test_a_store_that_refuses_the_credentials_is_named(server: S3Server, tmp_path: Path) -> None:
    config = store_config(tmp_path, server, "refused")
    config.write_text(config.read_text().replace("MINIO_ROOT_PASSWORD", "NO_SUCH_VAR"))
    root, files = release(tmp_path, [10])
    failed = adhoc("appliance_store_publish", {"config": str(config), "root": str(root),
                                               "files": files})  # fmt: skip
    assert failed["failed"] is True
    assert failed["msg"] == (
        f"cannot publish into the store ({config}): {tmp_path}/credentials.env: no NO_SUCH_VAR="
    )


@pytest.fixture
def fetched(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]], dict[str, Any]]]:
    """A store with two model files, their presigned URLs, and the fetch module's arguments.
    moto checks header signatures only, so presigned GETs run against a server without auth."""
    with s3_server(tmp_path, auth=False) as server:
        config = store_config(tmp_path, server, "fetch")
        root, files = release(tmp_path, [3000, 20])
        adhoc("appliance_store_publish", {"config": str(config), "root": str(root),
                                          "files": files})  # fmt: skip
        urls = adhoc(
            "appliance_store_urls",
            {"config": str(config), "digests": [f["sha256"] for f in files]},
        )
        assert urls["changed"] is False and set(urls["urls"]) == {f["sha256"] for f in files}
        models = tmp_path / "models"
        args = {
            "files": [{"dest": str(models / "tiny" / f["name"]), "sha256": f["sha256"]}
                      for f in files],
            "urls": urls["urls"],
            "cache_dir": str(tmp_path / "cache"),
        }  # fmt: skip
        yield tmp_path, files, args


def test_fetch_goes_through_the_cache_and_a_second_run_downloads_nothing(
    fetched: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    tmp_path, files, args = fetched
    first = adhoc("appliance_store_fetch", args)
    assert first["changed"] is True
    assert sorted(first["fetched"]) == sorted(f["sha256"] for f in files)
    for item in args["files"]:
        cached = tmp_path / "cache" / "sha256" / item["sha256"]
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == item["sha256"]
        assert cached.samefile(item["dest"])
    # The URLs are spent on nothing now: without them, every file still comes from the cache.
    again = adhoc("appliance_store_fetch", {**args, "urls": {}})
    assert (again["changed"], again["fetched"], again["linked"]) == (False, [], [])


def test_a_changed_cache_file_is_fetched_again(
    fetched: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    tmp_path, files, args = fetched
    adhoc("appliance_store_fetch", args)
    sha256 = files[0]["sha256"]
    (tmp_path / "cache" / "sha256" / sha256).write_bytes(b"changed")
    repaired = adhoc("appliance_store_fetch", args)
    assert (repaired["refetched"], repaired["fetched"]) == ([sha256], [])
    dest = Path(args["files"][0]["dest"])
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha256


def test_the_runtime_refuses_a_model_whose_file_changed_after_fetch(
    fetched: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    """The llama.cpp unit's ExecStartPre, as the role renders it, over the model's digest list
    as runtime_common renders it."""
    tmp_path, files, args = fetched
    adhoc("appliance_store_fetch", args)
    config_dir = tmp_path / "config"
    model = {"name": "tiny", "files": files}
    templates = {
        ROLES_DIR / "runtime_common" / "templates" / "model.sha256.j2": (
            config_dir / "tiny.sha256",
            {"item": model, "runtime_common_models_dir": str(tmp_path / "models")},
        ),
        ROLES_DIR / "runtime_llamacpp" / "templates" / "appliance-llamacpp@.service.j2": (
            config_dir / "unit",
            {},
        ),
    }
    defaults = ROLES_DIR / "runtime_llamacpp" / "defaults" / "main.yml"
    tasks: list[dict[str, Any]] = [
        {"ansible.builtin.include_vars": {"file": str(defaults)}},
        {"ansible.builtin.file": {"path": str(config_dir), "state": "directory", "mode": "0755"}},
    ]
    tasks += [
        {"ansible.builtin.template": {"src": str(src), "dest": str(dest), "mode": "0644"},
         "vars": extra}
        for src, (dest, extra) in templates.items()
    ]  # fmt: skip
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.json").write_text(json.dumps(play))
    subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
         "-e", f"ansible_python_interpreter={sys.executable}",
         # Above include_vars: the role's own default names /etc.
         "-e", f"runtime_llamacpp_config_dir={config_dir}", str(tmp_path / "play.json")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (pre,) = [
        line.split("=", 1)[1]
        for line in (config_dir / "unit").read_text().splitlines()
        if line.startswith("ExecStartPre=")
    ]
    command = shlex.split(pre.replace("%i", "tiny"))
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    # The models directory holds hard links to the cache: a change to either is the same change.
    with Path(args["files"][0]["dest"]).open("r+b") as handle:
        handle.write(b"\0")
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert refused.stdout.strip() == f"{args['files'][0]['dest']}: FAILED"


def converge(tmp_path: Path, extravars: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
    """Run ``tasks`` on this machine as a play, with ``extravars``; its output."""
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.json").write_text(json.dumps(play))
    (tmp_path / "vars.json").write_text(json.dumps(extravars))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
         "-e", f"@{tmp_path / 'vars.json'}", str(tmp_path / "play.json")],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES_DIR), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_roles_publish_then_lay_out_a_model_from_the_store(tmp_path: Path) -> None:
    """The object_store role's publish step and the artifacts role's models step with a store
    in the topology (object_store tasks_from fetch: presign on the store's host, fetch through
    the cache), as install runs them, on this machine as the store's host and the GPU node."""
    with s3_server(tmp_path, auth=False) as server:
        config_dir = tmp_path / "object-store"
        config_dir.mkdir()
        config = store_config(config_dir, server, "roles")
        assert config == config_dir / "store.json"
        root, files = release(tmp_path, [5000, 30])
        model = {"name": "tiny", "format": "gguf", "digest": "sha256:" + "0" * 64,
                 "files": files}  # fmt: skip
        extravars = {
            "ansible_python_interpreter": sys.executable,
            "appliance_bundle_dir": str(root),
            "appliance_models": [model],
            "appliance_topology": {"object_store": {"host": "localhost"}},
            "object_store_config_dir": str(config_dir),
            "object_store_cache_dir": str(tmp_path / "cache"),
            # Above the role's vars: the CA's certificate would go to /etc on this machine.
            "_object_store_ca_file": str(tmp_path / "ca.crt"),
        }
        tasks = [
            {"ansible.builtin.include_role": {"name": "object_store", "tasks_from": "publish"}},
            {"ansible.builtin.include_role": {"name": "artifacts", "tasks_from": "models"},
             "vars": {"artifacts_models_dir": str(tmp_path / "models")}},
        ]  # fmt: skip
        first = converge(tmp_path, extravars, tasks)
        assert "changed=3" in first, first  # published; the CA certificate; fetched and linked
        for file in files:
            placed = tmp_path / "models" / "tiny" / file["name"]
            assert hashlib.sha256(placed.read_bytes()).hexdigest() == file["sha256"]
            assert placed.samefile(tmp_path / "cache" / "sha256" / file["sha256"])
        again = converge(tmp_path, extravars, tasks)
        assert "changed=0" in again, again  # nothing uploaded, nothing downloaded
        # The presigned URLs never reach the run's output.
        assert "X-Amz-Signature" not in first + again


def test_site_models_go_through_the_store_like_the_bundles(tmp_path: Path) -> None:
    """Site models with object_store minio, as install hands them to the roles: one added with
    the S3 store there (appliance models add uploaded it), one added before it existed (in the
    directory store: the role's publish step uploads it from there); the node lays out both
    from the store by digest, through the same fetch as the bundle's model."""
    with s3_server(tmp_path, auth=False) as server:
        config_dir = tmp_path / "object-store"
        config = store_config(config_dir, server, "site")
        site = SitePaths(tmp_path / "site", tmp_path / "store", config)
        for name, data, store_json in (
            ("in-s3", b"GGUF" + os.urandom(3000), config),
            ("from-dir", b"GGUF" + os.urandom(2000), tmp_path / "not-yet.json"),
        ):
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.gguf").write_bytes(data)
            added, _ = site_models.add(
                tmp_path / name, name, SitePaths(site.site_dir, site.store, store_json), {}
            )
        client: Any = server.boto3()
        assert client.list_objects_v2(Bucket="site", Prefix="sha256/")["KeyCount"] == 1
        root, files = release(tmp_path, [40])
        bundle = {"name": "tiny", "format": "gguf", "digest": "sha256:" + "0" * 64,
                  "files": files}  # fmt: skip
        models = [bundle, *site_models.for_install(site, {"tiny": "1"}, "minio")]
        extravars = {
            "ansible_python_interpreter": sys.executable,
            "appliance_bundle_dir": str(root),
            "appliance_models": models,
            "appliance_topology": {"object_store": {"host": "localhost"}},
            "object_store_config_dir": str(config_dir),
            "object_store_cache_dir": str(tmp_path / "cache"),
            "_object_store_ca_file": str(tmp_path / "ca.crt"),
        }
        tasks = [
            {"ansible.builtin.include_role": {"name": "object_store", "tasks_from": "publish"}},
            {"ansible.builtin.include_role": {"name": "artifacts", "tasks_from": "models"},
             "vars": {"artifacts_models_dir": str(tmp_path / "models")}},
        ]  # fmt: skip
        first = converge(tmp_path, extravars, tasks)
        assert "changed=3" in first, first  # published; the CA certificate; fetched and linked
        # The bundle's file and the directory-store site file were uploaded; in-s3 was there.
        assert client.list_objects_v2(Bucket="site", Prefix="sha256/")["KeyCount"] == 3
        for model in models:
            for file in model["files"]:
                placed = tmp_path / "models" / model["name"] / file["name"]
                assert hashlib.sha256(placed.read_bytes()).hexdigest() == file["sha256"]
                assert placed.samefile(tmp_path / "cache" / "sha256" / file["sha256"])
        assert added.name == "from-dir"
        assert "changed=0" in converge(tmp_path, extravars, tasks)
