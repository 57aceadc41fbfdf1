"""The session store's errors, the same whichever backend is behind the interface.

They say who caused the failure: a *refusal* (`SessionNotFound`,
`RunNotRunning`, a plain `StoreError`) is about this call's arguments and will
be refused again; a `StoreFailure` is the database's own (a full disk, an I/O
error, a lost connection) and the same call may succeed later.
"""

from __future__ import annotations

__all__ = ["StoreError", "StoreFailure", "SessionNotFound", "RunNotRunning", "QueueFull", "SessionBusy",
           "LeaseLost"]


class StoreError(Exception):
    """The session store refused or failed an operation."""


class StoreFailure(StoreError):
    """The database itself failed (the disk is full, an I/O error, a locked file).

    Not a refusal of this one call: the same call may succeed later. ``op`` is
    the store method that failed; ``reason`` the database's own words
    ("database or disk is full"); ``unavailable`` is true when the database
    cannot be reached at all (a database server that is down or restarting),
    as opposed to one that answers with an error.
    """

    def __init__(self, op: str, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(f"the session store failed in {op}: {reason}")
        self.op = op
        self.reason = reason
        self.unavailable = unavailable


class SessionNotFound(StoreError):
    """The session does not exist (or its id is invalid)."""


class RunNotRunning(StoreError):
    """The run does not exist or is already finished."""


class SessionBusy(StoreError):
    """A turn of the session runs on another node (a store shared by several nodes): no second turn.

    ``node`` is the node that runs it. The front answers it as its own busy
    guard does ("Agent is already running for this session.").
    """

    def __init__(self, session_id: str, node: str) -> None:
        super().__init__(f"a turn of session {session_id!r} is running on node {node!r}")
        self.session_id = session_id
        self.node = node


class LeaseLost(RunNotRunning):
    """This node no longer holds the lease of the run's session: its late writes are refused (fencing).

    Another node took the session over (its lease has a newer generation),
    most often after this node stopped renewing its leases (paused,
    partitioned); the run was ended there, as "interrupted".
    """


class QueueFull(StoreError):
    """The session's queue already holds as many messages as the caller's bound allows."""

    def __init__(self, session_id: str, length: int) -> None:
        super().__init__(f"session {session_id!r} already has {length} queued messages")
        self.length = length
