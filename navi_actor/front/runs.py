"""One turn as the front sees it, and what a turn links: its actor and its viewers.

The lowest of the front's modules: :mod:`navi_actor.front.actors` and
:mod:`navi_actor.front.viewer` point back at a :class:`Run`, and the runtime,
the resume path and the store keeper route through it. So a run names its
actor and its viewers by what it reaches of them (:class:`RunActor`,
:class:`RunViewer`), and imports neither: imports in the front run one way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

#: The reason written for a turn that was running when the front restarted and whose actor is gone.
LOST_IN_RESTART = "the agent process ended while the server's front was restarting"


class RunActor(Protocol):
    """The actor process a run is on (:class:`navi_actor.front.actors.ActorHandle`)."""

    actor_id: str
    session_id: str
    run: Run | None
    idle_since: float
    retiring: bool
    resumes: dict[int, RunViewer]  # viewers waiting for its finished turn (front/resume.py)

    @property
    def alive(self) -> bool: ...

    def send(self, msg: dict[str, Any]) -> None: ...


class RunViewer(Protocol):
    """A client following a run (:class:`navi_actor.front.viewer.Viewer`)."""

    id: int
    session_id: str
    run: Run | None
    needs_sync: bool
    resume_after: int | None
    resuming: RunActor | None
    resume_timer: asyncio.TimerHandle | None
    closed: bool

    def send(self, data: bytes, seq: int = 0, delta: str | None = None) -> None: ...


class Run:
    """One turn as the front sees it (the actor owns the rest)."""

    def __init__(self, run_id: str, session_id: str) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.actor: RunActor | None = None
        self.viewers: set[RunViewer] = set()
        self.pending_replays: dict[int, RunViewer] = {}
        self.start_bytes: bytes | None = None
        self.first_seq = 0
        self.last_seq = 0
        self.text: list[str] = []
        self.tool_events: list[dict[str, Any]] = []  # tool_started/tool_call, for a turn whose actor dies
        self.checkpointed_seq = 0
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.last_event_at = self.started_at
        self.events = 0
        self.stop_requested_at: float | None = None
        self.operator_stop_at: float | None = None  # when the supervisor said an operator stops it
        self.stop_step: str | None = None  # the ladder's last step the front took (navi_actor.stopladder)
        self.stop_reason: dict[str, str] | None = None  # set when a limit, not the user, stopped it
        self.ladder: list[asyncio.TimerHandle] = []
        self.finishing = False
        self.ended = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Run {self.run_id} session={self.session_id} seq={self.last_seq} viewers={len(self.viewers)}>"

    def broadcast(self, data: bytes, seq: int = 0) -> None:
        for viewer in self.viewers:
            viewer.send(data, seq)
