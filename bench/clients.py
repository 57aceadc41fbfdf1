"""The benchmark's WebSocket clients, run in a process of their own.

``python -m bench.clients`` reads one scenario as JSON on stdin, runs it
against the server at ``scenario["url"]`` on uvloop, and prints one JSON
object on stdout (or ``{"error": …}`` with exit code 1). The same scenario runs
unchanged against navi-actor and the baseline.

Scenarios: ``ttfe`` (message → first ``stream_delta`` of a new session),
``flood`` (one session's events as fast as they come, counted frame by frame
by a minimal WebSocket reader so the client costs less than the server),
``sparse`` (end-to-end delay of stamped deltas), ``many`` (N clients, one
session each, LLM-paced; CPU of given processes per event), ``carry`` (the
largest N of those within a delivery limit, by bisection; both in
``bench/paced.py``), ``memory`` (turns, then a GC turn, in N sessions),
``idle`` (N sessions with one short turn each, left idle) and ``spawn``
(first turns of N new sessions, as fast as the server takes them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import sys
import time
import urllib.parse
from typing import Any

import aiohttp
import orjson

from bench.paced import carry, many
from bench.stats import summary
from bench.wsclient import (FINAL, ClientError, connect, delete_session, gather_limited, http_client, message,
                            new_session, receive, turn)



def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ── time to first event ────────────────────────────────────────────────────


async def ttfe(sc: dict[str, Any]) -> dict[str, Any]:
    """New session each sample: message sent → first ``stream_delta`` received (ms).

    Each sample's session is deleted after its turn, unless ``keep``: then it
    stays, with its idle actor (so at ``--max-actors`` the next turn evicts one).
    """
    url, out, to_start = sc["url"], [], []
    payload = message("one")
    async with http_client() as http:
        for _ in range(sc["samples"]):
            sid = await new_session(http, url)
            ws = await connect(http, url, sid)
            await asyncio.sleep(sc["gap"])  # untimed: lets a warm pool refill, as between real sessions
            t0 = time.perf_counter()
            await ws.send_str(payload)
            first = start = None
            while True:
                ev = await receive(ws)
                if start is None and ev["type"] == "stream_start":
                    start = time.perf_counter()
                if first is None and ev["type"] == "stream_delta":
                    first = time.perf_counter()
                if ev["type"] in FINAL:
                    break
            if ev["type"] != "stream_end" or first is None:
                raise ClientError(f"first turn ended with {ev}")
            out.append((first - t0) * 1000)
            to_start.append(((start or first) - t0) * 1000)
            await ws.close()
            if not sc.get("keep"):
                await delete_session(http, url, sid)
    return {"ms": out, "to_stream_start_ms": to_start}


# ── one session, flood ─────────────────────────────────────────────────────


class FrameCounter(asyncio.Protocol):
    """A minimal WebSocket client reader: counts text frames by type, decodes nothing else.

    Server frames are unmasked. A frame starting ``{"type":"stream_delta"`` (the
    order both servers write) is counted as a delta without more ado; any other
    frame is searched for its type, to see the end of the turn. A close frame
    ends the wait with an error.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.handshake: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.final: asyncio.Future[str] | None = None
        self.frames = 0
        self.deltas = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.handshake, self.final):
            if fut is not None and not fut.done():
                fut.set_exception(ClientError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        b = self.buf
        b += data
        if not self.handshake.done():
            end = b.find(b"\r\n\r\n")
            if end < 0:
                return
            self.handshake.set_result(bytes(b[:end]))
            del b[: end + 4]
        pos, n = 0, len(b)
        frames, deltas = self.frames, self.deltas
        while n - pos >= 2:
            opcode = b[pos] & 0x0F
            length = b[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(b[pos + 2: pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(b[pos + 2: pos + 10], "big"), 10
            if n - pos < head + length:
                break
            start = pos + head
            pos = start + length
            if opcode == 0x8:
                code = int.from_bytes(b[start: start + 2], "big") if length >= 2 else None
                if self.final is not None and not self.final.done():
                    self.final.set_exception(ClientError(f"server closed the WebSocket: {code} "
                                                         f"{bytes(b[start + 2: pos])!r}"))
                continue
            if opcode != 0x1:
                continue
            frames += 1
            if b.startswith(b'{"type":"stream_delta"', start):
                deltas += 1
            elif self.final is not None and not self.final.done():
                at = b.find(b'"type":"', start, pos) + 8
                end = b.find(b'"', at, pos) if at >= 8 else -1
                kind = b[at:end].decode("ascii", "replace") if end > 0 else ""
                if kind in FINAL:
                    self.final.set_result(kind)
        del b[:pos]
        self.frames, self.deltas = frames, deltas

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        else:
            head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        self.transport.write(head + mask + masked)

    async def turn(self, content: str) -> tuple[str, int, int]:
        """Send a message; wait for its final frame; return (final type, frames, deltas) of the turn."""
        self.final = asyncio.get_running_loop().create_future()
        f0, d0 = self.frames, self.deltas
        self.send_text(message(content))
        kind = await self.final
        return kind, self.frames - f0, self.deltas - d0


async def flood(sc: dict[str, Any]) -> dict[str, Any]:
    url, n = sc["url"], sc["events"]
    async with http_client() as http:
        sid = await new_session(http, url)
    u = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(FrameCounter, u.hostname, u.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws/sessions/{sid} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await proto.handshake
        if not head.startswith(b"HTTP/1.1 101"):
            raise ClientError(f"WebSocket handshake refused: {head[:200]!r}")
        kind, _, _ = await proto.turn("one")  # the session's actor is up before the clock starts
        if kind != "stream_end":
            raise ClientError(f"warm-up turn ended with {kind}")
        t0 = time.perf_counter()
        kind, frames, deltas = await proto.turn(f"flood {n}")
        seconds = time.perf_counter() - t0
    finally:
        transport.close()
    if kind != "stream_end":
        raise ClientError(f"flood turn ended with {kind}")
    # the turn's frames are stream_start, one per event, stream_end
    return {"events": n, "seconds": seconds, "rate": n / seconds, "frames": frames, "delta_frames": deltas,
            "messages_per_event": (frames - 2) / n}


# ── sparse stream ──────────────────────────────────────────────────────────


async def sparse(sc: dict[str, Any]) -> dict[str, Any]:
    """End-to-end delay (µs) of deltas stamped with the agent's monotonic clock."""
    url = sc["url"]
    delays: list[float] = []
    async with http_client() as http:
        sid = await new_session(http, url)
        ws = await connect(http, url, sid)
        await turn(ws, "one")
        await ws.send_str(message(f"sparse {sc['events']} {sc['rate']}"))
        while True:
            ev = await receive(ws)
            if ev["type"] == "stream_delta":
                delays.append((time.monotonic() - float(ev["delta"])) * 1e6)
            elif ev["type"] in FINAL:
                break
        await ws.close()
    if ev["type"] != "stream_end" or len(delays) != sc["events"]:
        raise ClientError(f"sparse turn ended with {ev['type']} after {len(delays)} of {sc['events']} deltas")
    return {"us": summary(delays)}


# ── a viewer that joins a turn, through its owner or through another node (the relay) ──


async def joined(sc: dict[str, Any]) -> dict[str, Any]:
    """A turn started on ``owner`` (``hold 0.3 flood N`` or ``… sparse N RATE``) whose starter leaves;
    a viewer joins it through ``url`` before its first delta: the flood rate or the sparse delays it sees."""
    owner, url, mode = sc["owner"], sc["url"], sc["mode"]
    body = f"flood {sc['events']}" if mode == "flood" else f"sparse {sc['events']} {sc['rate']}"
    delays: list[float] = []
    async with http_client() as http:
        sid = await new_session(http, owner)
        ws = await connect(http, owner, sid)
        await turn(ws, "one")  # the session's actor is up
        await ws.send_str(message(f"hold 0.3 {body}"))
        while (await receive(ws))["type"] != "stream_start":
            pass
        await ws.close()
        view = await http.ws_connect(url.replace("http://", "ws://") + f"/ws/sessions/{sid}", max_msg_size=0)
        n, t0 = 0, 0.0
        while True:
            msg = await view.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ClientError(f"the joined viewer's socket ended: {msg.type} {msg.extra!r}")
            data = msg.data
            if '"stream_delta"' in data:
                if n == 0:
                    t0 = time.perf_counter()
                n += 1
                if mode == "sparse":
                    delays.append((time.monotonic() - float(orjson.loads(data)["delta"])) * 1e6)
            elif '"stream_end"' in data or '"stream_stopped"' in data or '"error"' in data:
                seconds = time.perf_counter() - t0
                ev = orjson.loads(data)
                break
        await view.close()
    if ev["type"] != "stream_end" or n != sc["events"]:
        raise ClientError(f"joined turn ended with {ev['type']} after {n} of {sc['events']} deltas")
    if mode == "flood":
        return {"rate": n / seconds, "seconds": seconds}
    return {"us": summary(delays)}


# ── idle memory, actor starts ──────────────────────────────────────────────


async def memory(sc: dict[str, Any]) -> dict[str, Any]:
    """A turn, then a GC turn, in each of ``sessions`` new sessions; return their ids."""
    url, sids = sc["url"], []
    async with http_client() as http:
        for _ in range(sc["sessions"]):
            sid = await new_session(http, url)
            ws = await connect(http, url, sid)
            await turn(ws, "one")
            await turn(ws, "gc")
            await ws.close()
            sids.append(sid)
    return {"session_ids": sids}


async def idle(sc: dict[str, Any]) -> dict[str, Any]:
    """``sessions`` new sessions, ``concurrency`` at a time, each with one short turn, then left idle."""
    url = sc["url"]
    async with http_client() as http:
        async def one(i: int) -> str:
            sid = await new_session(http, url)
            ws = await connect(http, url, sid)
            try:
                await turn(ws, "one")
            finally:
                await ws.close()
            return sid

        t0 = time.perf_counter()
        sids = await gather_limited(sc["sessions"], sc["concurrency"], one)
    return {"session_ids": sids, "seconds": time.perf_counter() - t0}


async def spawn(sc: dict[str, Any]) -> dict[str, Any]:
    """First turns of ``sessions`` new sessions, ``concurrency`` at a time, as fast as they go.

    Sessions and their WebSockets are made first (untimed); the clock runs from
    the first message to the last ``stream_end``, or to ``deadline`` seconds,
    when the turns still running are abandoned and the rate is what finished.
    """
    url, n, limit = sc["url"], sc["sessions"], sc["concurrency"]
    async with http_client() as http:
        sids = await gather_limited(n, sc["setup_concurrency"], lambda i: new_session(http, url))
        sockets = await gather_limited(n, sc["setup_concurrency"], lambda i: connect(http, url, sids[i]))
        errors: list[str] = []
        done = 0

        async def first_turn(i: int) -> None:
            nonlocal done
            try:
                await turn(sockets[i], "one")
                done += 1
            except ClientError as exc:
                errors.append(str(exc))

        timed_out = False
        wall0, t0 = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(sc["deadline"]):
                await gather_limited(n, limit, first_turn)
        except TimeoutError:
            timed_out = True
        seconds = time.perf_counter() - t0
        wall1 = time.time()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {"sessions": n, "completed": done, "seconds": seconds, "rate": done / seconds, "errors": len(errors),
            "first_errors": errors[:5], "timed_out": timed_out, "wall_start": wall0, "wall_end": wall1,
            "session_ids": sids}


SCENARIOS = {"ttfe": ttfe, "flood": flood, "joined": joined, "sparse": sparse, "many": many, "carry": carry,
             "memory": memory, "idle": idle, "spawn": spawn}


async def run(sc: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(sc["timeout"]):
        return await SCENARIOS[sc["kind"]](sc)


def main() -> int:
    import uvloop

    sc = json.loads(sys.stdin.read())
    _raise_fd_limit()
    try:
        result = uvloop.run(run(sc))
    except TimeoutError:
        print(json.dumps({"error": f"{sc['kind']}: no result within {sc['timeout']} s"}))
        return 1
    except (ClientError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
        print(json.dumps({"error": f"{sc['kind']}: {type(exc).__name__}: {exc}"}))
        return 1
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
