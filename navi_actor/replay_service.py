"""The actor's answers to ``replay`` and ``replay_ended``: a turn's events again, after a cursor.

A viewer that joins a running turn, or resumes with ``?after=SEQ``, gets the
turn's events from the actor's replay buffer (:func:`replay`). When the front
says a finished turn is ``persisted``, the actor keeps that turn's buffer with
its final event last (:func:`keep_ended`), so that a client that was away when
it ended can still resume it (:func:`replay_ended`) until the session's next
turn starts. The buffers themselves, their compaction and bound, are
:mod:`navi_actor.replay`. These functions only read: they build frames, and the
actor sends them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from navi_actor import framing
from navi_actor.framing import dumps, with_events
from navi_actor.replay import EndedTurn

if TYPE_CHECKING:
    from navi_actor.driver import Run


def replay(run: Run | None, viewer: int, after: Any) -> bytes:
    """The framed ``replay`` answer: ``run``'s events after ``after`` (all of them if it is not an int)."""
    if run is None:
        body = dumps({"op": "replay", "viewer": viewer, "run_id": None, "events": []})
    else:
        part = run.buffer.after(after if type(after) is int else None)
        body = with_events({"op": "replay", "viewer": viewer, "run_id": run.run_id, "done": run.done,
                            "truncated": part.truncated, "first_seq": part.first_seq, "start": run.start},
                           part.events)
    return framing.frame(body)


def keep_ended(run: Run, final: Any) -> EndedTurn | None:
    """Keep the persisted ``run``'s replay, ending with ``final`` when the front says its
    viewers got that one (it replaced the actor's), else the one sent in ``turn_done``."""
    if type(final) is not dict:
        assert run.done_frame is not None
        final = orjson.loads(run.done_frame[framing.HEADER.size:])["final"]
    return EndedTurn.keep(run.run_id, run.start, run.buffer, final.get("seq"), dumps(final))


def replay_ended(ended: EndedTurn | None, viewer: int, after: Any) -> bytes:
    """The framed ``replay_ended`` answer: the kept finished turn after ``after``, its final
    event last; no run when none is kept or the cursor is outside it (:meth:`EndedTurn.covers`)."""
    cursor = after if type(after) is int else None
    if ended is None or not ended.covers(cursor):
        body = dumps({"op": "replay_ended", "viewer": viewer, "run_id": None, "events": []})
    else:
        part = ended.buffer.after(cursor)
        body = with_events({"op": "replay_ended", "viewer": viewer, "run_id": ended.run_id,
                            "last_seq": ended.last_seq, "truncated": part.truncated,
                            "first_seq": part.first_seq, "start": ended.start}, part.events)
    return framing.frame(body)
