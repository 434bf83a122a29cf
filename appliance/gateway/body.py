"""The request body, read so that the runtime cannot see a different call than the gateway
authorised.

The gateway decides on the parsed object and forwards a canonical body built from that object,
never the client's bytes. A body that different JSON readers could read differently is refused:

- a key twice in one object: Python's json, Go's encoding/json (Ollama) and nlohmann::json
  (llama.cpp's server) all keep the last value, but other readers keep the first;
- a top-level key that is not ``model`` yet reads as it when letter case or Unicode
  compatibility forms are ignored (``MODEL``, ``Model``, fullwidth letters): Ollama's Go
  decoder matches field names case-insensitively (``strings.EqualFold``), so ``{"model": "a",
  "MODEL": "b"}`` would ask Ollama for ``b``; vLLM (Python json and pydantic) and llama.cpp
  (nlohmann::json) match exact names only, for which the canonical body already suffices;
- two top-level keys equal under the same folding, for the same reason;
- NaN and Infinity (not JSON; a strict reader refuses them), text that is not UTF-8, nesting
  deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

MAX_DEPTH = 64  # deeper than any OpenAI request; Python's own limit would be about 1000


class BodyError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def fold(key: str) -> str:
    """What a lenient reader compares: compatibility forms unified, case ignored."""
    return unicodedata.normalize("NFKC", key).casefold()


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise BodyError("duplicate_key", f"the key {json.dumps(key)[:80]} appears twice")
        document[key] = value
    return document


def _constant(name: str) -> Any:
    raise BodyError("invalid_json", f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a recursive walk is what MAX_DEPTH guards against)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse(body: bytes) -> dict[str, Any]:
    """The request as a JSON object, or BodyError (code and message for a 400)."""
    try:
        text = body.decode("utf-8")
        document = json.loads(text, object_pairs_hook=_unique, parse_constant=_constant)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("invalid_json", f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BodyError("invalid_json", f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise BodyError("invalid_json", "the request body must be a JSON object")
    if _depth(document) > MAX_DEPTH:
        raise BodyError("invalid_json", f"the body nests deeper than {MAX_DEPTH} levels")
    folded: dict[str, str] = {}
    for key in document:
        same = folded.setdefault(fold(key), key)
        if same != key:
            raise BodyError(
                "ambiguous_key",
                f"the keys {json.dumps(same)[:80]} and {json.dumps(key)[:80]} differ only in "
                "letter case or Unicode form; a runtime may read either",
            )
        if key != "model" and fold(key) == "model":
            raise BodyError(
                "ambiguous_key",
                f"the key {json.dumps(key)[:80]} reads as 'model' to a case-insensitive runtime",
            )
    return document


def canonical(document: dict[str, Any]) -> bytes:
    """The body the backend receives: the parsed object, serialised by the gateway."""
    # ASCII with escapes: a lone surrogate the client escaped stays an escape, valid JSON text.
    return json.dumps(document, separators=(",", ":")).encode()
