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
