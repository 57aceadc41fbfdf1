"""Fixtures that start the real server (supervisor, front, actors) as processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import psutil
import pytest

from supervisor.zygote import NAME as _ZYGOTE_COMM

ROOT = Path(__file__).resolve().parent.parent
ZYGOTE_NAME = _ZYGOTE_COMM.decode()  # its /proc/PID/comm
FINAL_TYPES = ("stream_end", "stream_stopped", "error")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def log_events(server: Server, name: str) -> list[dict[str, Any]]:
    """The server's JSON log lines whose ``event`` is ``name``, in order."""
    out = []
    for line in server.log_text().splitlines():
        if name in line:
            event = json.loads(line)
            if event["event"] == name:
                out.append(event)
    return out


class Server:
    """A running ``navi-actor serve`` and what a test needs to talk to it."""

    def __init__(self, data_dir: Path, agent: str, env: dict[str, str], extra: list[str],
                 cwd: Path = ROOT) -> None:
        self.cwd = cwd
        self.data_dir = data_dir
        self.agent = agent
        self.env = env
        self.extra = extra
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.front_pid = 0

    def start(self) -> Server:
        server_file = self.data_dir / "server.json"
        if server_file.exists():
            server_file.unlink()
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        cmd = [sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--data-dir", str(self.data_dir),
               "--log-format", "json", "--agent", self.agent, *self.extra]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log, cwd=self.cwd)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            return server_file.exists()

        wait_for(ready, 20, "server.json")
        info = json.loads(server_file.read_text())
        self.url = info["url"]
        self.front_pid = info["front_pid"]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def actor_pids(self) -> set[int]:
        return {p.pid for p in self.descendants() if p.pid != self.front_pid and not _is_zygote(p)}

    def zygote_pids(self) -> set[int]:
        return {p.pid for p in self.descendants() if _is_zygote(p)}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the server; return its exit code; fail if any process of it is left."""
        assert self.proc is not None
        family = self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log_text()[-4000:]}")
        deadline = time.monotonic() + 5
        while (left := [p for p in family if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not left, f"processes left behind 5 s after the server exited: {left}"
        self.log.close()
        return code


def _is_zygote(p: psutil.Process) -> bool:
    try:
        return p.name() == ZYGOTE_NAME
    except psutil.NoSuchProcess:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``make_server(agent="demo", env={...}, args=[...])`` → a started Server."""
    started: list[Server] = []

    def make(agent: str = "demo", env: dict[str, str] | None = None, args: list[str] | None = None,
             data_dir: Path | None = None, cwd: Path = ROOT) -> Server:
        server = Server(data_dir or tmp_path / f"var{len(started)}", agent, env or {}, args or [], cwd)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


# ── PostgreSQL (tests/pgserver.py) ────────────────────────────────────────


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One real PostgreSQL for the whole run; the tests that need it skip, saying why, where there is none."""
    from tests.pgserver import PgServer

    try:
        server = PgServer().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"PostgreSQL is not available, so this PostgreSQL test cannot run: {exc}")
    yield server
    server.destroy()


@pytest.fixture
def pg_url(pg_server: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database of `pg_server`, dropped after the test."""
    name = f"t{os.getpid()}_{next(_pg_numbers)}"
    url = pg_server.create_database(name)
    yield url
    if pg_server.running():
        pg_server.drop_database(name)


_pg_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server running tests.agents:scripted, shared by a module's tests."""
    server = Server(tmp_path_factory.mktemp("scripted") / "var", "tests.agents:scripted",
                    {}, ["--heartbeat-interval", "0.3", "--stop-grace", "0.5", "--stop-term-after", "1.5",
                     "--stop-kill-after", "1"])
    server.start()
    yield server
    server.stop()


# ── client helpers ──────────────────────────────────────────────────────────


class Client:
    """An HTTP + WebSocket client of one server."""

    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def new_session(self) -> str:
        async with self.http.post(self.server.url + "/sessions", json={}) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["id"]

    async def session(self, sid: str) -> dict[str, Any]:
        async with self.http.get(f"{self.server.url}/sessions/{sid}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def stop(self, sid: str) -> dict[str, Any]:
        async with self.http.post(f"{self.server.url}/sessions/{sid}/stop") as r:
            return await r.json()

    async def connect(self, sid: str, after: int | None = None) -> aiohttp.ClientWebSocketResponse:
        url = f"{self.server.ws_url}/ws/sessions/{sid}"
        if after is not None:
            url += f"?after={after}"
        return await self.http.ws_connect(url)

    async def open_session(self) -> tuple[str, aiohttp.ClientWebSocketResponse]:
        """A new session and a WebSocket on it, past its first message (session_sync)."""
        sid = await self.new_session()
        ws = await self.connect(sid)
        assert await receive(ws) == {"type": "session_sync"}
        return sid, ws

    async def busy_session(self, content: str = "slow 500 0.02") -> tuple[str, aiohttp.ClientWebSocketResponse]:
        """A new session whose turn (``content``) has streamed its first delta."""
        sid, ws = await self.open_session()
        await ws.send_json({"type": "message", "content": content})
        await receive_until(ws, lambda e: e["type"] == "stream_delta")
        return sid, ws

    async def wait_session(self, sid: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            detail = await self.session(sid)
            if cond(detail):
                return detail
            if time.monotonic() > deadline:
                raise AssertionError(f"session never reached the state: {detail}")
            await asyncio.sleep(0.02)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
    return json.loads(msg.data)


async def receive_until(ws: aiohttp.ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool],
                        timeout: float = 10.0, skip_heartbeats: bool = True) -> list[dict[str, Any]]:
    """Collect events up to and including the first one matching ``pred``."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        ev = await receive(ws, max(deadline - time.monotonic(), 0.01))
        if skip_heartbeats and ev["type"] == "heartbeat":
            continue
        out.append(ev)
        if pred(ev):
            return out


async def run_turn(ws: aiohttp.ClientWebSocketResponse, content: str, timeout: float = 10.0,
                   **extra: Any) -> list[dict[str, Any]]:
    """Send a message and collect its events up to the final one."""
    await ws.send_json({"type": "message", "content": content, **extra})
    return await receive_until(ws, lambda e: e["type"] in FINAL_TYPES and "seq" in e, timeout)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "stream_delta")


@pytest.fixture
async def client() -> Any:
    async with aiohttp.ClientSession() as http:
        yield lambda server: Client(server, http)
