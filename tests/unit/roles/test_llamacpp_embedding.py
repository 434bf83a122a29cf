"""runtime_llamacpp's per-model settings rendered by Ansible itself: a ``task: embedding`` model
gets llama-server's embedding settings (the launcher's --embedding --pooling), a chat model
none, and the unit passes them on as separate arguments."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.templates import render

MODELS = [
    {"name": "chat", "digest": "sha256:" + "1" * 64, "port": 8081, "task": "chat"},
    {"name": "embed", "digest": "sha256:" + "2" * 64, "port": 8082, "task": "embedding"},
    {"name": "site", "digest": "sha256:" + "3" * 64, "port": 8083},  # no task: a chat model
]


def settings(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    return dict(pairs)  # type: ignore[arg-type]


def test_each_model_gets_the_settings_of_its_task(tmp_path: Path) -> None:
    models = [{**m, "files": [{"name": f"{m['name']}.gguf"}]} for m in MODELS]
    files = render(
        tmp_path,
        "runtime_llamacpp",
        {"model.env.j2": "model.env", "appliance-llamacpp@.service.j2": "unit"},
        {"runtime_common_listen_address": "127.0.0.1"},
        loop=models,
    )
    args = [settings(files[f"model.env.{index}"])["LLAMACPP_TASK_ARGS"] for index in range(3)]
    assert args == ["", "--embedding --pooling mean", ""]
    # $VAR unbraced: systemd splits it into words, and an empty one into no argument at all.
    assert "--parallel ${LLAMACPP_PARALLEL} $LLAMACPP_TASK_ARGS\n" in files["unit.0"]


def test_the_pooling_is_a_setting(tmp_path: Path) -> None:
    files = render(
        tmp_path,
        "runtime_llamacpp",
        {"model.env.j2": "model.env"},
        {"runtime_common_listen_address": "127.0.0.1", "runtime_llamacpp_embedding_pooling": "cls"},
        loop=[{**MODELS[1], "files": [{"name": "e.gguf"}]}],
    )
    assert settings(files["model.env.0"])["LLAMACPP_TASK_ARGS"] == "--embedding --pooling cls"
