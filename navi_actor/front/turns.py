"""A turn's start, outside the runtime's routing: what is saved, and what the actor is asked.

The user's message is made durable before ``stream_start`` (DESIGN.md,
invariant 4): :func:`begin_turn` runs on the store's thread, reads the
session's history for the agent and saves the message with the new run, in
one call of the group commit. The actor then gets :func:`turn_request`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from navi_actor import logs, protocol
from navi_actor.protocol import ClientError, UserMessage
from navi_actor.store import SessionStore, StoreError

log = logs.get("navi.front")


class Begun(NamedTuple):
    """A turn whose message is saved: the seq before its first event, the agent's history,
    the message, and the run's id."""

    base: int
    history: list[dict[str, Any]]
    message: UserMessage
    run_id: str


def begin_turn(store: SessionStore, sid: str, run_id: str, message: UserMessage) -> Begun:
    """On the store's thread: the message saved with its run, then the session's history (the
    messages of running runs, this one's included, are not in it). A session whose last seq is
    0 has had no turn: its history is not read (0.1 ms of a new session's first event)."""
    base = store.begin_run(
        sid,
        run_id,
        content=message.display_content,
        agent_content=message.content,
        images=len(message.images),
        files=message.files,
        client_message_id=message.client_message_id,
    )
    return Begun(base, store.history(sid) if base else [], message, run_id)


def begin_next(store: SessionStore, sid: str, _run_id: str) -> Begun:
    """On the store's thread: the session's history, then its queue's head begun as a turn
    (its run id is its message id). Raises StoreError when nothing is queued."""
    history = store.history(sid)
    head = store.begin_queued(sid)
    if head is None:
        raise StoreError(f"session {sid!r} has no queued message")
    message = UserMessage(head["content"], head["agent_content"], head["images"], head["files"],
                          None, head["client_message_id"])
    return Begun(head["base"], history, message, head["run_id"])


def not_saved(sid: str, exc: StoreError) -> ClientError:
    """The turn cannot start: its message could not be made durable. Logged here, told to the client."""
    log.error("front.store_failed", session_id=sid, error=str(exc))
    return ClientError(protocol.store_code(exc), f"Your message was not saved and no turn started: {exc}")


def turn_request(run_id: str, start: dict[str, Any], message: UserMessage, history: list[dict[str, Any]],
                 sid: str, upload_dir: Path) -> dict[str, Any]:
    """The ``turn`` control message that starts the turn in the session's actor."""
    return {
        "op": "turn",
        "run_id": run_id,
        "start": start,
        "turn": {
            "session_id": sid,
            "content": message.content,
            "display_content": message.display_content,
            "images": message.images,
            "files": message.files,
            "history": history,
            "upload_dir": str(upload_dir),
        },
    }
