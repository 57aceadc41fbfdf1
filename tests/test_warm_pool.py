"""The warm pool: its policy (pure) and, with a real server, how it is used and refilled."""

from __future__ import annotations

import datetime
import json
import random
import socket
from typing import Any

import pytest

from supervisor.pool import MAX_BACKOFF, WarmPool
from supervisor.supervisor import REFILL_DELAY
from tests.conftest import run_turn, text_of, wait_for


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


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        WarmPool(-1)


def _events(server: Any, name: str) -> list[dict[str, Any]]:
    out = []
    for line in server.log_text().splitlines():
        if name in line:
            event = json.loads(line)
            if event["event"] == name:
                out.append(event)
    return out


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
