"""The base every spec model shares."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from appliance.spec.checks import check_name, check_sha256


class StrictModel(BaseModel):
    """Unknown fields are errors (a typo must not pass silently); a parsed spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# What a model is served for: chat (chat and text completions) or embedding (/v1/embeddings);
# the runtime role picks the server's settings from it.
ModelTask = Annotated[
    Literal["chat", "embedding"],
    Field(description="chat (chat and completions) or embedding (/v1/embeddings)"),
]
Name = Annotated[
    str,
    AfterValidator(check_name),
    Field(description="lowercase identifier, 1-63 characters"),
]
Sha256 = Annotated[
    str, AfterValidator(check_sha256), Field(description="64 lowercase hex characters")
]
