"""What every benchmark client does: sessions, WebSockets, turns (aiohttp, on the running loop)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aiohttp
import orjson

FINAL = ("stream_end", "stream_stopped", "error")


class ClientError(Exception):
    """The server did not do what the scenario needs (refused, closed, ended a turn with an error)."""


def message(content: str) -> str:
    return orjson.dumps({"type": "message", "content": content}).decode()


def http_client() -> aiohttp.ClientSession:
    # limit=0: no cap on connections, for 1,000+ clients in this one process
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=60, connect=30))


async def new_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(url + "/sessions", json={}) as r:
        if r.status != 201:
            raise ClientError(f"POST /sessions answered {r.status}: {(await r.text())[:200]}")
        return (await r.json())["id"]


async def delete_session(http: aiohttp.ClientSession, url: str, sid: str) -> None:
    async with http.delete(f"{url}/sessions/{sid}") as r:
        await r.read()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise ClientError(f"expected a text frame, got {msg.type.name} {msg.data!r} {msg.extra!r}")
    return orjson.loads(msg.data)


async def connect(http: aiohttp.ClientSession, url: str, sid: str) -> aiohttp.ClientWebSocketResponse:
    """Open the session's WebSocket and wait for its ``session_sync``."""
    ws = await http.ws_connect(url.replace("http://", "ws://") + f"/ws/sessions/{sid}", max_msg_size=0,
                               autoping=True, heartbeat=None)
    ev = await receive(ws)
    if ev["type"] != "session_sync":
        raise ClientError(f"expected session_sync on connect, got {ev}")
    return ws


async def turn(ws: aiohttp.ClientWebSocketResponse, content: str) -> dict[str, Any]:
    """Send a message; read up to its final event; fail unless it is ``stream_end``."""
    await ws.send_str(message(content))
    while True:
        ev = await receive(ws)
        if ev["type"] in FINAL:
            if ev["type"] != "stream_end":
                raise ClientError(f"turn {content!r} ended with {ev}")
            return ev


async def gather_limited(n: int, limit: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``fn(i)`` for i in range(n), at most ``limit`` at once; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))
