"""The in-process design navi-actor is measured against: agents as tasks in the web process.

This is the original endpoint's design (``/work/shared/reference``), on aiohttp
and uvloop: each turn's agent is an asyncio task in the web server; it
broadcasts every event to an unbounded ``asyncio.Queue`` per subscriber; each
WebSocket handler takes events off its queue and sends each with one
``send_str``. Same routes and message order as navi-actor for what the
benchmark uses: ``POST /sessions``, ``DELETE /sessions/{id}``,
``WS /ws/sessions/{id}`` (``session_sync`` on connect; a message gets
``stream_start``, the events, ``stream_end``).

It is written to be fast, not to be a strawman: an event is encoded once (with
orjson, as navi-actor does) for all subscribers instead of once per subscriber
with ``json.dumps``; the heartbeat timer is armed only while the queue is
empty instead of wrapping every ``get`` in ``wait_for``. Events carry ``seq``
and ``run_id`` like navi-actor's, so frames have the same size on both sides.

By default there is no database. With ``--durable PATH`` it keeps its
sessions in SQLite, as the original endpoint's session store does: one
connection (WAL, ``synchronous=FULL``) used on the event loop, as a simple
in-process server with the standard ``sqlite3`` module would; with
``--durable-thread`` too, the same connection is used from one thread of its
own instead (an async wrapper such as aiosqlite). A session is read on
connect; a message is committed before ``stream_start``, and the answer
before ``stream_end``.

Run: ``python -m bench.baseline --agent bench.agents:agent --info-file F``;
``F`` gets ``{"pid", "url"}`` once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sqlite3
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from navi_actor.agent_loader import AgentSpec, load
from navi_actor.events import StreamEnd, event_to_wire
from navi_actor.turn import Turn

HEARTBEAT = 20.0
MAX_REPLAY_EVENTS = 500  # the original's cap on a run's replay list
DONE = ("done", None)


class AgentRun:
    """One running turn: its task, its subscribers' queues and a short replay list."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.task: asyncio.Task[None] | None = None
        self.stop_event = asyncio.Event()
        self.subscribers: list[asyncio.Queue[tuple[str, Any]]] = []
        self.events: deque[str] = deque(maxlen=MAX_REPLAY_EVENTS)

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[str, Any]]) -> None:
        if q in self.subscribers:
            self.subscribers.remove(q)

    async def broadcast(self, item: tuple[str, Any]) -> None:
        if item[0] == "event":
            self.events.append(item[1])
        for q in list(self.subscribers):
            await q.put(item)


SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, title TEXT, created_at REAL NOT NULL,
                                     updated_at REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id),
                                     role TEXT NOT NULL, content TEXT NOT NULL, run_id TEXT, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);
"""


class DurableStore:
    """The sessions in SQLite: one connection, WAL, ``synchronous=FULL`` (every commit is fsynced).

    Each call is one transaction. ``threaded=False`` runs it on the event loop
    (blocking it for the commit, as the standard ``sqlite3`` module does);
    ``threaded=True`` in one thread of its own, the loop awaiting the answer.
    """

    def __init__(self, path: Path, threaded: bool) -> None:
        self.conn = sqlite3.connect(str(path), check_same_thread=not threaded)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="store") if threaded else None

    async def call(self, fn: Any, *args: Any) -> Any:
        if self.pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def create(self, session: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute("INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
                              (session["id"], session["title"], session["created_at"], session["updated_at"]))

    def delete(self, sid: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM messages WHERE session_id = ?", (sid,))
            self.conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    def load(self, sid: str) -> list[dict[str, str]] | None:
        """The session's messages (its history), or None when there is no such session."""
        if self.conn.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() is None:
            return None
        rows = self.conn.execute("SELECT role, content FROM messages WHERE session_id = ? ORDER BY id", (sid,))
        return [{"role": role, "content": content} for role, content in rows]

    def add_message(self, sid: str, role: str, content: str, run_id: str, last_seq: int | None = None) -> None:
        now = time.time()
        with self.conn:
            self.conn.execute("INSERT INTO messages (session_id, role, content, run_id, created_at) "
                              "VALUES (?, ?, ?, ?, ?)", (sid, role, content, run_id, now))
            if last_seq is None:
                self.conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, sid))
            else:
                self.conn.execute("UPDATE sessions SET updated_at = ?, last_seq = ? WHERE id = ?",
                                  (now, last_seq, sid))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.conn.close()


class Baseline:
    def __init__(self, spec: AgentSpec, store: DurableStore | None = None) -> None:
        self.spec = spec
        self.store = store
        self.runner: Any = None
        self.sessions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, AgentRun] = {}

    async def run_agent(self, run: AgentRun, sid: str, content: str, seq: int,
                        history: list[dict[str, str]]) -> None:
        if self.runner is None:
            self.runner = self.spec.make_runner()
        turn = Turn(session_id=sid, run_id=run.run_id, content=content, display_content=content, images=[],
                    files=[], history=list(history), stop_event=run.stop_event)
        text: list[str] = []
        t0 = time.monotonic()
        try:
            async for ev in self.runner(turn):
                if type(ev) is StreamEnd:
                    continue
                wire = event_to_wire(ev)
                seq += 1
                wire["seq"] = seq
                if wire["type"] == "stream_delta":
                    text.append(wire["delta"])
                await run.broadcast(("event", orjson.dumps(wire).decode()))
            seq += 1
            answer = "".join(text)
            if self.store is not None:  # the answer is durable before stream_end
                await self.store.call(self.store.add_message, sid, "assistant", answer, run.run_id, seq)
                history.append({"role": "assistant", "content": answer})
            end = {"type": "stream_end", "seq": seq, "run_id": run.run_id, "content": answer,
                   "elapsed_seconds": round(time.monotonic() - t0, 3), "tool_call_count": 0,
                   "token_count": len(text), "context_tokens": None, "max_context_tokens": None}
            await run.broadcast(("event", orjson.dumps(end).decode()))
        except Exception as exc:
            seq += 1
            await run.broadcast(("event", orjson.dumps({"type": "error", "message": f"Internal error: {exc}",
                                                         "seq": seq}).decode()))
        finally:
            self.sessions[sid]["last_seq"] = seq
            await run.broadcast(DONE)
            self.runs.pop(sid, None)

    # ── HTTP ──────────────────────────────────────────────────────────────
    async def create_session(self, request: web.Request) -> web.Response:
        sid = uuid.uuid4().hex
        now = time.time()
        session = {"id": sid, "title": None, "created_at": now, "updated_at": now, "last_seq": 0}
        if self.store is not None:
            await self.store.call(self.store.create, session)
        self.sessions[sid] = session
        return web.json_response(session, status=201)

    async def delete_session(self, request: web.Request) -> web.Response:
        sid = request.match_info["session_id"]
        if self.sessions.pop(sid, None) is None:
            return web.json_response({"error": "Session not found", "code": "session_not_found"}, status=404)
        if self.store is not None:
            await self.store.call(self.store.delete, sid)
        run = self.runs.get(sid)
        if run is not None:
            run.stop_event.set()
        return web.json_response({"ok": True, "id": sid})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "runs": len(self.runs), "sessions": len(self.sessions)})

    # ── WebSocket ─────────────────────────────────────────────────────────
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["session_id"]
        ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        history: list[dict[str, str]] | None = []
        if self.store is not None:  # the original reads the session on connect
            history = await self.store.call(self.store.load, sid)
        if sid not in self.sessions or history is None:
            await ws.close(code=4004, message=b"Session not found")
            return ws
        queue: asyncio.Queue[tuple[str, Any]] | None = None
        current: AgentRun | None = None
        try:
            existing = self.runs.get(sid)
            if existing is not None:
                current, queue = existing, existing.subscribe()
                replay = list(existing.events)
                await ws.send_str(orjson.dumps({"type": "stream_start", "run_id": existing.run_id}).decode())
                if replay:
                    await ws.send_str(orjson.dumps({"type": "replay_start", "count": len(replay)}).decode())
                    for data in replay:
                        await ws.send_str(data)
                    await ws.send_str('{"type":"replay_end"}')
                alive = await self.stream_to_client(ws, queue)
                existing.unsubscribe(queue)
                queue = current = None
                if not alive:
                    return ws
            await ws.send_str('{"type":"session_sync"}')
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.ERROR:
                        break
                    continue
                try:
                    data = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    await ws.send_str('{"type":"error","message":"Invalid JSON"}')
                    continue
                if not isinstance(data, dict) or data.get("type") != "message" or not data.get("content"):
                    await ws.send_str(orjson.dumps({"type": "error", "message":
                                                    "Expected {type: 'message', content: '...'}"}).decode())
                    continue
                if sid in self.runs:
                    await ws.send_str(orjson.dumps({"type": "error", "message":
                                                    "Agent is already running for this session."}).decode())
                    continue
                session = self.sessions.get(sid)
                if session is None:
                    break
                run = AgentRun(uuid.uuid4().hex)
                content = str(data["content"])
                self.runs[sid] = run
                if self.store is not None:  # the message is durable before stream_start
                    try:
                        await self.store.call(self.store.add_message, sid, "user", content, run.run_id)
                    except BaseException:
                        self.runs.pop(sid, None)
                        raise
                    history.append({"role": "user", "content": content})
                queue, current = run.subscribe(), run
                seq = session["last_seq"] + 1
                run.task = asyncio.create_task(self.run_agent(run, sid, content, seq, history))
                await ws.send_str(orjson.dumps({"type": "stream_start", "seq": seq, "run_id": run.run_id}).decode())
                alive = await self.stream_to_client(ws, queue)
                run.unsubscribe(queue)
                queue = current = None
                if not alive:
                    break
        finally:
            if queue is not None and current is not None:
                current.unsubscribe(queue)
        return ws

    @staticmethod
    async def stream_to_client(ws: web.WebSocketResponse, queue: asyncio.Queue[tuple[str, Any]]) -> bool:
        """Send queued events until the run is done; False if the client went away."""
        alive = True
        while True:
            try:
                kind, payload = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    kind, payload = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    if alive:
                        try:
                            await ws.send_str('{"type":"heartbeat"}')
                        except (ConnectionError, RuntimeError):
                            alive = False
                    continue
            if kind == "done":
                return alive
            if alive:
                try:
                    await ws.send_str(payload)
                except (ConnectionError, RuntimeError):
                    alive = False

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sessions", self.create_session)
        app.router.add_delete("/sessions/{session_id}", self.delete_session)
        app.router.add_get("/ws/sessions/{session_id}", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        return app


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(agent: str, host: str, info_file: Path, store: DurableStore | None) -> None:
    spec = load(agent)
    app = Baseline(spec, store).make_app()
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.create_server((host, 0), backlog=1024)  # as navi-actor's supervisor listens
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    tmp = info_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": f"http://{host}:{port}"}))
    tmp.replace(info_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if store is not None:
        store.close()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description="the in-process baseline server")
    parser.add_argument("--agent", default="bench.agents:agent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--info-file", type=Path, required=True)
    parser.add_argument("--durable", type=Path, metavar="PATH",
                        help="keep sessions in this SQLite file: each message committed before stream_start")
    parser.add_argument("--durable-thread", action="store_true",
                        help="with --durable: use the connection from a thread of its own, not the event loop")
    args = parser.parse_args()
    if args.durable_thread and args.durable is None:
        parser.error("--durable-thread needs --durable PATH")
    _raise_fd_limit()
    store = DurableStore(args.durable, threaded=args.durable_thread) if args.durable else None
    uvloop.run(serve(args.agent, args.host, args.info_file, store))


if __name__ == "__main__":
    main()
