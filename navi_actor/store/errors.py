"""The session store's errors, the same whichever backend is behind the interface.

They say who caused the failure: a *refusal* (`SessionNotFound`,
`RunNotRunning`, a plain `StoreError`) is about this call's arguments and will
be refused again; a `StoreFailure` is the database's own (a full disk, an I/O
error, a lost connection) and the same call may succeed later.
"""

from __future__ import annotations

__all__ = ["StoreError", "StoreFailure", "SessionNotFound", "RunNotRunning", "QueueFull"]


class StoreError(Exception):
    """The session store refused or failed an operation."""


class StoreFailure(StoreError):
    """The database itself failed (the disk is full, an I/O error, a locked file).

    Not a refusal of this one call: the same call may succeed later. ``op`` is
    the store method that failed; ``reason`` the database's own words
    ("database or disk is full").
    """

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(f"the session store failed in {op}: {reason}")
        self.op = op
        self.reason = reason


class SessionNotFound(StoreError):
    """The session does not exist (or its id is invalid)."""


class RunNotRunning(StoreError):
    """The run does not exist or is already finished."""


class QueueFull(StoreError):
    """The session's queue already holds as many messages as the caller's bound allows."""

    def __init__(self, session_id: str, length: int) -> None:
        super().__init__(f"session {session_id!r} already has {length} queued messages")
        self.length = length
