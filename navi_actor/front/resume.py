"""Resuming a turn that ended while the client was away (``?after=SEQ`` after its end).

An actor keeps its session's last finished turn (its replay, the terminal
event last) until the session's next turn starts or the actor exits
(:class:`navi_actor.replay.EndedTurn`). A client that connects with a cursor
in that turn, or just before its ``stream_start``, while no turn runs, is
sent what it missed as a live viewer got it, then told where the session
stands::

    stream_start                              when the cursor is before it
    replay_start, the missed events, replay_end    when any were missed
    the terminal event (stream_end, stream_stopped or error), as first sent
    session_sync with last_seq                (the terminal event's seq)

Any other cursor, or a session without such an actor, gets ``session_sync``
alone, as before: the client reloads the history. The front keeps no copy
of the turn: it asks the actor each time (a front restart loses nothing), and
checks the answer, since actors are untrusted (:func:`check`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Protocol

import orjson

from navi_actor import protocol
from navi_actor.events import RESERVED_TYPES
from navi_actor.front.actors import ActorHandle
from navi_actor.front.runs import RunViewer as Viewer

TERMINAL_TYPES = frozenset({"stream_end", "stream_stopped", "error"})
#: Seconds to wait for the actor's answer; then the client is told to sync (an idle
#: actor answers at once, unless something left behind by its agent blocks its loop).
ANSWER_WAIT = 2.0


class Runtime(Protocol):
    """What resuming reaches of the runtime (:class:`navi_actor.front.runtime.Runtime`)."""

    actors: Mapping[str, ActorHandle]  # session id → its live actor
    loop: asyncio.AbstractEventLoop
    replays_served: int

    def on_actor_violation(self, actor: ActorHandle, reason: str) -> None: ...

    def resumed(self, viewer: Viewer, last_seq: int | None) -> None: ...


def check(msg: dict[str, Any], after: int) -> str | None:
    """Why an actor's ``replay_ended`` answer (with a run) cannot be what ``after`` asked
    for, or None when it can be sent as it is. Pure."""
    run_id, start, last, events = msg["run_id"], msg.get("start"), msg.get("last_seq"), msg["events"]
    if type(start) is not dict or start.get("type") != "stream_start" or start.get("run_id") != run_id:
        return "start is not the turn's stream_start"
    if type(start.get("seq")) is not int or type(last) is not int or not start["seq"] - 1 <= after <= last:
        return "the cursor is not in the turn"
    prev = after
    for ev in events:
        if ev["seq"] <= prev:
            return "events are not in order after the cursor"
        prev = ev["seq"]
    if prev != last:
        return "events do not end at last_seq"
    if events and events[-1]["type"] not in TERMINAL_TYPES:
        return "the last event is not the turn's terminal event"
    if any(ev["type"] in RESERVED_TYPES for ev in events[:-1]):
        return "a replayed event has a type only the runtime sends"
    if type(msg.get("truncated", False)) is not bool:
        return "truncated is not a boolean"
    return None


def ask(rt: Runtime, viewer: Viewer, after: int | None) -> bool:
    """Ask the session's actor for its finished turn after ``after``; False when no
    actor could have one (the caller then sends ``session_sync``)."""
    actor = rt.actors.get(viewer.session_id)
    if after is None or actor is None or not actor.alive or not actor.hello.is_set():
        return False
    actor.resumes[viewer.id] = viewer
    viewer.resuming = actor
    viewer.resume_after = after
    actor.send({"op": "replay_ended", "viewer": viewer.id, "after": after})
    viewer.resume_timer = rt.loop.call_later(ANSWER_WAIT, _give_up, rt, actor, viewer)
    return True


def answer(rt: Runtime, actor: ActorHandle, msg: dict[str, Any]) -> None:
    """The actor's ``replay_ended``: send the viewer what it missed, then where things stand."""
    viewer = actor.resumes.pop(msg["viewer"], None)
    if viewer is None:
        return  # it left, or was told to sync already
    _done(viewer)
    last_seq = None
    if msg["run_id"] is not None:
        why = check(msg, viewer.resume_after)
        if why is not None:
            rt.on_actor_violation(actor, f"replay_ended: {why}")
        else:
            last_seq = _send(viewer, msg, viewer.resume_after)
            rt.replays_served += 1
    rt.resumed(viewer, last_seq)


def release(rt: Runtime, actor: ActorHandle) -> None:
    """The actor is gone: its waiting viewers are told to sync."""
    waiting = list(actor.resumes.values())
    actor.resumes.clear()
    for viewer in waiting:
        _done(viewer)
        rt.resumed(viewer, None)


def forget(viewer: Viewer) -> None:
    """The viewer left while waiting."""
    if viewer.resuming is not None:
        viewer.resuming.resumes.pop(viewer.id, None)
        _done(viewer)


def _give_up(rt: Runtime, actor: ActorHandle, viewer: Viewer) -> None:
    if actor.resumes.pop(viewer.id, None) is viewer:
        viewer.resume_timer = None
        viewer.resuming = None
        rt.resumed(viewer, None)


def _done(viewer: Viewer) -> None:
    viewer.resuming = None
    if viewer.resume_timer is not None:
        viewer.resume_timer.cancel()
        viewer.resume_timer = None


def _send(viewer: Viewer, msg: dict[str, Any], after: int) -> int:
    start, events = msg["start"], msg["events"]
    if after < start["seq"]:
        viewer.send(orjson.dumps(start), start["seq"])
    tail = events[:-1]
    truncated = bool(msg.get("truncated"))
    if tail or truncated:
        viewer.send(protocol.replay_start(len(tail), truncated, msg.get("first_seq")))
        for ev in tail:
            viewer.send(orjson.dumps(ev), ev["seq"])
        viewer.send(protocol.REPLAY_END)
    if events:
        viewer.send(orjson.dumps(events[-1]), events[-1]["seq"])
    return int(msg["last_seq"])
