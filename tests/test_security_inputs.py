"""Every bad input gets a clear, coded error; nothing is lost and the connection or session stays usable."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import orjson
import pytest

from navi_actor import protocol
from tests.conftest import Server, receive, run_turn, text_of

DORA = "dora-" + "D" * 40
EVE = "eve-" + "E" * 40
MiB = 1024 * 1024
UPLOAD_MAX = MiB
RATE = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with authentication on (dora, eve), a 1 MiB upload limit and 30 messages a minute."""
    tmp = tmp_path_factory.mktemp("inputs")
    tokens = tmp / "tokens"
    tokens.write_text(f"{DORA} dora\n{EVE} eve\n")
    tokens.chmod(0o600)
    srv = Server(tmp / "var", "tests.agents:scripted", {},
                 ["--tokens-file", str(tokens), "--upload-max-bytes", str(UPLOAD_MAX), "--rate-limit", str(RATE)])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {DORA}"}) as session:
        yield session


async def new_session(server: Server, http: aiohttp.ClientSession) -> str:
    async with http.post(server.url + "/sessions", json={}) as r:
        assert r.status == 201
        return (await r.json())["id"]


async def connect(server: Server, http: aiohttp.ClientSession, sid: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{server.ws_url}/ws/sessions/{sid}", max_msg_size=0)
    assert (await receive(ws))["type"] == "session_sync"
    return ws


async def upload(server: Server, http: aiohttp.ClientSession, sid: str, *files: tuple[str, bytes],
                 raw_names: bool = False) -> tuple[int, Any]:
    form = aiohttp.FormData(quote_fields=not raw_names)  # raw: names as browsers send them
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with http.post(f"{server.url}/sessions/{sid}/files", data=form) as r:
        return r.status, await r.json()


async def saved_user_messages(server: Server, http: aiohttp.ClientSession, sid: str) -> list[dict[str, Any]]:
    async with http.get(f"{server.url}/sessions/{sid}") as r:
        return [m for m in (await r.json())["messages"] if m["role"] == "user"]


def msg(**fields: Any) -> str:
    return json.dumps({"type": "message", "content": "x", **fields})


# ── the WebSocket ───────────────────────────────────────────────────────────


async def test_each_bad_message_gets_a_coded_error_and_the_session_still_works(server, http):
    """Bad JSON, types, sizes, base64, files and frames each get an error with a code; then a turn works."""
    sid = await new_session(server, http)
    ws = await connect(server, http, sid)
    outside = Path(server.data_dir) / "outside.txt"
    outside.write_text("not an upload")
    cases = [
        ("{not json", "invalid_json"),
        (json.dumps({"type": "subscribe"}), "invalid_message"),
        (json.dumps({"type": "message", "content": ["x"]}), "invalid_message"),
        (json.dumps({"type": "message"}), "invalid_message"),
        (msg(content="x" * (protocol.MAX_CONTENT_BYTES + 1)), "content_too_large"),
        (msg(content="é" * (protocol.MAX_CONTENT_BYTES // 2 + 1)), "content_too_large"),
        (msg(images={"a": 1}), "invalid_message"),
        (msg(images=["QUJD"] * 11), "too_many_images"),
        (msg(images=["A" * (5 * MiB + 4)]), "image_too_large"),
        (msg(images=["QUJD", "not base64!"]), "invalid_image"),
        (msg(images=["QUJ"]), "invalid_image"),
        (msg(images=["QU JD"]), "invalid_image"),
        (msg(images=["data:image/png;base64,@@@@"]), "invalid_image"),
        (msg(files="a.txt"), "invalid_message"),
        (msg(files=[{"name": "a", "path": "a"}] * 21), "invalid_message"),
        (msg(files=[{"name": "", "path": "a"}]), "invalid_message"),
        (msg(files=[{"name": "a", "path": "p" * 5000}]), "invalid_message"),
        (msg(files=[{"name": "p", "path": "../../../../etc/passwd"}]), "invalid_file"),
        (msg(files=[{"name": "p", "path": "/etc/passwd"}]), "invalid_file"),
        (msg(files=[{"name": "p", "path": str(outside)}]), "invalid_file"),
        (msg(files=[{"name": "p", "path": "never-uploaded.txt"}]), "invalid_file"),
    ]
    for raw, code in cases:
        await ws.send_str(raw)
        event = await receive(ws)
        assert event["type"] == "error" and event["code"] == code, (raw[:80], event)
        assert event["message"] and "seq" not in event
    await ws.send_bytes(b"\x00binary")
    assert (await receive(ws))["code"] == "invalid_message"
    assert await saved_user_messages(server, http, sid) == []  # nothing refused was saved
    assert text_of(await run_turn(ws, "still works")) == "still works "
    await ws.close()


def test_the_largest_valid_message_fits_in_one_websocket_message():
    """Ten 5 MB images with data: prefixes, the longest text and every file entry fit in MAX_WS_MESSAGE."""
    image = "data:image/jpeg;base64," + "A" * protocol.MAX_IMAGE_BYTES
    files = [{"name": "n" * protocol.MAX_FILE_NAME, "path": "p" * protocol.MAX_FILE_PATH}] * protocol.MAX_FILES
    biggest = orjson.dumps({"type": "message", "content": "c" * protocol.MAX_CONTENT_BYTES,
                            "images": [image] * protocol.MAX_IMAGES, "files": files})
    assert len(biggest) <= protocol.MAX_WS_MESSAGE
    assert protocol.MAX_WS_MESSAGE >= protocol.MAX_IMAGES * protocol.MAX_IMAGE_BYTES * 4 // 3 * 3 // 4


async def test_ten_images_of_5_mb_are_admitted(server, http):
    """A message with 10 base64 images of exactly 5 MiB each starts a turn and is saved with its 10 images."""
    sid = await new_session(server, http)
    ws = await connect(server, http, sid)
    images = ["data:image/png;base64," + "QUJD" * (5 * MiB // 4)] * 10
    events = await run_turn(ws, "ten pictures", timeout=30, images=images)
    assert events[-1]["type"] == "stream_end", events[-1]
    [user] = await saved_user_messages(server, http, sid)
    assert user["images"] == 10
    await ws.close()


async def test_a_message_over_the_size_limit_closes_with_1009_and_the_session_goes_on(server, http):
    """A WebSocket message over MAX_WS_MESSAGE is closed with 1009 (too big); a new connection works."""
    sid = await new_session(server, http)
    ws = await connect(server, http, sid)
    # The server answers as soon as it reads the frame's header, while the body is still being sent.
    sending = asyncio.ensure_future(ws.send_str("x" * (protocol.MAX_WS_MESSAGE + 1)))
    closing = await ws.receive(timeout=30)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
    await asyncio.gather(sending, return_exceptions=True)
    ws = await connect(server, http, sid)
    assert text_of(await run_turn(ws, "after the big one")) == "after the big one "
    await ws.close()


async def test_too_many_messages_are_rate_limited_per_connection(server, http):
    """Past --rate-limit messages a minute, a connection gets rate_limited errors; others are unaffected."""
    sid = await new_session(server, http)
    ws = await connect(server, http, sid)
    for _ in range(RATE):
        await ws.send_str("{bad")
    codes = [(await receive(ws))["code"] for _ in range(RATE)]
    assert codes == ["invalid_json"] * RATE
    await ws.send_str(msg(content="one too many"))
    limited = await receive(ws)
    assert limited["code"] == "rate_limited" and f"at most {RATE} a minute" in limited["message"]
    assert not ws.closed
    other = await connect(server, http, sid)
    assert text_of(await run_turn(other, "another connection")) == "another connection "
    await other.close()
    await ws.close()


async def test_bad_session_ids_are_not_found(server, http):
    """Ids outside [A-Za-z0-9_-]{1,64} answer 404 (HTTP) or close 4004 (WebSocket), and touch nothing."""
    for bad in ("..%2F..%2Fetc", "a.b", "x" * 65, "%00"):
        async with http.get(f"{server.url}/sessions/{bad}") as r:
            assert r.status == 404, bad
        status, _ = await upload(server, http, bad, ("a.txt", b"x"))
        assert status == 404, bad
        ws = await http.ws_connect(f"{server.ws_url}/ws/sessions/{bad}")
        await ws.receive(timeout=10)
        assert ws.close_code == 4004, bad
    assert not (Path(server.data_dir) / "uploads" / "..").resolve().joinpath("etc").exists()


# ── uploads ─────────────────────────────────────────────────────────────────


async def test_uploads_are_private_files_a_message_may_name(server, http):
    """An upload is stored 0600 under uploads/SID (0700) with a safe name, and its entry works in files."""
    sid = await new_session(server, http)
    status, body = await upload(server, http, sid, ("../../notes v1.txt", b"hello"), ("notes_v1.txt", b"again"))
    assert status == 201, body
    first, second = body["files"]
    folder = Path(server.data_dir).resolve() / "uploads" / sid
    assert (first["name"], second["name"]) == ("notes_v1.txt", "notes_v1-1.txt")
    status, raw = await upload(server, http, sid, ("../../notes v1.txt", b"raw"), raw_names=True)
    assert status == 201 and raw["files"][0]["name"] == "notes_v1-2.txt"
    assert Path(first["path"]) == folder / "notes_v1.txt" and Path(first["path"]).read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(first["path"]).st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    ws = await connect(server, http, sid)
    events = await run_turn(ws, "read", files=[first, {"name": "rel", "path": "notes_v1-1.txt"}])
    assert events[-1]["type"] == "stream_end"
    [user] = await saved_user_messages(server, http, sid)
    assert f"- notes_v1.txt → {first['path']}" in user["agent_content"]
    assert f"- rel → {second['path']}" in user["agent_content"]
    await ws.close()


async def test_a_symlink_out_of_the_upload_folder_is_refused(server, http):
    """A files entry naming a symlink in the upload folder that points outside it gets invalid_file."""
    sid = await new_session(server, http)
    status, body = await upload(server, http, sid, ("real.txt", b"real"))
    assert status == 201
    folder = Path(body["files"][0]["path"]).parent
    (folder / "escape").symlink_to("/etc/hostname")
    (folder / "inside").symlink_to(folder / "real.txt")
    ws = await connect(server, http, sid)
    for path in ("escape", str(folder / "escape"), "../" + sid + "/escape"):
        await ws.send_str(msg(files=[{"name": "e", "path": path}]))
        assert (await receive(ws))["code"] == "invalid_file", path
    events = await run_turn(ws, "fine", files=[{"name": "i", "path": "inside"}])
    assert events[-1]["type"] == "stream_end"
    await ws.close()


async def test_uploads_over_the_limit_or_malformed_are_refused_and_leave_nothing(server, http):
    """Over --upload-max-bytes is 413 upload_too_large, a non-multipart body 400; no file is left behind."""
    sid = await new_session(server, http)
    status, body = await upload(server, http, sid, ("small.txt", b"x" * 1000), ("big.bin", b"y" * (UPLOAD_MAX + 1)))
    assert (status, body["code"]) == (413, "upload_too_large")
    folder = Path(server.data_dir).resolve() / "uploads" / sid
    assert sorted(p.name for p in folder.iterdir()) == [".tmp", ".work"]  # the sandbox's, made with the session
    async with http.post(f"{server.url}/sessions/{sid}/files", json={"a": 1}) as r:
        assert (r.status, (await r.json())["code"]) == (400, "invalid_upload")
    form = aiohttp.FormData()
    form.add_field("note", "no file name")
    async with http.post(f"{server.url}/sessions/{sid}/files", data=form) as r:
        assert (r.status, (await r.json())["code"]) == (400, "invalid_upload")
    assert sorted(p.name for p in folder.iterdir()) == [".tmp", ".work"]
    assert (await upload(server, http, sid, ("ok.txt", b"fine")))[0] == 201


async def test_deleting_a_session_deletes_its_uploads(server, http):
    """DELETE /sessions/ID removes the session's upload folder too."""
    sid = await new_session(server, http)
    status, body = await upload(server, http, sid, ("a.txt", b"a"))
    folder = Path(body["files"][0]["path"]).parent
    assert folder.is_dir()
    async with http.delete(f"{server.url}/sessions/{sid}") as r:
        assert r.status == 200
    assert not folder.exists()


async def test_another_user_cannot_upload_or_name_uploads(server, http):
    """Eve cannot upload into dora's session (404), and her session cannot name dora's files (invalid_file)."""
    sid = await new_session(server, http)
    _, body = await upload(server, http, sid, ("mine.txt", b"dora's"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {EVE}"}) as eve:
        assert (await upload(server, eve, sid, ("x.txt", b"x")))[0] == 404
        her = await new_session(server, eve)
        ws = await connect(server, eve, her)
        await ws.send_str(msg(files=body["files"]))
        assert (await receive(ws))["code"] == "invalid_file"
        await ws.close()


def test_the_database_and_data_folder_are_private(server):
    """The SQLite file (and its WAL) are 0600 and the data and runtime folders 0700."""
    data = Path(server.data_dir)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "run").stat().st_mode) == 0o700
    for name in ("navi.sqlite3", "navi.sqlite3-wal"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
