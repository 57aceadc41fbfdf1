"""A client's connection hands its session a warm actor before any turn (--no-prebind: not).

The unit tests drive the front's ActorSet with a link that records what it
would tell the supervisor, in both orders of the supervisor's "no warm actor"
answer and the session's first turn. The functional tests use a real server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from navi_actor.config import Config
from navi_actor.front.actorset import ActorSet
from tests.conftest import log_events, receive, run_turn, text_of, wait_for


class _Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


class _Owner:
    def on_actor_event(self, *args: Any) -> None: ...
    def on_actor_control(self, *args: Any) -> None: ...
    def on_actor_violation(self, *args: Any) -> None: ...


def _set(**config: Any) -> tuple[ActorSet, _Link]:
    async def watch(actor: Any) -> None:
        await actor.wait_gone()
        actors.gone(actor)

    link = _Link()
    actors = ActorSet(asyncio.get_running_loop(), Config(**config), link, _Owner(), watch)  # type: ignore[arg-type]
    return actors, link


async def test_a_prebind_asks_for_a_warm_actor_only_and_the_first_turn_claims_it():
    actors, link = _set()
    actors.prebind("s1")
    (ask,) = link.sent
    assert ask == {"op": "spawn", "actor_id": ask["actor_id"], "session_id": "s1", "warm_only": True}
    actor = actors.by_session["s1"]
    assert actor.prebound
    actors.prebind("s1")  # a second client: the session has its actor already
    assert len(link.sent) == 1
    # The turn comes before the supervisor's answer: ask again, for a fork if no warm one was there.
    assert actors.for_session("s1") is actor and not actor.prebound
    assert link.sent[1] == {"op": "spawn", "actor_id": actor.actor_id, "session_id": "s1"}
    actors.no_warm(actor)  # the answer to the first ask: the second one forks, the handle stays
    assert actors.by_session["s1"] is actor and actor.alive
    # With the channel there (a warm one was handed over), a claim asks nothing more.
    actors.prebind("s2")
    other = actors.by_session["s2"]
    other.has_channel = True
    assert actors.for_session("s2") is other and len(link.sent) == 3


async def test_no_warm_actor_forgets_the_handle_and_the_turn_asks_afresh():
    actors, link = _set()
    actors.prebind("s1")
    actor = actors.by_session["s1"]
    actors.no_warm(actor)
    assert "s1" not in actors.by_session and actor.actor_id not in actors.by_id and not actor.alive
    fresh = actors.for_session("s1")
    assert fresh is not actor and "warm_only" not in link.sent[-1]


async def test_no_prebind_without_room_or_when_switched_off():
    actors, link = _set(max_actors=1)
    actors.for_session("busy")
    actors.prebind("s1")  # the only slot is taken: no eviction for a mere connection
    assert "s1" not in actors.by_session and len(link.sent) == 1
    off, off_link = _set(no_prebind=True)
    off.prebind("s1")
    assert not off_link.sent


async def test_the_last_client_leaving_before_a_turn_releases_the_prebound_actor_only():
    actors, link = _set()
    actors.prebind("s1")
    actors.release_prebound("s1")
    assert link.sent[-1]["op"] == "spawn"  # no channel yet: the shutdown waits in the outbox
    assert "s1" not in actors.by_session and actors.by_id  # retiring: gone once it has exited
    actors.for_session("s2")  # asked for by a turn: an ordinary idle actor afterwards
    actors.release_prebound("s2")
    assert "s2" in actors.by_session


# ── with a real server ────────────────────────────────────────────────────


_events = log_events


def _assigned(server: Any, sid: str) -> list[dict[str, Any]]:
    return [e for e in _events(server, "supervisor.actor_assigned") if e["session_id"] == sid]


async def test_a_connection_takes_a_warm_actor_which_runs_the_first_turn(make_server, client):
    server = make_server("echo", args=["--warm-actors", "2"])
    wait_for(lambda: len(_events(server, "supervisor.actor_spawned")) >= 2, 10, "the warm pool")
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert await receive(ws) == {"type": "session_sync"}
    (assigned,) = wait_for(lambda: _assigned(server, sid), 10, "a warm actor for the connection")
    assert assigned["warm"] is True
    assert text_of(await run_turn(ws, "hello")) == "hello"
    assert len(_assigned(server, sid)) == 1  # the turn ran in the actor the connection took
    assert psutil.pid_exists(assigned["actor_pid"])
    wait_for(lambda: len(server.actor_pids()) == 3, 10, "the pool refilled beside the session's actor")
    await ws.close()
    assert psutil.pid_exists(assigned["actor_pid"])  # it ran a turn: an ordinary idle actor now


async def test_the_actor_goes_when_the_last_client_leaves_before_a_turn(make_server, client):
    server = make_server("echo", args=["--warm-actors", "2"])
    wait_for(lambda: len(_events(server, "supervisor.actor_spawned")) >= 2, 10, "the warm pool")
    c = client(server)
    sid = await c.new_session()
    first, second = await c.connect(sid), await c.connect(sid)
    for ws in (first, second):
        assert await receive(ws) == {"type": "session_sync"}
    (assigned,) = wait_for(lambda: _assigned(server, sid), 10, "a warm actor for the connection")
    pid = assigned["actor_pid"]
    await first.close()
    wait_for(lambda: _events(server, "front.ws_disconnected"), 10, "the first client's leaving")
    assert psutil.pid_exists(pid) and not _events(server, "front.prebound_released")
    await second.close()
    wait_for(lambda: _events(server, "front.prebound_released"), 10, "the release")
    wait_for(lambda: pid not in server.actor_pids(), 10, "the prebound actor to exit")


async def test_without_a_warm_actor_nothing_is_forked_for_a_connection_and_turns_still_start(
        make_server, client):
    """--warm-actors 0: a connection gets no actor; a message sent at once (before or after the
    supervisor's "none ready") gets one forked for its turn."""
    server = make_server("echo", args=["--warm-actors", "0"])
    c = client(server)
    for i in range(4):
        sid = await c.new_session()
        ws = await c.connect(sid)
        assert await receive(ws) == {"type": "session_sync"}
        if i % 2:  # the supervisor answers "none ready" meanwhile; nothing is forked (watched for a while)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                assert not _assigned(server, sid)
                await asyncio.sleep(0.05)
        assert text_of(await run_turn(ws, f"turn {i}")) == f"turn {i}"
        (assigned,) = _assigned(server, sid)
        assert assigned["warm"] is False
        await ws.close()
    assert len(_events(server, "supervisor.actor_spawned")) == 4


async def test_no_prebind_leaves_the_pool_alone_until_the_turn(make_server, client):
    server = make_server("echo", args=["--warm-actors", "2", "--no-prebind"])
    wait_for(lambda: len(_events(server, "supervisor.actor_spawned")) >= 2, 10, "the warm pool")
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert await receive(ws) == {"type": "session_sync"}
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # a window: what must not happen, watched for a second
        assert not _assigned(server, sid)
        await asyncio.sleep(0.05)
    assert text_of(await run_turn(ws, "hello")) == "hello"
    assert _assigned(server, sid)[0]["warm"] is True


# ── at --max-actors: a slot freed ahead of the next session's need ─────────


async def test_taking_the_last_slot_retires_the_longest_idle_actor_soon_after():
    actors, _link = _set(max_actors=3)
    old, busy = actors.for_session("old"), actors.for_session("busy")
    busy.run = object()  # type: ignore[assignment]  # a turn runs there
    old.idle_since -= 10
    assert actors._evict_timer is None  # a slot is still free
    actors.prebind("next")  # the last slot: a retirement is scheduled, not done on this path
    timer = actors._evict_timer
    assert timer is not None and not old.retiring
    timer.cancel()
    actors._evict_ahead()  # what the timer runs
    assert old.retiring and "old" not in actors.by_session
    assert not busy.retiring and not actors.by_session["next"].retiring  # busy, and prebound
    actors._evict_ahead()  # below the limit now (a retiring actor has left its slot): nothing more
    assert [a.retiring for a in actors.by_id.values()].count(True) == 1


async def test_at_max_actors_the_next_session_finds_a_slot_and_a_warm_actor_at_its_connection(
        make_server, client):
    server = make_server("echo", args=["--max-actors", "2", "--warm-actors", "1"])
    c = client(server)
    sids = []
    for i in range(2):
        sid, ws = await c.open_session()
        assert text_of(await run_turn(ws, f"turn {i}")) == f"turn {i}"
        sids.append(sid)
    (evicted,) = wait_for(lambda: _events(server, "front.actor_evicted"), 10, "a slot freed ahead of need")
    assert evicted["session_id"] == sids[0] and evicted["ahead"] is True
    wait_for(lambda: len(server.actor_pids()) == 2, 10, "the evicted actor gone, the pool refilled")
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert await receive(ws) == {"type": "session_sync"}
    wait_for(lambda: _assigned(server, sid), 10, "a warm actor for the connection, in the freed slot")
    assert text_of(await run_turn(ws, "third")) == "third"


async def _turns_of_a_prebound_actor(server: Any, client: Any, n: int) -> list[dict[str, Any]]:
    """``n`` turns of a new session whose connection took a warm actor, once that actor has said hello
    to the front: their ``actor.turn_start`` lines."""
    wait_for(lambda: _events(server, "supervisor.actor_spawned"), 10, "the warm pool")
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert await receive(ws) == {"type": "session_sync"}
    wait_for(lambda: [e for e in _events(server, "front.actor_attached") if e["session_id"] == sid], 10,
             "the session's actor to say hello to the front")
    for i in range(n):
        assert text_of(await run_turn(ws, f"turn {i}")) == f"turn {i}"

    def starts() -> list[dict[str, Any]]:
        lines = [e for e in _events(server, "actor.turn_start") if e["session_id"] == sid]
        return lines if len(lines) == n else []

    return wait_for(starts, 10, "the turns' lines")


async def test_an_idle_actor_is_told_of_the_turn_whose_message_is_being_saved(make_server, client):
    """The front tells a session's idle actor that a turn is coming while it saves the message
    (``expected`` in the actor's line; whether it then read the turn while polling is the disk's
    and the scheduler's, see the next test). An actor that is still being forked is not told (it
    has not said hello)."""
    starts = await _turns_of_a_prebound_actor(make_server("echo", args=["--warm-actors", "1"]), client, 2)
    assert [e["expected"] for e in starts] == [True, True]

    cold = make_server("echo", args=["--warm-actors", "0"])
    c = client(cold)
    sid = await c.new_session()
    ws = await c.connect(sid)
    assert await receive(ws) == {"type": "session_sync"}
    assert text_of(await run_turn(ws, "forked for it")) == "forked for it"
    (start,) = wait_for(lambda: _events(cold, "actor.turn_start"), 10, "the turn's line")
    assert start["expected"] is False and start["polled"] is False


async def test_an_actor_told_of_a_turn_reads_it_while_polling_unless_polling_is_off(make_server, client):
    """With a poll long enough for any commit (--turn-poll-ms 100), the told actor reads its turns while
    polling; with --turn-poll-ms 0 the front tells it nothing."""
    for poll_ms, told in (("100", True), ("0", False)):
        server = make_server("echo", args=["--warm-actors", "1", "--turn-poll-ms", poll_ms])
        starts = await _turns_of_a_prebound_actor(server, client, 5)
        assert [e["expected"] for e in starts] == [told] * 5
        if told:  # each one missing a 100 ms poll would be a stalled machine, not this code
            assert any(e["polled"] for e in starts), starts
        else:
            assert not any(e["polled"] for e in starts)
