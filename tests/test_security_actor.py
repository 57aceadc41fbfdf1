"""The boundary around actors: hostile frames are refused, and actors hold no secret of the server."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import aiohttp
import pytest

from tests.conftest import Client, Server, receive, receive_until, run_turn, text_of
from tests.pgserver import CLUSTER_SECRET

TOKEN = "actor-test-token-" + "T" * 30
DB_PASSWORD = "db-password-" + "P" * 24
URL_PASSWORD = "url-password-" + "U" * 24
API_KEY = "sk-allowed-" + "K" * 24


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server running tests.agents:hostile with authentication off, shared by the module."""
    server = Server(tmp_path_factory.mktemp("hostile") / "var", "tests.agents:hostile", {}, [])
    server.start()
    yield server
    server.stop()


def hexes(*values: str) -> str:
    return " ".join(v.encode().hex() for v in values)


async def probe(client: Any, server: Server, *needles: str) -> dict[str, Any]:
    c = client(server)
    ws = await c.connect(await c.new_session())
    await receive(ws)
    events = await run_turn(ws, f"probe {server.front_pid} {hexes(*needles)}", timeout=30)
    await ws.close()
    assert events[-1]["type"] == "stream_end", events[-1]
    return json.loads(text_of(events))


# ── hostile frames ──────────────────────────────────────────────────────────


@pytest.mark.parametrize("attack, reason", [
    ("garbage", "not valid JSON"),
    ("oversize", "exceeds the limit"),
    ("badseq", "does not follow"),
    ("otherrun", "turn_done for no running turn"),
])
async def test_an_actor_breaking_the_protocol_is_killed_and_nothing_else_suffers(hostile_server, client, attack,
                                                                                 reason):
    """Garbage, an oversized length, a wrong seq or another run's turn_done written to the pipe: the actor is killed,
    its viewers get actor_protocol_violation, the session's next turn works, and another session's turn is intact."""
    c = client(hostile_server)
    victim, bystander = await c.new_session(), await c.new_session()
    ws, other = await c.connect(victim), await c.connect(bystander)
    await receive(ws), await receive(other)
    await other.send_json({"type": "message", "content": "slow 15 0.04"})
    await receive_until(other, lambda e: e["type"] == "stream_delta")
    events = await run_turn(ws, attack)
    final = events[-1]
    assert final["type"] == "error" and final["code"] == "actor_protocol_violation", final
    assert reason in final["message"] and "was killed" in final["message"]
    # (the agent found its channel: had it not, it would have failed with agent_error)
    assert "still alive" not in text_of(events) and "forged" not in text_of(events)
    detail = await c.wait_session(victim, lambda d: d["messages"] and d["messages"][-1]["role"] == "assistant")
    assert (detail["messages"][-1]["status"], detail["messages"][-1]["error_code"]) == \
        ("failed", "actor_protocol_violation")
    done = await receive_until(other, lambda e: e["type"] in ("stream_end", "error"), timeout=15)
    assert done[-1]["type"] == "stream_end" and done[-1]["content"] == "".join(f"w{i} " for i in range(15))
    assert text_of(await run_turn(ws, "hello again")) == "hello again "
    assert "front.actor_protocol_violation" in hostile_server.log_text()
    await ws.close(), await other.close()


# ── no secrets in actors ────────────────────────────────────────────────────


@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_actors_hold_no_token_or_secret_and_cannot_reach_the_front(make_server, sandbox):
    """With NAVI_TOKENS and secret variables set, an actor's environment, memory and /proc views hold none of them,
    the allow-listed key stays, the supervisor's and front's /proc entries are closed to it, and its limits apply.
    With the sandbox off too: the scrub is a second line, not the sandbox's."""
    server = make_server(
        "tests.agents:hostile",
        env={"NAVI_TOKENS": f"{TOKEN} alice admin", "MY_DB_PASSWORD": DB_PASSWORD,
             "DATABASE_URL": f"postgres://app:{URL_PASSWORD}@db.internal/app", "NAVI_OPENAI_API_KEY": API_KEY,
             "PLAIN_SETTING": "visible"},
        args=["--actor-rlimits", "nofile=256,as=4G", "--actor-nice", "7", "--sandbox", sandbox],
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        report = await probe(lambda s: Client(s, http), server, TOKEN, DB_PASSWORD, URL_PASSWORD)
    env = set(report["environ"])
    assert {"NAVI_TOKENS", "MY_DB_PASSWORD", "DATABASE_URL"}.isdisjoint(env)
    assert {"NAVI_OPENAI_API_KEY", "PLAIN_SETTING", "PATH"} <= env
    assert report["proc_environ"] == "clean"
    assert report["memory"] == [False, False, False], "a secret is somewhere in the actor's memory"
    assert report["own_fds"]["holding"] == [] and "memfd:navi-tokens" not in report["own_fds"]["memfds"]
    if os.geteuid() != 0:
        assert report["parent_environ"] == "denied" and report["parent_fds"] == "denied"
        assert report["front_environ"] == "denied" and report["front_mem"] == "denied"
    elif sandbox != "off":
        # A root actor without capabilities still owns root's /proc folders, so it can list the
        # supervisor's descriptor numbers; Landlock refuses what they point to, and the rest.
        assert report["parent_environ"] == "denied" and report["parent_fd_links"] == "denied"
        assert report["front_environ"] == "denied" and report["front_mem"] == "denied"
        assert report["front_environ"] == "denied" and report["front_mem"] == "denied"
    else:
        assert report["parent_environ"] == report["front_environ"] == "clean"
    assert report["rlimits"]["nofile"] == 256 and report["rlimits"]["as"] == 4 << 30
    assert report["nice"] == min(report["front_nice"] + 7, 19)
    assert report["no_new_privs"] is True
    assert TOKEN not in server.log_text() and DB_PASSWORD not in server.log_text()


@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_without_authentication_secrets_are_still_kept_from_actors(make_server, client, sandbox):
    """With authentication off, secrets are dropped from the supervisor and actors alike; --actor-env-allow keeps one.
    The sandbox also closes the supervisor's /proc entries; without it they are readable, but wiped."""
    server = make_server(
        "tests.agents:hostile",
        env={"MY_DB_PASSWORD": DB_PASSWORD, "OTHER_SECRET": URL_PASSWORD, "NAVI_OPENAI_API_KEY": API_KEY},
        args=["--actor-env-allow", "MY_DB_PASSWORD", "--sandbox", sandbox],
    )
    report = await probe(client, server, URL_PASSWORD, API_KEY)
    env = set(report["environ"])
    assert "MY_DB_PASSWORD" in env and {"OTHER_SECRET", "NAVI_OPENAI_API_KEY"}.isdisjoint(env)
    assert report["memory"] == [False, False]
    assert report["parent_environ"] == ("clean" if sandbox == "off" else "denied")
    assert report["proc_environ"] == "clean"
    assert report["no_new_privs"] is True
    assert report["nice"] == min(report["front_nice"] + 10, 19)  # the default --actor-nice


@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_the_cluster_secret_reaches_the_front_and_no_actor(make_server, pg_url, sandbox):
    """With a PostgreSQL store, NAVI_CLUSTER_SECRET is handed to the front (a node's request signed with it is
    let in), and an actor holds it nowhere: not in its environment, its memory or its descriptors; the
    supervisor's environment no longer has it."""
    from navi_actor.front import relayauth
    from navi_actor.tokens import LOCAL

    server = make_server("tests.agents:hostile", env={"NAVI_CLUSTER_SECRET": CLUSTER_SECRET},
                         args=["--store", pg_url, "--node-id", "n1", "--sandbox", sandbox])
    async with aiohttp.ClientSession() as http:
        c = Client(server, http)
        report = await probe(lambda s: c, server, CLUSTER_SECRET)
        sid = await c.new_session()
        for secret, status in ((CLUSTER_SECRET.encode(), 101), (b"not-the-cluster-secret-at-all!!", 401)):
            signed = relayauth.sign(secret, "n9", sid, LOCAL, time.time())
            try:
                async with http.ws_connect(f"{server.ws_url}/ws/sessions/{sid}",
                                           headers={relayauth.HEADER: signed}) as ws:
                    got = 101
                    assert await receive(ws) == {"type": "session_sync"}
            except aiohttp.WSServerHandshakeError as exc:
                got = exc.status
            assert got == status, secret
    assert "NAVI_CLUSTER_SECRET" not in report["environ"]
    assert report["proc_environ"] == "clean" and report["memory"] == [False]
    assert report["own_fds"]["holding"] == [], report["own_fds"]
    assert not any("cluster-secret" in m for m in report["own_fds"]["memfds"]), report["own_fds"]
    if os.geteuid() != 0 or sandbox != "off":
        assert report["parent_environ"] == "denied"
    else:
        assert report["parent_environ"] == "clean"
    assert CLUSTER_SECRET.encode() not in _environ_of(server.pid)  # wiped where it lived
    assert CLUSTER_SECRET not in server.log_text()
    security = next(json.loads(line) for line in server.log_text().splitlines() if '"serve.security"' in line)
    assert security["cluster_secret"] == "env" and "NAVI_CLUSTER_SECRET" in security["env_dropped"]


# ── the API key only where it is needed ─────────────────────────────────────


def _environ_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def _in_memory(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` occurs anywhere in process ``pid``'s readable memory (its environment included,
    wherever the environment's strings live once set or copied)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read().splitlines()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            for at in range(start, end, 1 << 22):
                try:
                    data = os.pread(fd, min(end, at + (1 << 22) + len(needle)) - at, at)
                except OSError:
                    break
                if needle in data:
                    return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_the_api_key_is_in_actors_only_not_in_the_supervisor_front_or_zygote(make_server, client, sandbox):
    """An allow-listed key (NAVI_OPENAI_API_KEY) is nowhere in the supervisor, the front or the zygote: not in
    /proc/PID/environ, not in their memory (their environment included); actors still get its value."""
    import hashlib

    env = {"NAVI_OPENAI_API_KEY": API_KEY, "PLAIN_SETTING": "visible", "OTHER_SECRET": URL_PASSWORD}
    server = make_server("tests.agents:environ_agent", args=["--sandbox", sandbox], env=env)
    others = [server.pid, server.front_pid, *server.zygote_pids()]
    assert len(others) >= 2
    for pid in others:
        block = _environ_of(pid)
        assert API_KEY.encode() not in block and b"NAVI_OPENAI_API_KEY" not in block, pid
        assert not _in_memory(pid, API_KEY.encode()), f"the key is in the memory of {pid}"
        assert not _in_memory(pid, URL_PASSWORD.encode()), pid  # a secret not allowed: dropped, as before
        assert _in_memory(pid, b"PLAIN_SETTING=visible"), pid  # the scan sees the environment's strings
    c = client(server)
    for _ in range(3):  # the two warm actors, then a refill
        _, ws = await c.open_session()
        report = json.loads(text_of(await run_turn(ws, "NAVI_OPENAI_API_KEY")))
        assert report == {"sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "in_proc_environ": False}
        await ws.close()
    security = next(json.loads(line) for line in server.log_text().splitlines() if '"serve.security"' in line)
    assert "NAVI_OPENAI_API_KEY" in security["env_dropped"] and API_KEY not in server.log_text()
