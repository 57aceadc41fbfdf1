"""The session store's interface: the contract the front relies on, whatever the engine.

`SessionStore` is a `typing.Protocol`: a backend (`SQLiteStore` today; a
PostgreSQL one may follow) implements every method below with these
semantics, and `tests/store_contract.py` is the suite any backend must pass.
The front (`navi_actor.front`) only ever sees this interface and the errors of
`navi_actor.store.errors`; it never learns which engine is behind it.

What holds for every method:

- **Blocking.** Methods block (a commit waits for its fsync). The front calls
  them from one thread of its own (`front/storeq.py`); a backend must also
  accept calls from any other thread, one at a time.
- **Atomic.** Each write method is one transaction: it is kept whole or not at
  all. When a write method returns, what it wrote is durable (committed and
  synced), except inside `batch`, where that holds when `batch` returns.
- **Errors.** Every method may raise `StoreFailure` when the database itself
  fails (a full disk, an I/O error, a lost connection): the same call may
  succeed later. After `close`, every method raises `StoreError`. The
  refusals each method makes are named in its docstring; a refusal writes
  nothing.
- **Ownership.** A session records the user who created it (``owner``; None
  when authentication is off). Only `list_sessions` filters on it. The other
  methods take a session id whoever owns it: the front compares the
  session's ``owner`` with the request's user (`front/auth.can_see`) and
  answers another user's session exactly as one that does not exist.
- **Session ids** are strings matching `SESSION_ID_RE`. An invalid id is
  treated as a missing session, never sent to the database.
- **Dicts.** A session is ``{"id", "title", "created_at", "updated_at",
  "last_seq", "owner"}``; times are unix seconds (floats).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

from navi_actor.store.common import ANY_OWNER
from navi_actor.store.errors import StoreFailure

__all__ = ["SessionStore"]


@runtime_checkable
class SessionStore(Protocol):
    """Sessions, their turns ("runs") and their messages, kept durably."""

    # -- sessions ----------------------------------------------------------

    def create_session(self, title: str | None = None, owner: str | None = None) -> dict:
        """Create a session with a fresh id (32 hex digits) and return its dict.

        ``owner`` is the user who creates it (None: authentication is off).
        Its ``last_seq`` is 0 and ``created_at == updated_at``.
        """
        ...

    def get_session(self, session_id: str) -> dict | None:
        """The session's dict, or None if it does not exist or the id is invalid."""
        ...

    def list_sessions(self, limit: int = 100, offset: int = 0, *, owner: Any = ANY_OWNER) -> list[dict]:
        """Sessions, most recently updated first (ties: the one created last first).

        ``owner``: only that user's sessions (None: those with no owner);
        `ANY_OWNER` (the default): all of them. ``limit`` and ``offset`` page
        through that order; negative values count as 0.
        """
        ...

    def get_session_detail(self, session_id: str) -> dict | None:
        """The session's dict plus ``messages`` and ``runs``; None as `get_session`.

        ``messages``: every message, in the order written (a run's user
        message, then its tool messages, then its answer), each
        ``{"id", "role", "content", "run_id", "created_at", **data}``, ids
        increasing. ``runs``: oldest first, each ``{"id", "status",
        "started_at", "ended_at", "first_seq", "last_seq", "error",
        "error_code", "stats"}``.
        """
        ...

    def delete_session(self, session_id: str) -> bool:
        """Delete the session with all its runs and messages; True if it existed."""
        ...

    def history(self, session_id: str) -> list[dict]:
        """The conversation the agent reads: ``{"role", "content", **data}`` per message, in order.

        A user message's content is what the agent read (``agent_content``).
        The messages of runs still "running" are left out; ids, run ids and
        times are too. An unknown or invalid session has an empty history.
        """
        ...

    # -- runs --------------------------------------------------------------

    def begin_run(self, session_id: str, run_id: str, *, content: str,
                  agent_content: str, images: int = 0,
                  files: list | None = None, client_message_id: str | None = None) -> int:
        """Record a new "running" run and its user message, together; return the seq base.

        The run's first event gets seq ``base + 1`` (its ``first_seq``);
        ``base`` is the session's ``last_seq``. The message keeps ``content``
        (what the user wrote, shown in the history), ``agent_content`` (what
        the agent reads), ``images`` (a count) and ``files``. The session's
        ``updated_at`` is bumped, and an empty title is taken from
        ``content`` (`title_from`). ``client_message_id`` (the client's own
        id, when it sent one) is kept in the message's data.

        **Invariant 4 rests on this:** once it returns (or the `batch` it ran
        in returns), the user's message is durable. The front sends
        ``stream_start`` only after that.

        Raises `SessionNotFound` for a missing or invalid session, `StoreError`
        for a run id already used or a ``client_message_id`` the session has
        already seen (queued or begun). It does not look for another running
        run of the session on this node: the front's busy guard refuses a
        second turn ("Agent is already running for this session.") before
        calling it. A store shared by several nodes raises `SessionBusy`
        while another live node runs a turn of the session, and ends the
        turns of a dead node as "interrupted" first.
        """
        ...

    def checkpoint_runs(self, items: list[tuple[str, str, int]]) -> None:
        """Store ``(run_id, partial_content, last_seq)`` for each run still "running", in one transaction.

        Runs that are unknown or finished are left as they are, silently.
        `finish_run` with ``content=None`` and `recover_interrupted` keep the
        last text checkpointed.
        """
        ...

    def finish_run(self, run_id: str, *, status: str, content: str | None, last_seq: int,
                   tool_calls: list[dict] | None = None, thinking: str = "",
                   error: str | None = None, error_code: str | None = None,
                   stats: dict | None = None) -> None:
        """Close a running run with ``status`` and write its result, together.

        Writes one "tool" message per tool call (its result as content,
        ``tool``, ``args``, ``success``, ``is_subagent``, ``metadata`` as data),
        then the "assistant" message (``content``, with ``status``, ``error``,
        ``error_code``, ``thinking``, ``stats``), sets the run's status, end
        time, ``last_seq``, error and stats, and moves the session's
        ``last_seq`` to ``max(last_seq, its own)``. ``content=None``: the text
        last checkpointed is the answer.

        Raises `StoreError` for a status that is not final (`FINAL_STATUSES`),
        `RunNotRunning` if the run is unknown or already finished: a result
        is never written twice. A store shared by several nodes raises
        `LeaseLost` (a `RunNotRunning`) when this node no longer holds the
        session's lease at the run's generation: a late write is refused.
        """
        ...

    def recover_interrupted(self, reason: str = "server stopped during this turn",
                            seq_gap: int = 10**9, keep: Iterable[str] = ()) -> list[str]:
        """Finish every "running" run except those in ``keep`` as "interrupted"; return their ids, oldest first.

        (A store shared by several nodes: every running run *of this node*;
        another node's are its own, or its sweeper's once it is dead.)

        Called at every start (by ``navi-actor serve`` before the front, then
        by the front with ``keep`` = the runs its adopted actors still run),
        so that no turn a crash left behind stays "running". Each keeps its
        checkpointed text as its answer, with ``error=reason`` and
        ``error_code="interrupted"``; each affected session's ``last_seq``
        becomes ``max(session last_seq, run seqs) + seq_gap``, above any seq
        a client could have seen. One transaction.
        """
        ...

    def running_runs(self) -> list[dict]:
        """Runs still "running" (of this node, in a shared store), oldest first: ``{"id", "session_id", "first_seq", "last_seq"}``."""
        ...

    # -- the queue: messages waiting for their session's turn ----------------

    def enqueue(self, session_id: str, message_id: str, *, content: str, agent_content: str,
                images: list[str] | None = None, files: list | None = None,
                client_message_id: str | None = None, at_head: bool = False, limit: int) -> int:
        """Queue a message for a later turn; return its position (1: it runs next).

        Kept apart from the messages: it enters the history only when its turn
        begins (`begin_queued`). ``message_id`` becomes that turn's run id;
        ``images`` are kept whole (base64), for the agent. At the tail, or at
        the head with ``at_head`` (a message that interrupts the running turn).

        Raises `SessionNotFound`; `QueueFull` when the session's queue already
        holds ``limit`` messages (checked in the same transaction as the
        insert, so two writers never both get past the bound); `StoreError`
        for a message id already used, or a ``client_message_id`` the session
        has already seen.
        """
        ...

    def cancel_queued(self, session_id: str, message_id: str) -> bool:
        """Take a message out of the session's queue; False if it is not queued there
        (unknown, another session's, or its turn has begun)."""
        ...

    def queue(self, session_id: str) -> list[dict]:
        """The session's queued messages, next first: ``{"message_id", "position", "content",
        "client_message_id", "images" (a count), "files", "created_at"}``. Empty for an unknown session."""
        ...

    def queued_sessions(self) -> list[str]:
        """Ids of the sessions with queued messages, the one whose queue waits longest first."""
        ...

    def begin_queued(self, session_id: str) -> dict | None:
        """Begin the turn of the session's next queued message, atomically; None if none is queued.

        In one transaction: the message leaves the queue, is saved as the
        user message of a new "running" run (its run id is its message id),
        marked ``queued: true``, with its ``client_message_id``, exactly as
        `begin_run` saves one (invariant 4). Returns ``{"run_id", "base",
        "content", "agent_content", "images" (the base64 list), "files",
        "client_message_id"}``; ``base`` as `begin_run`'s. Raises
        `SessionNotFound`.
        """
        ...

    def set_if_busy(self, session_id: str, policy: str | None) -> bool:
        """Save the session's own ``if_busy`` policy (None: the server's default); False if no such session."""
        ...

    def get_if_busy(self, session_id: str) -> str | None:
        """The session's own ``if_busy`` policy, or None (none set, or no such session)."""
        ...

    def find_client_message(self, session_id: str, client_message_id: str) -> dict | None:
        """Where the session's message with this ``client_message_id`` is, or None if never seen.

        ``{"state": "queued", "message_id", "position"}`` while it waits;
        ``{"state": "run", "run_id", "status", "first_seq", "last_seq"}`` once
        its turn began (``status`` is the run's, "running" or final).
        """
        ...

    # -- the store itself --------------------------------------------------

    def batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: run ``calls`` in order, in one transaction, with one sync for all.

        Each call is a function of no arguments that calls methods of this
        store (one or several: the front's turn start reads `history`, then
        calls `begin_run`). Returns one ``(True, result)`` or ``(False,
        exception)`` per call, in order. Each call succeeds or fails exactly
        as if it ran alone: a call that raises has its own writes undone, and
        the others' are kept. When `batch` returns, every successful call's
        writes are durable.

        A backend may run a call more than once (SQLite runs them again one
        by one when the group commit fails): only the last run's writes are
        kept, so a call must have no effect outside the store. An exception
        that is not an `Exception` (KeyboardInterrupt) propagates, and nothing
        of the batch is kept. After `close`, every call fails with
        `StoreError`.
        """
        ...

    def failure(self, exc: BaseException, op: str) -> StoreFailure | None:
        """The database's own failure in ``exc`` as a `StoreFailure`, or None for anything else.

        ``exc`` is what a call handed to `batch` raised; ``op`` names that
        call. A `StoreFailure` is itself; an error of the engine's driver that
        escaped the store's methods (a call that used the database directly)
        becomes one; a refusal (`SessionNotFound`, ...) or a bug is None. The
        front counts failures by ``op`` and marks the store failing with it,
        without knowing the engine.
        """
        ...

    def probe(self) -> None:
        """A write that changes nothing: raises `StoreFailure` while the store cannot write."""
        ...

    def close(self) -> None:
        """Release the database; later calls raise `StoreError`. Idempotent."""
        ...
