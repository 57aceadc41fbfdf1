"""Write many WebSocket text frames in one socket write: a small adapter over aiohttp.

aiohttp's ``WebSocketResponse.send_frame`` writes each frame with its own
``transport.write`` — a system call per event, which was 40 % of the
front's time on a fast stream. Here the frames ready for a client are
encoded together (:func:`encode_text_frames`, pure, RFC 6455 §5.2: server
frames are unmasked, FIN set, opcode 1) and written at once through the
request's transport, while the transport takes writes. When the transport
is paused (the client reads slower than we write) the adapter falls back to
``send_frame``, so aiohttp's own flow control (its drain) applies. Only
public attributes are used: ``request.transport``, ``request.protocol``'s
``writing_paused`` and ``ws.send_frame``; each write holds whole frames, so
aiohttp's own control frames (pong, close) can never land inside one.
"""

from __future__ import annotations

import struct
from typing import Sequence

from aiohttp import WSMsgType, web

_LEN1 = struct.Struct("!BB")
_LEN2 = struct.Struct("!BBH")
_LEN3 = struct.Struct("!BBQ")
_TEXT_FIN = 0x81


def encode_text_frames(payloads: Sequence[bytes]) -> bytes:
    """Unmasked, final text frames for ``payloads``, concatenated."""
    parts: list[bytes] = []
    append = parts.append
    for p in payloads:
        n = len(p)
        if n < 126:
            append(_LEN1.pack(_TEXT_FIN, n))
        elif n < 65536:
            append(_LEN2.pack(_TEXT_FIN, 126, n))
        else:
            append(_LEN3.pack(_TEXT_FIN, 127, n))
        append(p)
    return b"".join(parts)


class FrameWriter:
    """Send text frames to one client, batched when the transport allows."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.transport = request.transport
        self.protocol = request.protocol

    @property
    def can_batch(self) -> bool:
        t = self.transport
        return (
            t is not None
            and not t.is_closing()
            and not self.ws.closed
            and not self.ws.compress  # deflate needs aiohttp's writer (its compressor's state)
            and not self.protocol.writing_paused
        )

    def write_batch(self, payloads: Sequence[bytes]) -> None:
        """Write all ``payloads`` as frames in one write (call only when ``can_batch``)."""
        assert self.transport is not None
        self.transport.write(encode_text_frames(payloads))

    async def send_one(self, payload: bytes) -> None:
        """One frame through aiohttp, which waits for the transport to drain."""
        await self.ws.send_frame(payload, WSMsgType.TEXT)
