"""appliance-model-check, which every runtime unit runs before its server starts: the real
script, run as the unit runs it, on real files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from appliance.roles import ROLES_DIR

CHECK = ROLES_DIR / "runtime_common" / "files" / "appliance-model-check"


def record(tmp_path: Path, origin: str, data: bytes = b"GGUF weights") -> tuple[Path, Path]:
    model = tmp_path / "models" / "support-v3" / "model.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "support-v3.files.json"
    path.write_text(
        json.dumps(
            {
                "model": "support-v3",
                "origin": origin,
                "digest": f"sha256:{sha}",
                "files": [
                    {"name": "model.gguf", "path": str(model), "sha256": sha, "size": len(data)}
                ],
            }
        )
    )
    return path, model


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(path)], capture_output=True, text=True, check=False
    )


def test_unchanged_files_pass_silently(tmp_path: Path) -> None:
    path, _ = record(tmp_path, "site")
    done = check(path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_site_models_changed_file_is_refused_by_name(tmp_path: Path) -> None:
    path, model = record(tmp_path, "site")
    recorded = hashlib.sha256(model.read_bytes()).hexdigest()
    model.write_bytes(b"GGUF weightz")  # same size, other bytes
    changed = hashlib.sha256(b"GGUF weightz").hexdigest()
    done = check(path)
    assert done.returncode == 1
    assert done.stderr == (
        f"appliance-model-check: refusing to start: model support-v3: {model} has sha256 "
        f"{changed}, the signed site manifest records {recorded}: the file changed after it "
        "was recorded; restore it, or record the new bytes with `appliance models remove` and "
        "`appliance models add`\n"
    )


def test_a_bundle_models_resized_file_is_refused_before_hashing(tmp_path: Path) -> None:
    path, model = record(tmp_path, "bundle")
    model.write_bytes(b"GGUF")
    done = check(path)
    assert done.returncode == 1
    assert done.stderr == (
        f"appliance-model-check: refusing to start: model support-v3: {model} has 4 bytes, the "
        "bundle's signed manifest records 12: the file changed after it was recorded; run "
        "appliance install again to lay out the bundle's file\n"
    )


def test_a_missing_file_or_record_is_refused(tmp_path: Path) -> None:
    path, model = record(tmp_path, "site")
    model.unlink()
    done = check(path)
    assert done.returncode == 1
    assert f"model support-v3: cannot read {model}: No such file or directory" in done.stderr
    done = check(tmp_path / "nothing.files.json")
    assert done.returncode == 1
    assert done.stderr.startswith(f"appliance-model-check: cannot read {tmp_path}/nothing")


def test_as_the_units_start_command_it_becomes_the_server_once_files_match(
    tmp_path: Path,
) -> None:
    path, model = record(tmp_path, "site")
    done = subprocess.run(
        [sys.executable, str(CHECK), str(path), "--", "/bin/echo", "serving"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "serving\n")
    model.write_bytes(b"GGUF changed")
    done = subprocess.run(
        [sys.executable, str(CHECK), str(path), "--", "/bin/echo", "serving"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert "refusing to start: model support-v3" in done.stderr
