"""The base every spec model shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are errors (a typo must not pass silently); a parsed spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
