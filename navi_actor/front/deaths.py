"""How a turn whose actor died ends: the event its viewers get and the result the store keeps.

Every death is explained (DESIGN.md, invariant 5): a turn that was being
stopped ends in ``stream_stopped`` with the ladder's step
(:func:`navi_actor.stopladder.step_at_death`); any other ends in an
``error`` naming the cause, with a machine-readable code: the actor's own
last word (``fatal``), a protocol violation, or the supervisor's exit notice
(exit code, signal, memory limit). Both keep what had streamed. No I/O here.
"""

from __future__ import annotations

from typing import Any

from navi_actor import protocol, stopladder
from navi_actor.front.actors import ActorHandle
from navi_actor.front.runs import Run


def death_code(actor: ActorHandle) -> str:
    """The ``code`` of the error that explains the actor's death."""
    if actor.violation:
        return protocol.ACTOR_PROTOCOL_VIOLATION
    if actor.fatal:
        return str(actor.fatal.get("code", protocol.ACTOR_DIED))
    return str((actor.exit or {}).get("code") or protocol.ACTOR_DIED)


def outcome(run: Run, actor: ActorHandle, seq: int, elapsed: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final event (at ``seq``) and the result of ``run``, whose ``actor`` is gone, ``elapsed``
    seconds after the turn started."""
    content = "".join(run.text)
    if run.stop_requested_at is not None and not actor.violation:
        step = stopladder.step_at_death(run.stop_step)
        final = protocol.stream_stopped(seq, run.run_id, step, content, run.stop_reason)
        status = "stopped"
        error = run.stop_reason["message"] if run.stop_reason else None
        code = run.stop_reason["code"] if run.stop_reason else None
    else:
        message = actor.death_message()
        code = death_code(actor)
        final = protocol.error_event(message, code, seq, run_id=run.run_id)
        status, error = "failed", message
    stats: dict[str, Any] = {"elapsed_seconds": round(elapsed, 3)}
    if status == "stopped":
        stats["stop_step"] = final["stop_step"]
    result = {"status": status, "content": content, "error": error, "error_code": code, "stats": stats,
              "tool_calls": protocol.tool_calls_seen(run.tool_events)}
    return final, result
