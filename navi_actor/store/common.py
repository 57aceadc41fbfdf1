"""What every store backend shares: run statuses, session ids, titles, JSON columns.

Pure helpers: no database, no I/O. A backend uses them so that its answers
are the same as every other backend's (`tests/store_contract.py` checks it).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence

from navi_actor.store.errors import StoreError

__all__ = [
    "RUN_STATUSES", "FINAL_STATUSES", "SESSION_ID_RE", "TITLE_MAX", "ANY_OWNER",
    "valid_session_id", "title_from", "require_final", "run_each", "dumps", "load_dict", "redact",
]

RUN_STATUSES: tuple[str, ...] = ("running", "done", "stopped", "failed", "interrupted")
FINAL_STATUSES: tuple[str, ...] = RUN_STATUSES[1:]
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TITLE_MAX = 60  #: a title taken from the first message is cut to this many characters


class _AnyOwner:
    """``list_sessions(owner=ANY_OWNER)``: every session, whoever owns it."""

    def __repr__(self) -> str:
        return "ANY_OWNER"


ANY_OWNER: Any = _AnyOwner()


def valid_session_id(s: object) -> bool:
    """Return True if `s` is a string matching `SESSION_ID_RE`."""
    return isinstance(s, str) and SESSION_ID_RE.fullmatch(s) is not None


def title_from(content: str) -> str:
    """First non-blank line of `content`, stripped, cut to TITLE_MAX chars."""
    return content.strip().split("\n", 1)[0].strip()[:TITLE_MAX]


def require_final(status: str) -> None:
    """Raise StoreError unless `status` is one a run may finish with."""
    if status not in FINAL_STATUSES:
        raise StoreError(f"cannot finish a run with status {status!r}; "
                         f"use one of {', '.join(FINAL_STATUSES)}")


def run_each(calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """``batch`` without group commit: each call alone, ``(True, result)`` or ``(False, exception)``."""
    out: list[tuple[bool, Any]] = []
    for call in calls:
        try:
            out.append((True, call()))
        except Exception as exc:
            out.append((False, exc))
    return out


def dumps(value: Any) -> str:
    """A JSON column's text (what json cannot encode is written as its str())."""
    return json.dumps(value, ensure_ascii=False, default=str)


def load_dict(text: str | None) -> dict | None:
    """Decode a JSON object column; None if NULL, malformed or not an object."""
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def redact(url: str) -> str:
    """A store URL with its password, if any, replaced by ``***`` (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in auth:
        return url
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"


#: Server-side settings of every node's connections (libpq ``options``). A node cut off in the middle
#: of a transaction would otherwise keep its row locks (a run's checkpoint) and the sweeper's lock until
#: the server's TCP gives up, hours later, and no other node could end its turns: the server aborts a
#: transaction idle for 5 s, and notices a silent client within 11 s.
PG_SESSION_OPTIONS = ("-c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=5"
                      " -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3")


# ── a queued message's row, the same in every backend ───────────────────────
def queued_data(agent_content: str, images: Sequence[str] | None, files: list | None) -> str:
    """The ``data`` column of a queued message: what its turn needs when it starts."""
    return dumps({"agent_content": agent_content, "images": list(images or []), "files": files or []})


def queue_entry(row: Any, position: int) -> dict:
    """One entry of ``SessionStore.queue``, from a queue row."""
    data = load_dict(row["data"]) or {}
    return {"message_id": row["message_id"], "position": position, "content": row["content"],
            "client_message_id": row["client_message_id"], "images": len(data.get("images") or []),
            "files": data.get("files") or [], "created_at": row["created_at"]}


def queued_turn(head: Any, data: dict, base: int) -> dict:
    """What ``SessionStore.begin_queued`` returns for the queue's head ``head`` (``data``: its loaded data)."""
    return {"run_id": head["message_id"], "base": base, "content": head["content"],
            "agent_content": data["agent_content"], "images": list(data.get("images") or []),
            "files": data.get("files") or [], "client_message_id": head["client_message_id"]}


def user_message_data(agent_content: str, images: int, files: list, client_id: str | None, queued: bool) -> str:
    """The ``data`` column of a turn's user message, as ``begin_run`` and ``begin_queued`` save it."""
    data: dict[str, Any] = {"agent_content": agent_content, "images": images, "files": files}
    if client_id is not None:
        data["client_message_id"] = client_id
    if queued:
        data["queued"] = True
    return dumps(data)


def history_message(row: Any) -> dict:
    """One message of ``SessionStore.history`` from a (role, content, data) row: a user message
    carries what the agent read (``agent_content``) as its content."""
    data = load_dict(row["data"]) or {}
    content = row["content"]
    if row["role"] == "user" and "agent_content" in data:
        content = data.pop("agent_content")
    msg = {"role": row["role"], "content": content}
    for k, v in data.items():
        msg.setdefault(k, v)
    return msg
