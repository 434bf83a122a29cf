"""What the gateway does to a stream as it passes: read the usage out of it, give its events
the model's public name, and hold back its end (``data: [DONE]``) until the call is recorded."""

from __future__ import annotations

import json
from typing import Any

from appliance.gateway.config import ModelRoute

_DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")


class UsageScanner:
    """Picks ``usage`` out of SSE ``data:`` lines as they pass, holding only a partial line."""

    def __init__(self) -> None:
        self.partial = b""
        self.usage: Any = None

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self.partial += chunk
            return
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    usage = json.loads(line[5:]).get("usage")
                except (ValueError, AttributeError):
                    continue
                if usage:
                    self.usage = usage


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
        data = self.held + chunk
        if self.done:
            self.held = data
            return b""
        for marker in _DONE_MARKERS:
            at = data.find(marker)
            if at >= 0:
                self.done, self.held = True, data[at:]
                return data[:at]
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
