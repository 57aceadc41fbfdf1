"""supervisor.zygote: actors cloned from an idle zygote, as the supervisor's own children.

The clone adapter runs in a fresh interpreter (it needs a single-threaded
process); the functional tests run the real server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

from navi_actor import ops
from supervisor import zygote
from supervisor.control import SOCKET_NAME, runtime_dir
from tests.conftest import ROOT, run_turn, text_of, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine not in zygote._CLONE_NR,
                                reason="actors are cloned from a zygote only on Linux, x86-64 and aarch64")

CLONE_SCRIPT = textwrap.dedent('''
    import ctypes, json, os, random, signal, sys, threading
    from supervisor.zygote import Clone

    r, w = os.pipe()
    hooks = []
    os.register_at_fork(after_in_child=lambda: hooks.append("after_in_child"))
    zpid = os.fork()
    if zpid == 0:  # the zygote: clone two siblings, then exit without reaping anything
        clone = Clone()
        for _ in range(2):
            if clone() == 0:
                got = []
                signal.signal(signal.SIGUSR1, lambda *a: got.append("signal"))
                signal.raise_signal(signal.SIGUSR1)
                t = threading.Thread(target=lambda: got.append(threading.get_native_id()))
                t.start()
                t.join()
                addr = ctypes.c_void_p()
                ctypes.CDLL(None).prctl(40, ctypes.byref(addr), 0, 0, 0)
                os.write(w, (json.dumps({
                    "pid": os.getpid(), "ppid": os.getppid(), "hooks": hooks, "got": got,
                    "tid_in_libc": ctypes.c_int.from_address(addr.value).value,
                    "native_id": threading.get_native_id(),
                    "random": random.random(),
                }) + "\\n").encode())
                os._exit(7)
        os._exit(0)
    os.close(w)
    codes = {}
    for _ in range(3):  # the zygote and both clones are this process's children
        pid, status = os.waitpid(-1, 0)
        codes[pid] = os.waitstatus_to_exitcode(status)
    with os.fdopen(r) as f:
        clones = [json.loads(line) for line in f]
    print(json.dumps({"me": os.getpid(), "zygote": zpid, "codes": codes, "clones": clones}))
''')


def test_a_clone_is_a_sibling_with_a_working_interpreter_and_c_library():
    """Clones are the caller's parent's children, with their own thread id, fork hooks run and threads working."""
    out = subprocess.run([sys.executable, "-c", CLONE_SCRIPT], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    clones = report["clones"]
    assert len(clones) == 2
    # both clones were reaped by the top process, not by the zygote that made them
    assert {int(pid): code for pid, code in report["codes"].items()} == {
        report["zygote"]: 0, clones[0]["pid"]: 7, clones[1]["pid"]: 7}
    for c in clones:
        assert c["ppid"] == report["me"]
        assert c["tid_in_libc"] == c["pid"] == c["native_id"]  # CLONE_CHILD_SETTID wrote glibc's copy
        assert c["hooks"] == ["after_in_child", "after_in_child"]  # the zygote's fork, then the clone's
        assert c["got"][0] == "signal" and c["got"][1] not in (c["pid"], 0)  # raise() and a new thread
    assert clones[0]["random"] != clones[1]["random"]  # random reseeded in each child


def _report_main(actor_id: str, session_id: str, fd: int, life_fd: int) -> int:
    with socket.socket(fileno=fd) as sock:
        sock.setblocking(True)
        sock.sendall(json.dumps({"actor_id": actor_id, "session_id": session_id, "pid": os.getpid(),
                                 "pgid": os.getpgid(0), "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
                                 "life_fd": life_fd, "fd": fd}).encode())
    return 5


def test_the_zygote_clones_actors_that_report_to_the_caller_and_survives_bad_requests():
    """Each request gives a child of this process, in its own group, holding just its two descriptors."""
    z = zygote.Zygote.start(_report_main)
    try:
        wait_for(lambda: psutil.Process(z.pid).name() == "navi-zygote", 10, "the zygote to name itself")
        for n in range(2):
            chan, chan_actor = socket.socketpair()
            life, life_actor = socket.socketpair()
            pid = z.fork_actor(f"a{n}", "s1", chan_actor.fileno(), life_actor.fileno())
            chan_actor.close()
            life_actor.close()
            chan.settimeout(10)
            report = json.loads(chan.recv(65536))
            _, status = os.waitpid(pid, 0)  # ours to reap: ChildProcessError if it were not our child
            assert os.waitstatus_to_exitcode(status) == 5
            assert report["actor_id"] == f"a{n}" and report["session_id"] == "s1"
            assert report["pid"] == report["pgid"] == pid
            assert psutil.Process(z.pid).children() == []
            assert set(report["fds"]) <= {0, 1, 2, report["fd"], report["life_fd"], max(report["fds"])}
            chan.close()
            life.close()
        # a request without its descriptors is refused, and the zygote goes on serving
        socket.send_fds(z.sock, [b'{"actor_id": "x", "session_id": ""}'], [])
        assert "expected 2 descriptors" in json.loads(z.sock.recv(4096))["error"]
        chan, chan_actor = socket.socketpair()
        pid = z.fork_actor("a2", "", chan_actor.fileno(), chan_actor.fileno())
        chan_actor.close()
        chan.settimeout(10)
        assert json.loads(chan.recv(65536))["actor_id"] == "a2"
        os.waitpid(pid, 0)
        chan.close()
    finally:
        z.close()
        os.waitpid(z.pid, 0)
    a, b = socket.socketpair()
    with a, b, pytest.raises(zygote.ZygoteFailed):
        z.fork_actor("late", "", a.fileno(), b.fileno())


def _mapped_files(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


async def test_actors_come_from_the_zygote_and_a_dead_zygote_is_replaced(make_server, client):
    """Actors are the supervisor's children but not the zygote's; kill the zygote and sessions go on."""
    server = make_server("echo")
    supervisor = psutil.Process(server.pid)
    first = wait_for(server.zygote_pids, 10, "the zygote")
    (zpid,) = first
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert text_of(await run_turn(ws, "one")) == "one"
    actors = server.actor_pids()
    assert actors and all(psutil.Process(pid).ppid() == server.pid for pid in actors)
    assert psutil.Process(zpid).children() == [] and psutil.Process(zpid).ppid() == supervisor.pid
    # the zygote (and so every actor) was forked before the front's modules were imported
    assert "/aiohttp/" in _mapped_files(server.front_pid) and "/aiohttp/" not in _mapped_files(zpid)

    os.kill(zpid, signal.SIGKILL)
    wait_for(lambda: "supervisor.zygote_failed" in server.log_text(), 10, "the zygote's death to be logged")
    for n in range(3):  # the warm pool refills, and new sessions get actors
        sid = await c.new_session()
        ws = await c.connect(sid)
        assert text_of(await run_turn(ws, f"again {n}")) == f"again {n}"
    second = wait_for(server.zygote_pids, 10, "a new zygote")
    assert second != first
    logged = [json.loads(line) for line in server.log_text().splitlines() if "supervisor.zygote_failed" in line]
    assert logged[0]["reason"] == "zygote was killed (SIGKILL; perhaps out of memory?)"
    assert "supervisor.zygote_disabled" not in server.log_text()
    status = ops.ask(runtime_dir(server.data_dir) / SOCKET_NAME, {"op": "status"})  # what /metrics shows
    assert status["zygote"] == {"pid": next(iter(second)), "failures": 1, "off": None}


async def test_no_zygote_forks_actors_from_the_supervisor(make_server, client):
    """With --no-zygote there is no zygote process, and actors still run turns."""
    server = make_server("echo", args=["--no-zygote"])
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert text_of(await run_turn(ws, "hello")) == "hello"
    assert server.zygote_pids() == set()
    assert '"reason": "--no-zygote"' in server.log_text()
    status = ops.ask(runtime_dir(server.data_dir) / SOCKET_NAME, {"op": "status"})
    assert status["zygote"] == {"pid": None, "failures": 0, "off": "--no-zygote"}


async def test_a_zygote_that_does_not_answer_is_replaced_and_costs_no_turn(make_server, client):
    """A stopped zygote: the supervisor waits REPLY_TIMEOUT, kills it, forks itself, then starts a new one."""
    server = make_server("echo")
    (zpid,) = wait_for(server.zygote_pids, 10, "the zygote")
    wait_for(lambda: len(server.actor_pids()) == 2, 10, "the warm pool")
    os.kill(zpid, signal.SIGSTOP)
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert text_of(await run_turn(ws, "first")) == "first"  # a warm actor; the refill meets the stopped zygote
    wait_for(lambda: f"no answer in {zygote.REPLY_TIMEOUT:g} s" in server.log_text(), 10, "the timeout")
    wait_for(lambda: _gone_or_zombie(zpid), 10, "the stopped zygote to be killed")
    for n in range(3):
        sid = await c.new_session()
        ws = await c.connect(sid)
        assert text_of(await run_turn(ws, f"then {n}")) == f"then {n}"
    assert wait_for(server.zygote_pids, 10, "a new zygote") != {zpid}


def _gone_or_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited (it may be reaped between two looks: that is gone too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
