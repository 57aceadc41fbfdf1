"""The client protocol: what a client may send, and the runtime's own events.

Behaviour and error texts are the original endpoint's (see
``shared/reference``); extensions only add fields (``seq``, ``run_id``, a
machine-readable ``code`` on errors). Pure: no I/O.
"""

from __future__ import annotations

import binascii
import dataclasses
from typing import Any

import orjson

MAX_IMAGES = 10
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # per image, base64 text after a data: prefix
MAX_CONTENT_BYTES = 4 * 1024 * 1024  # the message text, UTF-8
MAX_FILES = 20  # entries of ``files`` per message
MAX_FILE_NAME = 255  # characters of a ``files`` entry's name
MAX_FILE_PATH = 4096  # characters of a ``files`` entry's path
#: Largest WebSocket message admitted: 10 images at the limit (with their
#: data: prefixes), the longest text and every file entry fit with room to
#: spare (tests/test_security_inputs.py checks it). A larger message is
#: closed by aiohttp with 1009 (message too big).
MAX_WS_MESSAGE = MAX_IMAGES * MAX_IMAGE_BYTES + 8 * 1024 * 1024

# Error codes (the ``code`` field of ``error`` events).
INVALID_JSON = "invalid_json"
INVALID_MESSAGE = "invalid_message"
TOO_MANY_IMAGES = "too_many_images"
IMAGE_TOO_LARGE = "image_too_large"
ALREADY_RUNNING = "already_running"
AGENT_ERROR = "agent_error"
AGENT_FAILED_TO_START = "agent_failed_to_start"
ACTOR_DIED = "actor_died"
ACTOR_PROTOCOL_VIOLATION = "actor_protocol_violation"
SHUTTING_DOWN = "shutting_down"
STORE_ERROR = "store_error"
STORE_UNAVAILABLE = "store_unavailable"
SESSION_NOT_FOUND = "session_not_found"
CAPACITY = "capacity"
KILLED_BY_OPERATOR = "killed_by_operator"
TURN_TIMEOUT = "turn_timeout"
INVALID_IMAGE = "invalid_image"
CONTENT_TOO_LARGE = "content_too_large"
INVALID_FILE = "invalid_file"
RATE_LIMITED = "rate_limited"
SANDBOX_FAILED = "sandbox_failed"
QUEUE_FULL = "queue_full"
NOT_QUEUED = "not_queued"
NODE_LOST = "node_lost"
#: The ``reason`` of a ``stream_stopped`` whose turn a message with ``if_busy: "interrupt"`` stopped.
INTERRUPTED_BY_NEW_MESSAGE = "interrupted_by_new_message"

#: Every ``code`` an ``error`` event can carry (documented in docs/protocol.md).
ERROR_CODES = (
    INVALID_JSON, INVALID_MESSAGE, TOO_MANY_IMAGES, IMAGE_TOO_LARGE, ALREADY_RUNNING, AGENT_ERROR,
    AGENT_FAILED_TO_START, ACTOR_DIED, ACTOR_PROTOCOL_VIOLATION, SHUTTING_DOWN, STORE_ERROR,
    SESSION_NOT_FOUND, CAPACITY, KILLED_BY_OPERATOR, INVALID_IMAGE, CONTENT_TOO_LARGE, INVALID_FILE,
    RATE_LIMITED, SANDBOX_FAILED, QUEUE_FULL, NOT_QUEUED, STORE_UNAVAILABLE, NODE_LOST,
)


def store_code(exc: BaseException | None) -> str:
    """``store_unavailable`` for a store that cannot be reached (a database server down), else ``store_error``."""
    return STORE_UNAVAILABLE if getattr(exc, "unavailable", False) else STORE_ERROR

EXPECTED_SHAPE = "Expected {type: 'message', content: '...'}"

#: What a message sent while a turn runs may ask for (``if_busy``); the server's default is --if-busy.
IF_BUSY_POLICIES = ("reject", "enqueue", "interrupt")
MAX_CLIENT_MESSAGE_ID = 64  # characters of a message's ``client_message_id``


@dataclasses.dataclass(frozen=True, slots=True)
class UserMessage:
    """A validated client message, ready to start a turn."""

    display_content: str  # what the user typed
    content: str  # what the agent reads: with image and file notes appended
    images: list[str]  # base64, data: prefixes stripped
    files: list[dict[str, str]]
    if_busy: str | None = None  # one of IF_BUSY_POLICIES; None: the session's (or server's) default
    client_message_id: str | None = None  # the client's own id, unique per session


@dataclasses.dataclass(frozen=True, slots=True)
class CancelQueued:
    """``{"type": "cancel_queued", "message_id": ...}``: take a queued message out of its session's queue."""

    message_id: str


class ClientError(Exception):
    """A client message refused; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> dict[str, Any]:
        return {"type": "error", "message": self.message, "code": self.code}


def parse_client_frame(raw: str | bytes, *, strict_base64: bool = False) -> UserMessage | CancelQueued:
    """Validate one WebSocket text message: a ``message`` or a ``cancel_queued``.

    Raises :class:`ClientError` if refused, as :func:`parse_client_message`.
    """
    data = _load(raw)
    if type(data) is dict and data.get("type") == "cancel_queued":
        mid = data.get("message_id")
        if type(mid) is not str or not 1 <= len(mid) <= MAX_CLIENT_MESSAGE_ID:
            raise ClientError(INVALID_MESSAGE, "Expected {type: 'cancel_queued', message_id: '...'} "
                                               "with the message_id of a queued event.")
        return CancelQueued(mid)
    return _message(data, strict_base64)


def parse_client_message(raw: str | bytes, *, strict_base64: bool = False) -> UserMessage:
    """Validate one WebSocket text message; raise :class:`ClientError` if refused.

    ``strict_base64`` (the server's setting) also refuses images that are not
    canonical base64 (code ``invalid_image``); without it, as in the original
    endpoint, only their number and size are checked.
    """
    return _message(_load(raw), strict_base64)


def _load(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(INVALID_JSON, "Invalid JSON") from None


def _message(data: Any, strict_base64: bool) -> UserMessage:
    if type(data) is not dict or data.get("type") != "message":
        raise ClientError(INVALID_MESSAGE, EXPECTED_SHAPE)
    content = data.get("content")
    if type(content) is not str or not content:
        raise ClientError(INVALID_MESSAGE, EXPECTED_SHAPE)
    if len(content) > MAX_CONTENT_BYTES // 4 and len(content.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
        raise ClientError(CONTENT_TOO_LARGE, f"Message text exceeds the limit of {MAX_CONTENT_BYTES // 1048576} MB.")
    images = _parse_images(data.get("images"))
    if strict_base64:
        for i, img in enumerate(images):
            if not is_base64(img):
                raise ClientError(INVALID_IMAGE, f"Image {i + 1} is not valid base64.")
    files = _parse_files(data.get("files"))
    if_busy, client_id = _parse_busy_fields(data)
    return UserMessage(content, agent_content(content, len(images), files), images, files, if_busy, client_id)


def _parse_busy_fields(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The optional ``if_busy`` and ``client_message_id`` of a message (absent or null: None)."""
    if_busy = data.get("if_busy")
    if if_busy is not None and (type(if_busy) is not str or if_busy not in IF_BUSY_POLICIES):
        allowed = ", ".join(repr(p) for p in IF_BUSY_POLICIES)
        raise ClientError(INVALID_MESSAGE, f"'if_busy' must be one of {allowed}.")
    client_id = data.get("client_message_id")
    if client_id is not None and (type(client_id) is not str or not 1 <= len(client_id) <= MAX_CLIENT_MESSAGE_ID):
        raise ClientError(INVALID_MESSAGE,
                          f"'client_message_id' must be a string of 1 to {MAX_CLIENT_MESSAGE_ID} characters.")
    return if_busy, client_id


def is_base64(text: str) -> bool:
    """True for non-empty, canonical base64 (RFC 4648 alphabet, padding, no whitespace)."""
    if not text or not text.isascii() or len(text) % 4:
        return False
    try:
        binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _parse_images(raw: Any) -> list[str]:
    if not raw:
        return []
    if type(raw) is not list or not all(type(i) is str for i in raw):
        raise ClientError(INVALID_MESSAGE, "'images' must be a list of base64 strings.")
    if len(raw) > MAX_IMAGES:
        raise ClientError(TOO_MANY_IMAGES, f"Too many images ({len(raw)}). Max {MAX_IMAGES} allowed.")
    cleaned = []
    for img in raw:
        if img.startswith("data:") and "," in img:
            img = img.split(",", 1)[1]
        if len(img.encode("utf-8")) > MAX_IMAGE_BYTES:
            raise ClientError(IMAGE_TOO_LARGE, "Image exceeds 5 MB limit.")
        cleaned.append(img)
    return cleaned


def _parse_files(raw: Any) -> list[dict[str, str]]:
    if not raw:
        return []
    ok = type(raw) is list and all(
        type(f) is dict and type(f.get("name")) is str and type(f.get("path")) is str for f in raw
    )
    if not ok:
        raise ClientError(INVALID_MESSAGE, "'files' must be a list of {name, path} objects.")
    if len(raw) > MAX_FILES:
        raise ClientError(INVALID_MESSAGE, f"Too many files ({len(raw)}). Max {MAX_FILES} allowed.")
    for f in raw:
        name, path = f["name"], f["path"]
        if not name or len(name) > MAX_FILE_NAME or not path or len(path) > MAX_FILE_PATH:
            raise ClientError(
                INVALID_MESSAGE,
                f"A file's name must have 1 to {MAX_FILE_NAME} characters and its path 1 to {MAX_FILE_PATH}.",
            )
        if "\0" in path or any(ord(c) < 32 for c in name):
            raise ClientError(INVALID_MESSAGE, "A file's name or path contains control characters.")
    return [{"name": f["name"], "path": f["path"]} for f in raw]


def agent_content(content: str, n_images: int, files: list[dict[str, str]]) -> str:
    """Append the original endpoint's notes about attached images and files."""
    if n_images:
        noun = "image" if n_images == 1 else "images"
        content += f"\n\n[{n_images} {noun} attached inline — already in your context, no extra loading needed.]"
    if files:
        lines = "\n".join(f"- {f['name']} → {f['path']}" for f in files)
        content += f"\n\n[Uploaded files on disk:\n{lines}]"
    return content


# ── the runtime's own events ────────────────────────────────────────────────


def stream_start(seq: int, run_id: str) -> dict[str, Any]:
    return {"type": "stream_start", "seq": seq, "run_id": run_id}


def queued(position: int, message_id: str, client_message_id: str | None, content: str) -> bytes:
    """``queued``: a message waits for the running turn (no ``seq``: it is not part of a turn's stream)."""
    return orjson.dumps({"type": "queued", "position": position, "message_id": message_id,
                         "client_message_id": client_message_id, "content": content})


def queue_cancelled(message_id: str) -> bytes:
    return orjson.dumps({"type": "queue_cancelled", "message_id": message_id})


def error_event(message: str, code: str, seq: int | None = None, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "error", "message": message, "code": code}
    if seq is not None:
        ev["seq"] = seq
    ev.update(extra)
    return ev


def stream_stopped(seq: int, run_id: str, stop_step: str, content: str,
                   reason: dict[str, str] | None = None) -> dict[str, Any]:
    """``stop_step``: how far the stop ladder went (event, cancel, sigterm, sigkill).

    ``reason`` (``{code, message}``) says why the runtime stopped the turn
    when the user did not, e.g. a turn over its wall-time limit.
    """
    ev = {
        "type": "stream_stopped",
        "seq": seq,
        "run_id": run_id,
        "stop_step": stop_step,
        "content": content,
    }
    if reason:
        ev["reason"] = reason["code"]
        ev["message"] = reason["message"]
    return ev


HEARTBEAT = orjson.dumps({"type": "heartbeat"})
SESSION_SYNC = orjson.dumps({"type": "session_sync"})


def session_sync(last_seq: int | None = None) -> bytes:
    """``session_sync``: no turn runs; reload the history, unless ``last_seq`` (the seq
    of the session's last event, when the server knows it) is the last one you have."""
    if last_seq is None:
        return SESSION_SYNC
    return orjson.dumps({"type": "session_sync", "last_seq": last_seq})
REPLAY_END = orjson.dumps({"type": "replay_end"})


def replay_start(count: int, truncated: bool, first_seq: int | None) -> bytes:
    ev: dict[str, Any] = {"type": "replay_start", "count": count}
    if truncated:
        ev["truncated"] = True
        ev["first_seq"] = first_seq
    return orjson.dumps(ev)


#: The result saved for a tool that had started but not finished when its turn's process died.
UNFINISHED_TOOL = "(unfinished: the agent process ended while this tool ran)"


def tool_calls_seen(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of a turn, from its ``tool_started``/``tool_call`` events as a viewer saw them.

    For a turn whose actor died (crash, SIGTERM or SIGKILL of the stop ladder),
    the front saves these, so the history shows which tool was running: a
    ``tool_started`` with no ``tool_call`` after it (matched by tool name, oldest
    first) is saved with ``success: false`` and :data:`UNFINISHED_TOOL` as its
    result. In the order the tools started.
    """
    calls: list[dict[str, Any]] = []
    running: list[int] = []  # indices into calls of tools started and not finished
    for ev in events:
        entry = {
            "tool": ev.get("tool"),
            "args": ev.get("args"),
            "result": ev.get("result"),
            "success": ev.get("success"),
            "is_subagent": bool(ev.get("is_subagent", False)),
            "metadata": ev.get("metadata"),
        }
        if ev.get("type") == "tool_started":
            entry.update(result=UNFINISHED_TOOL, success=False, metadata={"unfinished": True})
            running.append(len(calls))
            calls.append(entry)
            continue
        match = next((i for i in running if calls[i]["tool"] == entry["tool"]), None)
        if match is None:
            calls.append(entry)
        else:
            running.remove(match)
            calls[match] = entry
    return calls
