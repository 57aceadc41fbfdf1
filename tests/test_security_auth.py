"""Authentication, session ownership, tickets, origins and the secure default, against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from tests.conftest import ROOT, Server, receive, run_turn, text_of, wait_for

ALICE = "alice-admin-" + "A" * 32  # admin
BOB = "bob-user-" + "B" * 32  # user
CAROL = "carol-user-" + "C" * 32  # user
TTL = 1.0


def write_tokens(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with authentication on (alice admin, bob and carol users), shared by the module."""
    tmp = tmp_path_factory.mktemp("auth")
    tokens = write_tokens(tmp / "tokens.txt", f"# test tokens\n{ALICE} alice admin\n{BOB} bob\n{CAROL} carol user\n")
    server = Server(tmp / "var", "tests.agents:hostile", {},
                    ["--tokens-file", str(tokens), "--ws-ticket-ttl", str(TTL),
                     "--allowed-origins", "https://app.example"])
    server.start()
    yield server
    server.stop()


class As:
    """Requests to a server as one user (or with no token)."""

    def __init__(self, server: Server, http: aiohttp.ClientSession, token: str | None) -> None:
        self.server, self.http, self.token = server, http, token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**h, **(extra or {})}

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        async with self.http.request(method, self.server.url + path, json=body, headers=self.headers(headers)) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def new_session(self) -> str:
        status, body = await self.call("POST", "/sessions", {})
        assert status == 201, body
        return body["id"]

    async def ticket(self) -> str:
        status, body = await self.call("POST", "/ws-ticket")
        assert status == 200, body
        assert body["expires_in"] == TTL
        return body["ticket"]

    async def ws(self, sid: str, *, ticket: str | None = None, header: bool = True,
                 origin: str | None = None) -> aiohttp.ClientWebSocketResponse:
        url = f"{self.server.ws_url}/ws/sessions/{sid}" + (f"?ticket={ticket}" if ticket else "")
        headers = self.headers() if header else {}
        if origin:
            headers["Origin"] = origin
        return await self.http.ws_connect(url, headers=headers)


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    msg = await ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code, msg.extra


# ── who may do what ─────────────────────────────────────────────────────────


async def test_no_token_or_a_wrong_one_is_refused_with_401(auth_server, http):
    """Without a token, with a wrong one or with another scheme, every API route answers 401 unauthorized."""
    sid = await As(auth_server, http, BOB).new_session()
    for who in (As(auth_server, http, None), As(auth_server, http, "wrong-" + "x" * 40)):
        for method, path in [("GET", "/sessions"), ("POST", "/sessions"), ("GET", f"/sessions/{sid}"),
                             ("DELETE", f"/sessions/{sid}"), ("POST", f"/sessions/{sid}/stop"),
                             ("POST", "/ws-ticket"), ("GET", "/me"), ("GET", "/runs"), ("GET", "/metrics")]:
            status, body = await who.call(method, path)
            assert status == 401 and body["code"] == "unauthorized", (method, path, body)
    async with http.get(auth_server.url + "/sessions", headers={"Authorization": f"Basic {BOB}"}) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await As(auth_server, http, None).ws(sid)
    assert err.value.status == 401
    assert (await As(auth_server, http, BOB).call("GET", f"/sessions/{sid}"))[0] == 200


async def test_page_files_and_health_need_no_token(auth_server, http):
    """The chat page, its files and /healthz answer without a token; /me says authentication is on."""
    for path in ("/", "/static/app.js", "/healthz"):
        async with http.get(auth_server.url + path) as r:
            assert r.status == 200, path
    assert await As(auth_server, http, BOB).call("GET", "/me") == (200, {"auth": True, "user": "bob", "role": "user"})


async def test_another_users_session_looks_exactly_like_a_missing_one(auth_server, http):
    """Carol gets for bob's session the very answers (status and body) an unknown session gets, on every route."""
    bob, carol = As(auth_server, http, BOB), As(auth_server, http, CAROL)
    sid = await bob.new_session()
    missing = "0" * 32
    for method, path in [("GET", "/sessions/{}"), ("DELETE", "/sessions/{}"), ("POST", "/sessions/{}/stop")]:
        assert await carol.call(method, path.format(sid)) == await carol.call(method, path.format(missing)), path
    form = aiohttp.FormData()
    form.add_field("file", b"hello", filename="a.txt")
    async with http.post(f"{auth_server.url}/sessions/{sid}/files", data=form, headers=carol.headers()) as r:
        assert (r.status, await r.json()) == (404, {"error": "Session not found", "code": "session_not_found"})
    assert await closed_with(await carol.ws(sid)) == await closed_with(await carol.ws(missing)) == \
        (4004, "Session not found")
    status, listing = await carol.call("GET", "/sessions")
    assert status == 200 and sid not in [s["id"] for s in listing["sessions"]]
    # and nothing happened to it: bob still has it and can use it
    status, detail = await bob.call("GET", f"/sessions/{sid}")
    assert status == 200 and detail["owner"] == "bob"
    ws = await bob.ws(sid)
    assert (await receive(ws))["type"] == "session_sync"
    assert text_of(await run_turn(ws, "still mine")) == "still mine "
    await ws.close()


async def test_lists_show_ones_own_sessions_and_admins_may_ask_for_all(auth_server, http):
    """GET /sessions lists only the caller's sessions; ?all=1 lists everyone's for an admin and is 403 for a user."""
    alice, bob = As(auth_server, http, ALICE), As(auth_server, http, BOB)
    mine, theirs = await alice.new_session(), await bob.new_session()
    _, own = await alice.call("GET", "/sessions")
    assert mine in [s["id"] for s in own["sessions"]] and theirs not in [s["id"] for s in own["sessions"]]
    assert {s["owner"] for s in own["sessions"]} == {"alice"}
    _, every = await alice.call("GET", "/sessions?all=1")
    owners = {s["id"]: s["owner"] for s in every["sessions"]}
    assert owners[mine] == "alice" and owners[theirs] == "bob"
    assert (await bob.call("GET", "/sessions?all=1"))[0] == 403
    assert (await bob.call("GET", "/sessions?all=maybe"))[0] == 400
    # an admin may open anyone's session
    assert (await alice.call("GET", f"/sessions/{theirs}"))[0] == 200


async def test_operator_routes_need_an_admin(auth_server, http):
    """/runs, /runs/ID/kill and /metrics answer 401 without a token, 403 for a user and work for an admin."""
    alice, bob, nobody = As(auth_server, http, ALICE), As(auth_server, http, BOB), As(auth_server, http, None)
    for method, path in [("GET", "/runs"), ("GET", "/metrics"), ("POST", "/runs/" + "0" * 32 + "/kill")]:
        assert (await nobody.call(method, path))[0] == 401, path
        status, body = await bob.call(method, path)
        assert (status, body["code"]) == (403, "forbidden"), path
    assert (await alice.call("GET", "/runs"))[0] == 200
    assert (await alice.call("GET", "/metrics"))[0] == 200
    assert (await alice.call("POST", "/runs/" + "0" * 32 + "/kill", {}))[0] == 404


async def test_runs_report_the_owner_of_each_actor(auth_server, http):
    """After bob's turn, GET /runs shows his session's actor with owner bob."""
    alice, bob = As(auth_server, http, ALICE), As(auth_server, http, BOB)
    sid = await bob.new_session()
    ws = await bob.ws(sid)
    await receive(ws)
    await run_turn(ws, "hello")
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        _, runs = await alice.call("GET", "/runs")
        rows = [r for r in runs["actors"] if r["session_id"] == sid]
        if rows and rows[0]["owner"] == "bob":
            break
        assert asyncio.get_running_loop().time() < deadline, runs
        await asyncio.sleep(0.05)
    await ws.close()


# ── WebSocket tickets ───────────────────────────────────────────────────────


async def test_ticket_opens_one_websocket_once(auth_server, http):
    """A ticket from POST /ws-ticket opens the owner's session without a header, and only once."""
    bob = As(auth_server, http, BOB)
    sid = await bob.new_session()
    ticket = await bob.ticket()
    ws = await bob.ws(sid, ticket=ticket, header=False)
    assert (await receive(ws))["type"] == "session_sync"
    assert text_of(await run_turn(ws, "by ticket")) == "by ticket "
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bob.ws(sid, ticket=ticket, header=False)
    assert err.value.status == 401


async def test_a_ticket_carries_its_users_rights_only(auth_server, http):
    """Carol's ticket on bob's session is closed 4004, like an unknown session, and a forged ticket is 401."""
    bob, carol = As(auth_server, http, BOB), As(auth_server, http, CAROL)
    sid = await bob.new_session()
    ws = await carol.ws(sid, ticket=await carol.ticket(), header=False)
    assert await closed_with(ws) == (4004, "Session not found")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await carol.ws(sid, ticket="forged-" + "z" * 30, header=False)
    assert err.value.status == 401


# ── origins ─────────────────────────────────────────────────────────────────


async def test_hostile_origin_cannot_open_a_websocket_or_change_anything(auth_server, http):
    """A page from another origin gets 403 on the WebSocket upgrade and on POST; own and listed origins work."""
    bob = As(auth_server, http, BOB)
    sid = await bob.new_session()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bob.ws(sid, origin="http://evil.example")
    assert err.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bob.ws(sid, origin="null")
    assert err.value.status == 403
    status, body = await bob.call("POST", "/sessions", {}, headers={"Origin": "http://evil.example"})
    assert (status, body["code"]) == (403, "origin_not_allowed")
    status, body = await bob.call("DELETE", f"/sessions/{sid}", headers={"Origin": "http://evil.example"})
    assert status == 403 and (await bob.call("GET", f"/sessions/{sid}"))[0] == 200
    for origin in (auth_server.url, "https://app.example"):
        ws = await bob.ws(sid, origin=origin)
        assert (await receive(ws))["type"] == "session_sync"
        await ws.close()


# ── the secure default ──────────────────────────────────────────────────────


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `navi-actor serve` expecting it to refuse to start (it exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--data-dir", str(tmp_path / "var"),
         "--log-format", "json", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True, timeout=30,
    )


def test_refuses_to_serve_a_public_address_without_authentication(tmp_path):
    """On 0.0.0.0 with no tokens and no --insecure-no-auth, serve exits 2 saying how to configure it."""
    done = serve(tmp_path, "--host", "0.0.0.0")
    assert done.returncode == 2, done.stderr
    assert "refusing to serve 0.0.0.0 without authentication" in done.stderr
    for hint in ("--tokens-file", "NAVI_TOKENS", "--host 127.0.0.1", "--insecure-no-auth", "navi-actor token"):
        assert hint in done.stderr, hint


def test_refuses_bad_token_configurations_with_exit_2(tmp_path):
    """A tokens file others can read, a malformed one, or both sources at once: exit 2 with the reason."""
    loose = write_tokens(tmp_path / "loose", f"{BOB} bob\n", 0o640)
    done = serve(tmp_path, "--tokens-file", str(loose))
    assert done.returncode == 2 and f"run: chmod 600 {loose}" in done.stderr
    bad = write_tokens(tmp_path / "bad", "short bob\n")
    done = serve(tmp_path, "--tokens-file", str(bad))
    assert done.returncode == 2 and "entry 1" in done.stderr and "short" not in done.stderr.split("entry 1")[1][:40]
    good = write_tokens(tmp_path / "good", f"{BOB} bob\n")
    done = serve(tmp_path, "--tokens-file", str(good), env={"NAVI_TOKENS": f"{CAROL} carol"})
    assert done.returncode == 2 and "keep one" in done.stderr
    assert BOB not in done.stderr and CAROL not in done.stderr


async def test_insecure_no_auth_serves_a_public_address_with_a_warning(make_server, client):
    """--insecure-no-auth starts on 0.0.0.0 without tokens, logs a warning, and serves as before."""
    server = make_server("echo", args=["--host", "0.0.0.0", "--insecure-no-auth"])
    assert '"event": "serve.insecure_no_auth"' in server.log_text()
    assert '"level": "warning"' in [line for line in server.log_text().splitlines()
                                    if "serve.insecure_no_auth" in line][0]
    c = client(server)
    ws = await c.connect(await c.new_session())
    await receive(ws)
    assert text_of(await run_turn(ws, "open house")).strip() == "open house"


async def test_without_authentication_only_local_host_names_are_answered(make_server, http):
    """With authentication off, a request whose Host is not local (DNS rebinding) is refused 403; localhost works."""
    server = make_server("echo")
    port = server.url.rsplit(":", 1)[1]
    async with http.get(server.url + "/sessions", headers={"Host": f"evil.example:{port}"}) as r:
        assert r.status == 403 and (await r.json())["code"] == "host_not_allowed"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        async with http.get(server.url + "/sessions", headers={"Host": host}) as r:
            assert r.status == 200, host
    async with http.get(server.url + "/me") as r:
        assert await r.json() == {"auth": False, "user": None, "role": "admin"}


async def test_tokens_from_the_environment_work_like_a_file(make_server, http):
    """NAVI_TOKENS ('TOKEN USER ROLE' entries separated by ';') turns authentication on."""
    server = make_server("echo", env={"NAVI_TOKENS": f"{ALICE} alice admin; {BOB} bob"})
    wait_for(lambda: "serve.security" in server.log_text(), 5, "the security log line")
    assert ALICE not in server.log_text()
    bob = As(server, http, BOB)
    assert await bob.call("GET", "/me") == (200, {"auth": True, "user": "bob", "role": "user"})
    assert (await As(server, http, None).call("GET", "/sessions"))[0] == 401
    sid = await bob.new_session()
    ws = await bob.ws(sid)
    assert (await receive(ws))["type"] == "session_sync"
    assert text_of(await run_turn(ws, "from the environment")).strip() == "from the environment"
    await ws.close()
