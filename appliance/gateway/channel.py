"""The channel between a gateway worker and the owner of the audit chain (supervisor.py).

One unix socketpair per worker, made by the supervisor before the worker starts. Each message is
a JSON object preceded by its length (4 bytes, big-endian). A request carries ``op`` and an
``id`` when it expects an answer; the answer carries the same ``id``. The owner also pushes
messages of its own (``push``: the audit log's state). Messages on one channel keep their order:
a worker's records reach the chain in the order the worker sent them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_LENGTH = struct.Struct(">I")
# A record is a few KiB at most (record.py); a metrics page of a thousand keys some hundreds.
MAX_MESSAGE = 16 << 20


class ChannelClosed(ConnectionError):
    """The other end went away (a worker died, or the owner stopped)."""


def frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


class Outbox:
    """Messages sent in one turn of the event loop leave in one write (one system call): under
    load a worker's records, and the owner's answers, travel in batches."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    def put(self, message: dict[str, Any]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(frame(message))

    def flush(self) -> None:
        if self._pending and not self.writer.is_closing():
            self.writer.write(b"".join(self._pending))
        self._pending.clear()


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_MESSAGE:
            raise ChannelClosed(f"a message of {length} bytes on the channel: out of step")
        message = json.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        raise ChannelClosed(str(error) or "end of channel") from None
    if not isinstance(message, dict):
        raise ChannelClosed("a message on the channel that is not an object")
    return message


async def open_channel(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock.setblocking(False)
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
