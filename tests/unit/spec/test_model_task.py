"""A model's ``task``: chat by default, embedding on the runtimes whose role serves it (the
refusals are in test_bad_specs); it reaches the bundle's manifest through the models' part."""

from __future__ import annotations

import pytest

from appliance.fetchers.local_models import models_part
from appliance.spec import parse_spec
from tests.fixtures.specs import spec_text

MODELS = [
    {"name": "chat", "source": "./chat.gguf"},
    {"name": "embed", "source": "./embed.gguf", "task": "embedding"},
]


@pytest.mark.parametrize("runtime", ["llamacpp", "ollama"])
def test_a_chat_and_an_embedding_model_validate(runtime: str) -> None:
    spec = parse_spec(spec_text("demo", stack={"runtime": runtime}, models=MODELS))
    assert [(m.name, m.task) for m in spec.models] == [("chat", "chat"), ("embed", "embedding")]


def test_the_task_goes_into_the_manifest_component() -> None:
    spec = parse_spec(spec_text("demo", models=MODELS))
    part = models_part([(model, "gguf", []) for model in spec.models])
    assert [(c.name, c.task) for c in part.components] == [("chat", None), ("embed", "embedding")]
