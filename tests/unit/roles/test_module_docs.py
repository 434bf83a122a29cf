"""Every Ansible module the roles ship documents itself completely: DOCUMENTATION, EXAMPLES and
RETURN are YAML that parses, the options match what the module accepts, and ansible-doc reads
them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.roles import ROLES_DIR

MODULES = sorted(ROLES_DIR.glob("*/library/*.py"), key=lambda p: p.stem)
DOC_BLOCKS = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def blocks(path: Path) -> dict[str, Any]:
    """The parsed YAML of each module-level doc string, and the module's argument_spec."""
    found: dict[str, Any] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in DOC_BLOCKS:
                found[target.id] = yaml.safe_load(ast.literal_eval(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AnsibleModule":
            (spec,) = [k.value for k in node.keywords if k.arg == "argument_spec"]
            found["argument_spec"] = ast.literal_eval(spec)
    return found


def test_the_roles_ship_modules() -> None:
    assert [p.stem for p in MODULES] == [
        "appliance_artifacts",
        "appliance_disk_space",
        "appliance_engine_mirrors",
        "appliance_gpu_facts",
        "appliance_harbor_accounts",
        "appliance_runtime_egress",
        "appliance_store_audit",
        "appliance_store_fetch",
        "appliance_store_publish",
        "appliance_store_urls",
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documentation_is_complete_and_matches_the_argument_spec(path: Path) -> None:
    found = blocks(path)
    assert set(DOC_BLOCKS) <= set(found), f"{path.name} lacks {set(DOC_BLOCKS) - set(found)}"
    doc = found["DOCUMENTATION"]
    assert doc["module"] == path.stem
    assert doc["short_description"] and doc["author"]
    assert isinstance(doc["description"], list) and doc["description"]
    spec = found["argument_spec"]
    assert set(doc["options"]) == set(spec)
    for name, option in doc["options"].items():
        assert option["description"], name
        assert option["type"] == spec[name]["type"], name
        assert option.get("required", False) == spec[name].get("required", False), name
        assert option.get("default") == spec[name].get("default"), name
        if option["type"] == "list":
            assert option["elements"] == spec[name]["elements"], name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_examples_call_the_module_with_documented_options(path: Path) -> None:
    found = blocks(path)
    tasks = found["EXAMPLES"]
    assert isinstance(tasks, list)
    calls = [task[path.stem] for task in tasks if path.stem in task]
    assert calls, f"no example calls {path.stem}"
    for task in tasks:
        assert task["name"]
    for call in calls:
        assert set(call) <= set(found["DOCUMENTATION"]["options"])
        required = {n for n, o in found["DOCUMENTATION"]["options"].items() if o.get("required")}
        assert required <= set(call)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_every_return_value_is_described(path: Path) -> None:
    returned = blocks(path)["RETURN"]
    assert isinstance(returned, dict) and returned
    for name, value in returned.items():
        assert value["description"] and value["returned"] and value["type"], name


def test_ansible_doc_reads_every_module() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-doc"),
            "-M",
            ":".join(str(p.parent) for p in MODULES),
            "-t",
            "module",
            "--json",
            *(p.stem for p in MODULES),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    docs = json.loads(done.stdout)
    assert sorted(docs) == sorted(p.stem for p in MODULES)
    for name, doc in docs.items():
        assert doc["doc"]["module"] == name
        assert doc["examples"] and doc["return"], name
