"""The sandbox with real agents: a hostile one tries every way out, a tool-using one keeps working.

Every escape is refused with the sandbox on, and open with ``--sandbox off``
(so that the test can fail). The server runs as the user the tests run as:
root in CI, where the confinement must hold all the same. An ordinary user
is not arranged here: on this project's machines the Python installation
lives in root's home (0700), which another uid cannot enter.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import aiohttp
import pytest

from navi_actor.sandbox import landlock
from supervisor.control import request
from tests.conftest import receive, run_turn, text_of

pytestmark = pytest.mark.skipif(landlock.abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")

TOKEN = "sandbox-test-token-0123456789abcdef"

#: What the hostile agent tries, and must not reach with the sandbox on.
ESCAPES = (
    "read_database", "read_wal", "list_data_folder", "list_other_uploads", "read_other_upload",
    "write_data_folder", "read_tokens", "read_home", "signal_supervisor", "signal_front",
    "signal_other_actor", "other_environ", "other_mem", "ptrace_other", "bind_port", "connect_other_port",
)


def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _turn(http: aiohttp.ClientSession, server, sid: str, content: str) -> list[dict]:
    async with http.ws_connect(f"{server.ws_url}/ws/sessions/{sid}") as ws:
        await receive(ws)  # session_sync
        return await run_turn(ws, content)


@pytest.mark.parametrize("mode", ["auto", "off"])
async def test_a_hostile_agent_cannot_leave_its_session(make_server, tmp_path, mode):
    """Database, WAL, other sessions' uploads, the data folder, the tokens file, the control socket, the home
    folder, the supervisor, the front and other actors (signals, /proc, ptrace), binding and unlisted ports:
    each denied with the sandbox on, each open with it off (the control socket is refused either way)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    tokens = secrets / "tokens"
    tokens.write_text(f"{TOKEN} alice admin\n")
    tokens.chmod(0o600)
    closed, allowed = _listener(), _listener()
    args = ["--sandbox", mode, "--tokens-file", str(tokens), "--sandbox-read", str(secrets),
            "--sandbox-net-connect", str(allowed.getsockname()[1])]
    server = make_server("tests.agents:escape", args=args)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{server.url}/sessions", json={}) as r:
            other = (await r.json())["id"]
        form = aiohttp.FormData()
        form.add_field("file", b"the other session's secret", filename="private.txt")
        async with http.post(f"{server.url}/sessions/{other}/files", data=form) as r:
            assert r.status == 201, await r.text()
        assert text_of(await _turn(http, server, other, "hello")) == "ready"
        rows = request(server.data_dir / "run" / "control.sock", {"op": "list"})["actors"]
        other_pid = next(row["pid"] for row in rows if row["session_id"] == other)
        async with http.post(f"{server.url}/sessions", json={}) as r:
            sid = (await r.json())["id"]
        ask = {
            "data_dir": str(server.data_dir.resolve()), "other_session": other, "other_file": "private.txt",
            "tokens_file": str(tokens), "home": os.path.expanduser("~"), "supervisor_pid": server.pid,
            "front_pid": server.front_pid, "other_pid": other_pid, "bind_port": _free_port(),
            "closed_port": closed.getsockname()[1], "allowed_port": allowed.getsockname()[1],
        }
        events = await _turn(http, server, sid, json.dumps(ask))
        assert events[-1]["type"] == "stream_end", events[-1]
        report = json.loads(text_of(events))
        # The session and the actor stay usable after every refusal.
        assert text_of(await _turn(http, server, sid, "again")) == "ready"
    closed.close()
    allowed.close()
    assert report["own_folder"] == "open" and report["signal_self"] == "open"
    assert report["connect_allowed_port"] == "open"
    if mode == "off":
        assert {k: report[k] for k in ESCAPES if report[k] != "open"} == {}
    else:
        assert {k: report[k] for k in ESCAPES if not report[k].startswith("denied")} == {}
        assert not (server.data_dir / "planted.txt").exists()
        assert server.proc.poll() is None, "signalled the supervisor"
    assert report["control_socket"].startswith("denied"), report


@pytest.mark.parametrize("zygote", ["zygote", "no-zygote"])
async def test_tools_keep_working_under_the_sandbox(make_server, client, zygote):
    """Under the default sandbox, tools run subprocesses (ls, python, git) in the work folder, write files,
    use tempfile and multiprocessing, import lazily, resolve names, read the session's uploads; a denied
    access is an ordinary PermissionError and the session goes on. Actors cloned by the zygote or forked
    by the supervisor (--no-zygote) alike."""
    server = make_server("tests.agents:toolbox", args=["--no-zygote"] if zygote == "no-zygote" else [])
    c = client(server)
    sid, ws = await c.open_session()
    report = json.loads(text_of(await run_turn(ws, "run the tools")))
    folder = os.path.realpath(server.data_dir / "uploads" / sid)
    assert report["cwd"] == os.path.join(folder, ".work")
    assert report["tmpdir"] == report["tempfile"] == os.path.join(folder, ".tmp")
    code, out, err = report["shell"]
    assert code == 0, err
    assert "(0.0, 1.0, 1)" in " ".join(out) and out[-1] == "1", out  # python ran; git committed once
    assert report["file"] == "kept" and report["lazy_import"] is True
    assert report["multiprocessing"] == 42 and report["dns"] == 443
    assert report["denied"] == "PermissionError"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", b"uploaded by the front", filename="note.txt")
        async with http.post(f"{server.url}/sessions/{sid}/files", data=form) as r:
            name = (await r.json())["files"][0]["name"]
    assert json.loads(text_of(await run_turn(ws, f"uploaded {name}")))["upload"] == "uploaded by the front"


async def test_the_openai_agent_streams_with_only_its_port_allowed(make_server, client):
    """--sandbox-net-connect with the model server's port: the openai agent streams as before; with another
    port only, its connection is refused by the sandbox and the turn says it could not connect."""
    from tests.fake_openai import MODEL, FakeOpenAI, Reply

    fake = await FakeOpenAI().start()
    try:
        port = int(fake.url.split(":")[2].split("/")[0])
        env = {"NAVI_OPENAI_BASE_URL": fake.url, "NAVI_OPENAI_MODEL": MODEL, "NAVI_OPENAI_RETRY_BACKOFF": "0.01"}
        c = client(make_server("openai", env=env, args=["--sandbox-net-connect", f"443,{port}"]))
        _sid, ws = await c.open_session()
        fake.push(Reply("Forty-two."))
        events = await run_turn(ws, "what is six times seven?")
        assert events[-1]["type"] == "stream_end" and text_of(events) == "Forty-two."
        other = 1 if port != 1 else 2
        c = client(make_server("openai", env=env, args=["--sandbox-net-connect", str(other)]))
        _sid, ws = await c.open_session()
        events = await run_turn(ws, "again?", timeout=30)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "model_server_error", events[-1]
        assert f"does not allow connecting to port {port}" in events[-1]["message"]
        assert len(fake.requests) == 1, "the second server's actor reached the model server"
    finally:
        await fake.close()
