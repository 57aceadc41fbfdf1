"""The supervisor's record of one actor process, and the few things done to any actor.

Below every module that handles actors (the spawner, the warm pool,
operations, the loop), so that imports run one way: each of them imports
this, and this imports none of them.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal

import orjson

from supervisor.fdchannel import ChannelClosed, FdChannel

#: The signals the front may ask the supervisor to send to an actor's process group.
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


@dataclasses.dataclass(slots=True)
class Actor:
    """An actor process the supervisor forked (or had the zygote clone) and has not reaped yet."""

    actor_id: str
    pid: int
    session_id: str  # "" while it is warm (in the pool, no session yet)
    lifeline: FdChannel
    serial: int = 0  # order of forking: 1 for the first actor, then 2, ...
    killed_for: str | None = None  # the supervisor's reason, when it killed the actor (or its last word)
    kill_code: str | None = None  # the error code viewers get for it (default actor_died)
    kill_kind: str | None = None  # the metric label of that cause


def log_ids(actor: Actor) -> dict[str, str]:
    """How log lines name an actor: ``actor_id`` once it has a session (the id the front and every
    later line use), ``warm_id`` before (its ``actor.assigned`` line carries both)."""
    return {"actor_id": actor.actor_id} if actor.session_id else {"warm_id": actor.actor_id}


def killpg(pgid: int, sig: int) -> None:
    """Signal an actor's process group; one that is gone already is no error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:  # EPERM: the group id was reused by another user's process
        if exc.errno != errno.EPERM:
            raise


def read_last_word(actor: Actor) -> None:
    """A dead actor may have left its cause on the lifeline (``fatal``): take it, unless the
    supervisor already has a reason of its own (it killed the actor)."""
    try:
        bodies = actor.lifeline.receive()
    except ChannelClosed:
        return
    for body in bodies:
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        if isinstance(msg, dict) and msg.get("op") == "fatal" and actor.killed_for is None:
            actor.killed_for = str(msg.get("message"))[:2000]
            actor.kill_code = str(msg.get("code"))[:64]
