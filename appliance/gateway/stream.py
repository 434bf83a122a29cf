"""What the gateway does to a stream as it passes: read the usage out of it, drop the
usage-only event the client did not ask for, give its events the model's public name, and hold
back its end (``data: [DONE]``) until the call is recorded."""

from __future__ import annotations

import json
import re
from typing import Any

from appliance.gateway.config import ModelRoute

_DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# A usage object, not the ``"usage": null`` vLLM puts in every event of a stream that asked
# for usage: only the lines that carry one are parsed.
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# An event that carries generated text (a completion's text, a chat delta's content or
# reasoning, a tool call's arguments): runtimes send one such event per token.
_GENERATED = re.compile(rb'"(?:text|content|reasoning_content|arguments)"\s*:\s*"(?!")')


class UsageScanner:
    """Picks ``usage`` out of SSE ``data:`` lines as they pass, holding only a partial line,
    and counts the events that carry generated text (``generated``): what a stream cut off
    before its usage event is charged (one token per event, as runtimes stream)."""

    def __init__(self) -> None:
        self.partial = b""
        self.usage: Any = None
        self.generated = 0

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self.partial += chunk
            return
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            if b'"usage"' in line and _USAGE.search(line):
                try:
                    usage = json.loads(line[5:]).get("usage")
                except (ValueError, AttributeError):
                    usage = None
                if usage:
                    self.usage = usage
            if _GENERATED.search(line):
                self.generated += 1


class Renamer:
    """Gives a stream's events the model's public name where the runtime used its own (Ollama
    answers as ``name:tag``). Works on whole lines, so it holds back at most a partial line;
    SSE events end in a blank line, so nothing waits longer than the event it belongs to."""

    def __init__(self, route: ModelRoute) -> None:
        self.partial = b""
        self.pairs = [
            (
                f'"model":{sep}{json.dumps(route.upstream_name)}'.encode(),
                f'"model":{sep}{json.dumps(route.name)}'.encode(),
            )
            for sep in ("", " ")
        ]

    def feed(self, chunk: bytes) -> bytes:
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return self._rename(data[:cut])

    def flush(self) -> bytes:
        rest, self.partial = self.partial, b""
        return self._rename(rest)

    def _rename(self, data: bytes) -> bytes:
        for own, public in self.pairs:
            data = data.replace(own, public)
        return data


class DoneHolder:
    """Holds back a stream's ``data: [DONE]`` (and anything after it) until the call's record
    is written; whatever cannot be the start of that event passes at once."""

    def __init__(self) -> None:
        self.held = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk if self.held else chunk
        if self.done:
            self.held = data
            return b""
        if b"[DONE]" in data:
            for marker in _DONE_MARKERS:
                at = data.find(marker)
                if at >= 0:
                    self.done, self.held = True, data[at:]
                    return data[:at]
        if data.endswith(b"\n"):  # an event's end, as nearly every chunk: nothing to hold
            self.held = b""
            return data
        keep = max(
            (
                n
                for marker in _DONE_MARKERS
                for n in range(1, len(marker))
                if data.endswith(marker[:n])
            ),
            default=0,
        )
        self.held = data[len(data) - keep :]
        return data[: len(data) - keep]


def usage_only(line: bytes) -> bool:
    """Whether ``line`` is the ``data:`` event a runtime adds for ``include_usage``: usage and
    an empty ``choices``, which ``for chunk in stream: chunk.choices[0]`` cannot take."""
    if not line.startswith(b"data:") or not _NO_CHOICES.search(line):
        return False
    try:
        event = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("choices") == [] and "usage" in event


class UsageDropper:
    """Removes usage-only events (and the blank line that ends each) from a stream, for a client
    that did not ask for them; the gateway asked the runtime, for the audit record. Works on
    whole lines, holding back at most a partial one."""

    def __init__(self) -> None:
        self.partial = b""
        self.dropping = False  # inside a dropped event, until its blank line

    def feed(self, chunk: bytes) -> bytes:
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        kept = []
        for line in data[:cut].splitlines(keepends=True):
            if self.dropping:
                self.dropping = bool(line.strip())
                continue
            if usage_only(line):
                self.dropping = True
                continue
            kept.append(line)
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self.partial = self.partial, b""
        return b"" if self.dropping or usage_only(rest) else rest
