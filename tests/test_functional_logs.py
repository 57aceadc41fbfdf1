"""What operators see: every log line tagged, one id per actor, process titles, ps as of now, counts that agree."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from tests.conftest import FINAL_TYPES, ROOT, receive_until, run_turn, text_of, wait_for

LADDER = ["--stop-grace", "0.3", "--stop-term-after", "1", "--stop-kill-after", "1"]
ROLES = {"supervisor", "front", "actor"}


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=30, env=env)


def log_lines(server) -> list[dict[str, Any]]:
    """Every line of the server's log as JSON; any other line fails the test (but the serving banner)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("navi-actor: serving on "):
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
    return out


async def test_every_line_has_pid_and_role_and_each_actor_one_id(make_server, client):
    """A real server takes turns on warm actors, a user's stop, an operator's stop and an operator's kill; then
    every line of its JSON log has pid and role, and all the lines about one actor process (its own, the
    supervisor's, the front's) name it by one actor_id, the one it was assigned."""
    server = make_server("tests.agents:scripted", args=[*LADDER, "--warm-actors", "2"])
    c = client(server)
    _, ws = await c.open_session()
    assert text_of(await run_turn(ws, "hello")) == "hello "
    stopped, sws = await c.busy_session()
    await c.stop(stopped)
    assert (await receive_until(sws, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_stopped"
    operator, ows = await c.busy_session()
    out = script("navi-kill", "--data-dir", str(server.data_dir), operator)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (await receive_until(ows, lambda e: e["type"] in FINAL_TYPES))[-1]["reason"] == "killed_by_operator"
    killed, kws = await c.busy_session("ignore_stop")
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--force", killed)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (await receive_until(kws, lambda e: e["type"] in FINAL_TYPES))[-1]["code"] == "killed_by_operator"
    for w in (ws, sws, ows, kws):
        await w.close()
    assert server.stop() == 0

    lines = log_lines(server)
    untagged = [ln for ln in lines if type(ln.get("pid")) is not int or ln.get("role") not in ROLES]
    assert not untagged, f"{len(untagged)} lines without pid or role, e.g. {untagged[:3]}"
    events = {ln["event"] for ln in lines}
    assert {"actor.assigned", "actor.stop", "actor.operator_stop", "supervisor.actor_assigned"} <= events

    assigned = {ln["actor_pid"]: ln["actor_id"] for ln in lines if ln["event"] == "supervisor.actor_assigned"}
    assert len(assigned) >= 4 and any(ln.get("warm") for ln in lines if ln["event"] == "supervisor.actor_assigned")
    ids: dict[int, set[str]] = defaultdict(set)  # actor pid → every actor_id a line gives it
    for ln in lines:
        pid = ln["pid"] if ln["role"] == "actor" else ln.get("actor_pid")
        if pid is not None and "actor_id" in ln:
            ids[pid].add(ln["actor_id"])
    for pid, actor_id in assigned.items():
        assert ids[pid] == {actor_id}, f"actor {pid} is named {ids[pid]}, assigned {actor_id}"
    for ln in lines:
        if ln["role"] == "actor" and ln["event"] == "actor.assigned":
            own = [x for x in lines if x["pid"] == ln["pid"] and x["role"] == "actor"]
            after = own[own.index(ln):]
            assert all(x.get("actor_id") == assigned[ln["pid"]] for x in after), after
            assert ln["warm_id"] != ln["actor_id"]
            spawned = [x for x in lines if x["event"] == "supervisor.actor_spawned" and x["actor_pid"] == ln["pid"]]
            assert spawned and spawned[0]["warm_id"] == ln["warm_id"]  # the warm life, found by its own id


# ── process titles ──────────────────────────────────────────────────────────


def title(pid: int) -> str:
    """The process's title as ps -f shows it: /proc/PID/cmdline up to its first NUL."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode()


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def titled(server, text: str) -> int | None:
    """The pid of the server's process titled ``text``, if there is one."""
    for p in server.descendants():
        try:
            if title(p.pid) == text:
                return p.pid
        except OSError:
            continue
    return None


async def test_each_process_has_a_title_that_follows_the_actors_state(make_server, client):
    """ps shows navi-actor: supervisor / front, the zygote by its name, and each actor with its session and
    state: warm, running, stopping (while its agent ignores the stop), idle, read from /proc/PID/cmdline."""
    server = make_server("tests.agents:scripted", args=["--warm-actors", "1", "--stop-grace", "5",
                                                         "--stop-term-after", "8", "--stop-kill-after", "2"])
    assert (title(server.pid), comm(server.pid)) == ("navi-actor: supervisor", "navi-supervisor")
    assert (title(server.front_pid), comm(server.front_pid)) == ("navi-actor: front", "navi-front")
    (zygote,) = server.zygote_pids()
    assert (title(zygote), comm(zygote)) == ("navi-zygote", "navi-zygote")
    warm = wait_for(lambda: titled(server, "navi-actor: actor - warm"), 10, "a warm actor's title")
    assert comm(warm) == "navi-actor"
    c = client(server)
    sid, ws = await c.busy_session("ignore_stop")
    pid = wait_for(lambda: titled(server, f"navi-actor: actor {sid} running"), 10, "the running title")
    assert pid == warm  # the warm actor took the session, and its title says so
    await c.stop(sid)
    wait_for(lambda: title(pid) == f"navi-actor: actor {sid} stopping", 4, "the stopping title")
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=15))[-1]
    assert final["type"] == "stream_stopped"
    wait_for(lambda: title(pid) == f"navi-actor: actor {sid} idle", 10, "the idle title")
    assert comm(pid) == "navi-actor"
    await ws.close()
