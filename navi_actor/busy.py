"""What to do with a message that arrives while its session is busy. Pure: no I/O.

A session is *busy* while a turn runs or messages wait in its queue. A
message's ``if_busy`` (or the session's, or the server's ``--if-busy``) says
what the client wants then:

- ``reject``: refused with ``already_running``, as the original endpoint did;
- ``enqueue``: saved at the queue's tail; it runs when the turns before it end;
- ``interrupt``: saved at the queue's head, and the running turn is stopped
  (reason ``interrupted_by_new_message``); it runs next.

A session that is not busy starts the message's turn now, whatever the
policy. The queue is bounded (``--max-queued``): ``enqueue`` past the bound is
refused with ``queue_full``. ``interrupt`` may take one place past it, so that
"stop and send" works with ``--max-queued 0`` too.
"""

from __future__ import annotations

from navi_actor.protocol import IF_BUSY_POLICIES

START = "start"
REJECT = "reject"
ENQUEUE = "enqueue"
INTERRUPT = "interrupt"
QUEUE_FULL = "queue_full"

DEFAULT_POLICY = "reject"


def effective(message_policy: str | None, session_policy: str | None, server_policy: str) -> str:
    """The policy that holds for one message: its own, else its session's, else the server's."""
    for policy in (message_policy, session_policy):
        if policy is not None:
            return policy
    return server_policy


def decide(policy: str, running: bool, queued: int, max_queued: int) -> str:
    """``start``, ``reject``, ``enqueue``, ``interrupt`` or ``queue_full`` for a message.

    ``running``: a turn runs in the session; ``queued``: messages waiting in
    its queue; ``max_queued``: the bound (0: no queue).
    """
    if policy not in IF_BUSY_POLICIES:
        raise ValueError(f"unknown if_busy policy {policy!r}; expected one of {', '.join(IF_BUSY_POLICIES)}")
    if not running and queued == 0:
        return START
    if policy == REJECT:
        return REJECT
    if policy == ENQUEUE:
        return ENQUEUE if queued < max_queued else QUEUE_FULL
    return INTERRUPT if queued <= max_queued else QUEUE_FULL


def limit_for(action: str, max_queued: int) -> int:
    """The queue length at which the store refuses to add a message for ``action``
    (checked again there, atomically with the insert)."""
    return max_queued + 1 if action == INTERRUPT else max_queued
