"""A message for a session whose turn runs on another node (nodes sharing one PostgreSQL store).

A client served by this node directly (it connected when no turn ran, so it
is not relayed) sends a message while the session's turn runs on node A.
The store refuses this node the session's lease (`SessionBusy`), and the
message's busy policy (:mod:`navi_actor.busy`) decides, as on one node:

- ``reject``: ``already_running``, as before;
- ``enqueue`` / ``interrupt``: :class:`~navi_actor.front.queueing.Queueing`
  saves it in the shared store's queue (at the tail, or the head), and this
  node's viewers get ``queued``. Then :func:`hand_over` tells the owner,
  through the same durable control row plus ``NOTIFY`` as a stop
  (:meth:`navi_actor.front.cluster.FrontCluster.request`, op ``queue`` or
  ``interrupt``). The owner reads the session's queue again, and runs its
  head when its turn ends; for ``interrupt`` it first stops the turn with
  reason ``interrupted_by_new_message``, through its stop ladder. This
  node's viewers of the session are then relayed from the owner
  (:mod:`navi_actor.front.relay`), so they see the running turn and the
  queued one as the owner's viewers do.

If the owner cannot be told (its turn just ended, it stopped answering, it
did not acknowledge in time), this node counts the message in its own queue
and starts it once the session's lease is free: whichever node begins it,
the store hands the queue's head out once. Nothing here is on the
per-event path: one control row per message sent across nodes.
"""

from __future__ import annotations

from typing import Any

from navi_actor import busy, logs, protocol
from navi_actor.front import resume
from navi_actor.protocol import ClientError, UserMessage

log = logs.get("navi.front.elsewhere")

#: The control ops one node sends another about a session's queue (store/pgcluster.py OPS).
QUEUE_CHANGED = "queue"  #: reread the queue: a message was queued (or cancelled) elsewhere
INTERRUPT = "interrupt"  #: the same, and stop the running turn for the queue's head


class BusyElsewhere(ClientError):
    """The session's turn runs on another node: ``already_running``, unless the policy queues the message."""

    def __init__(self, node: str) -> None:
        super().__init__(protocol.ALREADY_RUNNING, "Agent is already running for this session.")
        self.node = node


async def action_for(rt: Any, sid: str, message: UserMessage) -> str:
    """What to do with a message whose session is busy on another node: ``enqueue``, ``interrupt`` or
    ``queue_full`` (with ``--max-queued 0``); raises ClientError ``already_running`` for ``reject``."""
    own = await rt.store(rt.store_backend.get_if_busy, sid) if message.if_busy is None else None
    policy = busy.effective(message.if_busy, own, rt.config.if_busy)
    # The queue's length is the shared store's: its bound is checked there, with the insert.
    action = busy.decide(policy, True, 0, rt.config.max_queued)
    if action == busy.REJECT:
        raise ClientError(protocol.ALREADY_RUNNING, "Agent is already running for this session.")
    return action


async def hand_over(rt: Any, viewers: list[Any], sid: str, action: str) -> bool:
    """Tell the node running the session's turn that its queue changed (and, for ``interrupt``, to stop
    the turn); relay ``viewers`` from it. False when it was not told (this node runs the message then)."""
    op = INTERRUPT if action == busy.INTERRUPT else QUEUE_CHANGED
    try:
        out = await rt.cluster.request(sid, op)
    except Exception as exc:  # the database is away: this node keeps the message counted
        log.warning("front.queue_handover_failed", session_id=sid, op=op, error=str(exc))
        return False
    if not out["delivered"]:
        log.info("front.queue_kept_here", session_id=sid, op=op, node=out.get("node"), reason=out.get("reason"))
        return False
    log.info("front.queue_handed_over", session_id=sid, op=op, node=out["node"], result=out["result"])
    if rt.relay is not None and out.get("url"):
        owner = {"node": out["node"], "url": out["url"], "run_id": out["run_id"]}
        for viewer in viewers:
            relay_viewer(rt, viewer, owner, out["first_seq"] - 1)
    return True


def relay_viewer(rt: Any, viewer: Any, owner: dict[str, Any], after: int) -> None:
    """Serve a viewer of this node from the owner from now on, from ``after`` (the seq before the owner's
    turn): it gets that turn from its start (even if it just ended: front/resume.py), then the next ones."""
    if viewer.closed or viewer.relay is not None and viewer.relay.active:
        return
    resume.forget(viewer)
    rt.unlist(viewer)  # served by the owner's stream now, not by this node's runs
    viewer.relay = rt.relay.open(viewer, owner, max(after, viewer.delivered_seq), viewer.principal)


async def queue_changed(rt: Any, sid: str) -> None:
    """A queued message was cancelled here: the node running the session's turn, if another, counts again."""
    try:
        out = await rt.cluster.request(sid, QUEUE_CHANGED)
    except Exception as exc:  # it counts again when it finds its queue's head gone
        log.warning("front.queue_handover_failed", session_id=sid, op=QUEUE_CHANGED, error=str(exc))
        return
    if out["delivered"]:
        log.info("front.queue_handed_over", session_id=sid, op=QUEUE_CHANGED, node=out["node"], result=out["result"])
