"""The warm pool: its policy (pure) and, with a real server, how it is used and refilled."""

from __future__ import annotations

import datetime
import json
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from supervisor.causes import EXIT_AGENT_FAILED
from supervisor.control import SOCKET_NAME, request, runtime_dir
from supervisor.pool import MAX_BACKOFF, MAX_START_FAILURES, WarmPool
from supervisor.supervisor import REFILL_DELAY
from tests.conftest import ROOT, log_events, run_turn, text_of, wait_for


class _A:  # stands for supervisor.actors.Actor: the pool only keeps it
    def __init__(self, pid: int) -> None:
        self.pid = pid


def _pool(size: int) -> WarmPool:
    return WarmPool(size, random.Random(7))  # seeded: the jitter is the same every run


def test_the_pool_hands_out_its_oldest_actor_and_wants_refills_up_to_its_size():
    pool = _pool(2)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        assert pool.wants_one(0.0)
        pool.add(_A(10), pairs[0][0])
        pool.add(_A(11), pairs[1][0])
        assert not pool.wants_one(0.0) and len(pool) == 2 and pool.holds(10)
        actor, _chan = pool.take()
        assert actor.pid == 10 and not pool.holds(10) and pool.wants_one(0.0)
        assert pool.discard(11) and pairs[1][0].fileno() == -1  # its channel is closed
        assert not pool.discard(11) and pool.take() is None
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_failures_back_off_doubling_with_jitter_up_to_the_cap_and_a_use_resets_them():
    pool = _pool(1)
    delays = [pool.failed(100.0) for _ in range(12)]
    for n, delay in enumerate(delays[:6]):
        base = 0.1 * 2 ** n
        assert 0.5 * base <= delay <= 1.5 * base
    assert all(d <= 1.5 * MAX_BACKOFF for d in delays) and max(delays) >= 0.5 * MAX_BACKOFF
    assert not pool.wants_one(100.0) and pool.wants_one(100.0 + 1.5 * MAX_BACKOFF)
    a, b = socket.socketpair()
    with a, b:
        pool.add(_A(1), a)
        pool.take()  # it lived long enough to be used: the next failure starts over
    assert pool.failed(200.0) <= 0.15


def test_agent_start_failures_in_a_row_pause_the_pool_until_a_later_actor_starts():
    pool = _pool(2)
    assert pool.start_state() == {"ok": True, "failures": 0, "error": None, "paused": False}
    assert not pool.agent_failed(1, "boom 1") and not pool.agent_failed(2, "boom 2")
    assert pool.wants_one(1e9) and not pool.paused  # two in a row: backoff only
    assert pool.agent_failed(3, "boom 3") and pool.paused and not pool.wants_one(1e9)
    assert not pool.agent_failed(4, "boom 4")  # already paused: said once
    assert pool.start_state() == {"ok": False, "failures": 4, "error": "boom 4", "paused": True}
    assert not pool.agent_started(4) and not pool.agent_started(2) and pool.paused  # forked before the failure
    assert pool.agent_started(5) and not pool.paused and pool.wants_one(0.0)  # backoff forgotten too
    assert pool.start_state()["ok"] and not pool.agent_started(6)


def test_a_start_between_failures_breaks_the_streak_and_sighup_resumes():
    pool = _pool(1)
    pool.agent_failed(1, "a")
    pool.agent_failed(2, "b")
    assert not pool.agent_started(3) and pool.start_failures == 0  # not paused, but the count starts over
    pool.agent_failed(4, "c")
    pool.agent_failed(5, "d")
    assert not pool.paused
    assert pool.agent_failed(6, "e") and pool.resume() and not pool.paused and not pool.resume()


def test_the_exit_code_of_a_failed_agent_is_the_actors():
    from navi_actor.actor import EXIT_AGENT_FAILED as ACTORS

    assert EXIT_AGENT_FAILED == ACTORS


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        WarmPool(-1)


_events = log_events


def _at(event: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))


async def test_a_first_turn_takes_a_warm_actor_and_its_replacement_comes_a_little_later(make_server, client):
    """The turn gets an actor forked beforehand; the refill waits REFILL_DELAY, off the turn's first moments."""
    server = make_server("echo", args=["--warm-actors", "2"])
    wait_for(lambda: len(_events(server, "supervisor.actor_spawned")) >= 2, 10, "the warm pool")
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert text_of(await run_turn(ws, "hello")) == "hello"
    (assigned,) = _events(server, "supervisor.actor_assigned")
    assert assigned["warm"] is True and assigned["session_id"] == sid
    spawned = wait_for(lambda: _events(server, "supervisor.actor_spawned")[2:], 10, "the refill")
    assert spawned[0]["warm"] is True
    assert (_at(spawned[0]) - _at(assigned)).total_seconds() >= REFILL_DELAY
    assert len(server.actor_pids()) == 3  # the session's actor and a full pool again


# ── an agent that cannot start ──────────────────────────────────────────────


def _status(server: Any) -> dict[str, Any]:
    return request(runtime_dir(server.data_dir.resolve()) / SOCKET_NAME, {"op": "status"})


def _stays(cond: Any, seconds: float, what: str) -> None:
    """Check ``cond`` over a window of ``seconds``: fail the moment it is false."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), what
        time.sleep(0.05)


def _paused_server(make_server: Any, tmp_path: Any) -> tuple[Any, Any]:
    """A server whose agent's factory raises (a bad setting), once the pool has paused."""
    bad = tmp_path / "bad-setting"
    bad.write_text("timeout=abc")
    # --sandbox off: warm actors make their agent as soon as they are forked (with the sandbox on,
    # only once a turn takes them), so this is where a broken factory made the pool fork in a loop.
    server = make_server("tests.agents:misconfigured_factory", env={"NAVI_TEST_BAD_SETTING": str(bad)},
                         args=["--sandbox", "off", "--warm-actors", "2"])
    wait_for(lambda: _events(server, "supervisor.warm_pool_paused"), 20, "the warm pool to pause")
    wait_for(lambda: not server.actor_pids(), 10, "the last failed actor to be reaped")
    return server, bad


async def test_an_agent_that_cannot_start_pauses_the_pool_says_why_and_a_turn_starts_it_again(
        make_server, client, tmp_path):
    """A factory that raises in 3 actors in a row stops the warm pool's forks (no respawn loop), and /healthz
    and ps say why; a turn still gets the agent's start error; once mended, a turn's start resumes the pool."""
    server, bad = _paused_server(make_server, tmp_path)
    died = len(_events(server, "supervisor.warm_actor_died"))
    assert MAX_START_FAILURES <= died <= MAX_START_FAILURES + 1  # the second of a pair may be in flight
    spawned = len(_events(server, "supervisor.actor_spawned"))
    # Without the pause, the backoff (0.4-1.2 s after the 4th failure, doubling) forks a pair again in here.
    _stays(lambda: len(_events(server, "supervisor.actor_spawned")) == spawned, 4.0, "the paused pool forked")
    assert len(_events(server, "supervisor.warm_actor_died")) == died and not server.actor_pids()

    c = client(server)
    async with c.http.get(server.url + "/healthz") as r:
        health = await r.json()
    assert r.status == 200 and health["warm"] == 0
    start = health["agent_start"]
    assert start["ok"] is False and start["paused"] is True and start["failures"] == died
    assert "ValueError: bad setting in" in start["error"] and "agent" in start["error"]
    ps = [sys.executable, "-m", "navi_actor", "ps", "--data-dir", str(server.data_dir)]
    out = subprocess.run(ps, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0 and f"failed to start in {died} new actors in a row" in out.stdout
    assert "bad setting in" in out.stdout and "warm pool is paused" in out.stdout
    listing = json.loads(subprocess.run([*ps, "--json"], capture_output=True, text=True, timeout=30,
                                        cwd=ROOT).stdout)
    assert listing["warm"] == 0 and listing["actors"] == [] and listing["agent_start"]["paused"] is True

    _, ws = await c.open_session()
    err = (await run_turn(ws, "hi"))[-1]
    assert err["type"] == "error" and err["code"] == "agent_failed_to_start"
    assert "bad setting in" in err["message"]
    # The turn forked its own actor, and no warm one came with it. (When that actor's failure beats the
    # message's commit, the front asks once more for the turn: front/runtime.py start_turn; so 1 or 2.)
    for_turn = len(_events(server, "supervisor.actor_spawned")) - spawned
    assert for_turn in (1, 2)
    wait_for(lambda: _status(server)["agent_start"]["failures"] == died + for_turn, 10, "the failures counted")

    bad.unlink()  # the setting is mended
    assert text_of(await run_turn(ws, "mended")) == "mended"
    (resumed,) = wait_for(lambda: _events(server, "supervisor.warm_pool_resumed"), 10, "the pool to resume")
    assert resumed["reason"] == "the agent started"
    wait_for(lambda: _status(server)["warm"] == 2, 10, "the pool to be refilled")
    assert _status(server)["agent_start"] == {"ok": True, "failures": 0, "error": None, "paused": False}
    await ws.close()


def test_sighup_starts_a_paused_pool_again(make_server, tmp_path):
    """SIGHUP (the operator mended the cause) resumes the warm pool at once, with no turn needed."""
    server, bad = _paused_server(make_server, tmp_path)
    bad.unlink()
    server.proc.send_signal(signal.SIGHUP)
    (resumed,) = wait_for(lambda: _events(server, "supervisor.warm_pool_resumed"), 10, "the pool to resume")
    assert resumed["reason"] == "SIGHUP"
    wait_for(lambda: _status(server)["warm"] == 2, 10, "the pool to be refilled")
    assert _status(server)["agent_start"]["ok"] is True


async def test_with_the_sandbox_failed_starts_are_counted_at_turns(make_server, client):
    """With the sandbox on, a warm actor makes its agent when a turn takes it: 3 such failures in a row
    pause the pool too, and /healthz says why."""
    server = make_server("tests.agents:broken_factory", args=["--warm-actors", "2"])
    c = client(server)
    for n in range(MAX_START_FAILURES):
        _, ws = await c.open_session()
        err = (await run_turn(ws, f"turn {n}"))[-1]
        assert err["code"] == "agent_failed_to_start" and "factory exploded" in err["message"]
        await ws.close()
    wait_for(lambda: _events(server, "supervisor.warm_pool_paused"), 10, "the pool to pause")
    async with c.http.get(server.url + "/healthz") as r:
        start = (await r.json())["agent_start"]
    assert start["paused"] is True and "factory exploded" in start["error"]
