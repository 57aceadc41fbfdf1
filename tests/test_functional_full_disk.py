"""A full disk, for real: a small tmpfs as a real server's data folder (and its log's), filled by a file.

The turn whose result cannot be written ends for its viewers with
``store_error``; new turns are refused with ``store_error``; ``/healthz``
answers 503 and ``/metrics`` counts the failures; the front survives its
own log lines failing; and once the file is removed, the kept answer is
saved and the server works again, without a restart.

Mounting needs root (CI runs as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import psutil
import pytest

from navi_actor.store import open_store
from tests.conftest import FINAL_TYPES, Server, receive, receive_until, run_turn, text_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs the suite as root)")

DISK = "16m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of DISK bytes, unmounted afterwards whatever happened."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # something still holds a file open


def _write_until_full(path: Path, mode: str, fill_byte: bytes, chunks: tuple[int, ...]) -> None:
    with open(path, mode, buffering=0) as f:
        for chunk in chunks:
            data = fill_byte * chunk
            while True:
                try:
                    f.write(data)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break


def fill(path: Path, log: Path | None = None) -> None:
    """Write ``path`` until the filesystem has no byte left.

    With ``log`` (the server's log file), fill the rest of its last page
    too, with newlines: else the next few lines would still fit there.
    """
    _write_until_full(path, "wb", b"\0", (1 << 20, 1 << 16, 1 << 12, 1))
    if log is not None:
        _write_until_full(log, "ab", b"\n", (1,))
    assert os.statvfs(path.parent).f_bavail == 0, "the disk still has room"


@pytest.fixture
def disk_server(small_disk: Path) -> Iterator[Server]:
    """A server whose data folder and log file are both on the small disk."""
    server = Server(small_disk / "var", "tests.agents:scripted", {}, ["--stop-grace", "0.5"])
    assert server.log_path.parent == small_disk
    server.start()
    try:
        yield server
    finally:
        hog = small_disk / "hog"
        if hog.exists():
            hog.unlink()  # room for the last log lines and the store's shutdown
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


async def healthz(c: Any) -> tuple[int, dict[str, Any]]:
    async with c.http.get(c.server.url + "/healthz") as r:
        return r.status, await r.json()


async def metric(c: Any, name: str, labels: str = "") -> float:
    async with c.http.get(c.server.url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def test_the_store_fails_and_recovers_on_a_full_disk(small_disk: Path) -> None:
    """finish_run and probe raise StoreFailure, naming SQLite's reason; the run waits; then all is written."""
    from navi_actor.store import StoreFailure
    store = open_store(small_disk / "var")
    try:
        sid = store.create_session()["id"]
        store.begin_run(sid, "r1", content="hi", agent_content="hi")
        store.checkpoint_runs([("r1", "checkpointed text", 4)])
        fill(small_disk / "hog")
        with pytest.raises(StoreFailure) as exc:
            store.finish_run("r1", status="done", content="w " * 3000, last_seq=9)
        assert exc.value.op == "finish_run" and "disk is full" in exc.value.reason
        with pytest.raises(StoreFailure):
            store.probe()
        assert [r["id"] for r in store.running_runs()] == ["r1"]
        (small_disk / "hog").unlink()
        store.probe()
        store.finish_run("r1", status="failed", content=None, last_seq=9, error="x", error_code="store_error")
        assert store.running_runs() == []
        assert store.get_session_detail(sid)["messages"][-1]["content"] == "checkpointed text"
    finally:
        store.close()


async def test_a_full_disk_ends_the_turn_refuses_new_ones_and_the_server_recovers(
        disk_server: Server, small_disk: Path, client: Any) -> None:
    c = client(disk_server)
    sid_a, ws_a = await c.open_session()
    sid_b, ws_b = await c.open_session()
    status, health = await healthz(c)
    assert status == 200 and health["ok"] and health["store"]["ok"], health

    # A long answer is streaming (its text is checkpointed every second) when the disk fills up.
    await ws_a.send_json({"type": "message", "content": "slow 100000 0.001"})
    events = await receive_until(ws_a, lambda e: e["type"] == "stream_delta" and e["delta"] == "w1000 ", 30)
    fill(small_disk / "hog", disk_server.log_path)
    assert (await c.stop(sid_a))["ok"]
    events += await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES and "seq" in e, 15)
    final = events[-1]
    assert final["type"] == "error" and final["code"] == "store_error", final
    assert "could not be saved" in final["message"] and "disk is full" in final["message"], final
    assert "keeps it" in final["message"], final  # and says it is kept for a retry
    assert text_of(events).startswith("w0 w1 ")

    status, health = await healthz(c)
    assert status == 503 and not health["ok"] and not health["store"]["ok"], health
    assert "disk is full" in health["store"]["error"] and health["store"]["unsaved_results"] == 1
    assert health["runs"] == 0  # the turn is over, nobody can be attached to it

    # A client that reconnects is not attached to the ended turn; its new message is refused, not lost silently.
    ws_a2 = await c.connect(sid_a, after=final["seq"] - 5)
    assert await receive(ws_a2) == {"type": "session_sync"}
    await ws_a2.send_json({"type": "message", "content": "echo anyone"})
    refused = await receive_until(ws_a2, lambda e: e["type"] == "error")
    assert refused[-1]["code"] == "store_error" and "not saved" in refused[-1]["message"], refused
    # Another session's turn is refused too, and so is a new session.
    await ws_b.send_json({"type": "message", "content": "echo hello"})
    refused = await receive_until(ws_b, lambda e: e["type"] == "error")
    assert refused[-1]["code"] == "store_error" and "not saved" in refused[-1]["message"], refused
    assert "disk is full" in refused[-1]["message"]
    async with c.http.post(disk_server.url + "/sessions", json={}) as r:
        assert r.status == 503 and (await r.json())["code"] == "store_error"

    assert await metric(c, "navi_store_failures_total", '{op="finish_run"}') >= 1
    assert await metric(c, "navi_store_up") == 0
    assert await metric(c, "navi_store_refused_turns_total") >= 2
    assert await metric(c, "navi_log_lines_dropped_total") >= 1  # the front's log is on the full disk
    assert disk_server.proc is not None and disk_server.proc.poll() is None
    assert psutil.pid_exists(disk_server.front_pid)
    assert await metric(c, "navi_front_restarts_total") == 0

    # Space is back: the kept answer is saved, the store is healthy, turns work, without a restart.
    (small_disk / "hog").unlink()
    synced = await receive_until(ws_a2, lambda e: e["type"] == "session_sync", 15)
    assert synced[-1] == {"type": "session_sync"}  # told to reload: the answer is in the history now
    status, health = await healthz(c)
    assert status == 200 and health["ok"] and health["store"]["ok"], health
    detail = await c.session(sid_a)
    assert [r["status"] for r in detail["runs"]] == ["stopped"]  # not left "running"
    assert detail["messages"][-1]["content"].startswith("w0 w1 ")
    assert detail["messages"][-1]["content"] == text_of(events)
    assert text_of(await run_turn(ws_a2, "echo saved now")) == "echo saved now "
    assert text_of(await run_turn(ws_b, "echo me too")) == "echo me too "
    await c.new_session()
    assert psutil.pid_exists(disk_server.front_pid)
    lines = []
    for line in disk_server.log_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass  # cut short by the full disk, or not JSON (the serving banner)
    saved = [line for line in lines if line["event"] in ("front.result_saved", "store.recovered")]
    assert {line["event"] for line in saved} == {"front.result_saved", "store.recovered"}, saved
    assert all(line["role"] == "front" and line["pid"] == disk_server.front_pid for line in saved), saved
    for ws in (ws_a, ws_a2, ws_b):
        await ws.close()


async def test_a_message_that_cannot_be_saved_is_refused_and_the_store_is_probed_until_space_is_back(
        disk_server: Server, small_disk: Path, client: Any) -> None:
    """No answer waits here: the message's own write fails; a probe write tells when the disk has room again."""
    c = client(disk_server)
    sid, ws = await c.open_session()
    fill(small_disk / "hog", disk_server.log_path)
    await ws.send_json({"type": "message", "content": "echo lost?"})
    events = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert [e["type"] for e in events] == ["error"], events  # no stream_start: no turn began
    assert events[0]["code"] == "store_error" and "not saved" in events[0]["message"], events
    assert "disk is full" in events[0]["message"]
    status, health = await healthz(c)
    assert status == 503 and health["store"]["op"] == "begin_run" and health["store"]["unsaved_results"] == 0
    assert await metric(c, "navi_store_failures_total", '{op="begin_run"}') == 1
    await ws.send_json({"type": "message", "content": "echo still?"})  # refused before anything is written
    again = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert [e["type"] for e in again] == ["error"] and again[0]["code"] == "store_error", again
    assert await metric(c, "navi_store_failures_total", '{op="begin_run"}') == 1  # it did not try
    (small_disk / "hog").unlink()
    deadline = asyncio.get_running_loop().time() + 15
    while (await healthz(c))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "the store never recovered"
        await asyncio.sleep(0.05)
    assert text_of(await run_turn(ws, "echo back")) == "echo back "
    detail = await c.session(sid)
    assert [m["content"] for m in detail["messages"] if m["role"] == "user"] == ["echo back"]
    await ws.close()


async def test_an_answer_kept_by_its_actor_survives_a_front_restart_on_a_full_disk(
        disk_server: Server, small_disk: Path, client: Any) -> None:
    """The actor keeps its turn_done until the front says persisted: a new front gets it again and saves it."""
    c = client(disk_server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 100000 0.001"})
    events = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["delta"] == "w300 ", 30)
    fill(small_disk / "hog", disk_server.log_path)
    assert (await c.stop(sid))["ok"]
    events += await receive_until(ws, lambda e: e["type"] in FINAL_TYPES and "seq" in e, 15)
    assert events[-1]["code"] == "store_error", events[-1]
    old_front = disk_server.front_pid
    os.kill(old_front, signal.SIGKILL)  # the front's memory, and the result it kept there, are gone
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # the supervisor starts a new front on the same port (server.json cannot be rewritten)
        assert asyncio.get_running_loop().time() < deadline, "no new front"
        try:
            status, health = await healthz(c)
            if health["store"]["unsaved_results"] == 1:
                break  # the new front got the answer from the actor, and could not save it either
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    assert status == 503 and "disk is full" in health["store"]["error"], health
    assert disk_server.proc is not None and disk_server.proc.poll() is None  # the supervisor is fine
    (small_disk / "hog").unlink()
    detail = await c.wait_session(sid, lambda d: d["runs"][-1]["status"] != "running", 15)
    assert detail["runs"][-1]["status"] == "stopped"
    assert detail["messages"][-1]["content"] == text_of(events)
    ws2 = await c.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}
    assert text_of(await run_turn(ws2, "echo again")) == "echo again "
    await ws2.close()
