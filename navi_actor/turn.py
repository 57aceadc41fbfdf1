"""What an agent receives for one turn (a public contract; see docs/agents.md)."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from typing import Any

#: The running turn's stop event, for tools that cannot be handed the turn.
current_stop_event: contextvars.ContextVar[asyncio.Event] = contextvars.ContextVar(
    "navi_current_stop_event"
)


@dataclasses.dataclass(slots=True)
class Turn:
    """One turn of a session, as the agent sees it.

    ``content`` is what the agent should read (the user's text with notes
    about attached images and files appended, as the original endpoint did);
    ``display_content`` is what the user typed. ``history`` holds the
    session's earlier messages as dicts (``role``, ``content``, and per role:
    ``tool``/``args``/``success`` for tool calls, ``status`` for answers).
    Set ``stop_event`` means: the user asked to stop — finish soon.
    ``upload_dir`` is the session's folder for uploaded files
    (``DATA_DIR/uploads/SESSION_ID``; it may not exist yet).
    """

    session_id: str
    run_id: str
    content: str
    display_content: str
    images: list[str]
    files: list[dict[str, str]]
    history: list[dict[str, Any]]
    stop_event: asyncio.Event
    upload_dir: str = ""

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()
