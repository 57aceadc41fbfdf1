"""Length-prefixed frames on the pipes between processes, and what may be in them.

A frame is a 4-byte big-endian length followed by that many bytes of body.
Two kinds of body travel from an actor to the front:

* ``b"E" + <event JSON>``: one event exactly as a client receives it (with its
  ``seq``); the front validates it and forwards the same bytes.
* ``<JSON object>`` with an ``"op"`` key: a control message.

Nothing here unpickles or evaluates anything: actors run untrusted agent code,
so every body from an actor is parsed as JSON and checked against the shape of
its op before anyone acts on it (:func:`parse_actor_body`). Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")
EVENT_TAG = ord("E")

#: Largest body an actor may send (a replay of a full buffer, a long result).
MAX_ACTOR_FRAME = 64 * 1024 * 1024
#: Largest body the front may send (a turn carries up to 10 images of 5 MB).
MAX_FRONT_FRAME = 128 * 1024 * 1024


class FrameError(Exception):
    """A frame or its body broke the pipe protocol."""


class ProtocolViolation(FrameError):
    """An actor sent something the protocol does not allow (it is then killed)."""


def frame(body: bytes) -> bytes:
    """Return ``body`` with its length header."""
    return HEADER.pack(len(body)) + body


def control(message: dict[str, Any]) -> bytes:
    """Return a framed control message."""
    return frame(orjson.dumps(message))


def event_frame(event_json: bytes) -> bytes:
    """Return a framed event body from an event's JSON bytes."""
    return HEADER.pack(len(event_json) + 1) + b"E" + event_json


_JSON_OPTS = orjson.OPT_NON_STR_KEYS


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """JSON for the wire, as an actor writes it; objects JSON cannot hold become their ``str``."""
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTS)


def with_events(head: dict[str, Any], events: list[bytes]) -> bytes:
    """``head`` as JSON with an ``events`` list of already-encoded events (their bytes, not re-encoded)."""
    return dumps(head)[:-1] + b',"events":[' + b",".join(events) + b"]}"


class FrameDecoder:
    """Split a byte stream into frame bodies, refusing oversize frames.

    ``feed`` takes whatever a read returned and gives back the complete bodies
    in order; a partial frame waits for the next read. A length over
    ``max_frame`` raises :class:`FrameError` as soon as the header is read,
    without waiting for (or buffering more of) its body.
    """

    __slots__ = ("_buf", "_max", "_need")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._need = -1  # body length of the frame being read, -1: header not read yet

    def __repr__(self) -> str:
        return f"<FrameDecoder buffered={len(self._buf)} max={self._max}>"

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        size = len(buf)
        while True:
            if self._need < 0:
                if size - pos < 4:
                    break
                (need,) = HEADER.unpack_from(buf, pos)
                if need > self._max:
                    raise FrameError(f"frame of {need} bytes exceeds the limit of {self._max} bytes")
                pos += 4
                self._need = need
            if size - pos < self._need:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = -1
        if pos:
            del buf[:pos]
        return out


# ── messages from actors ────────────────────────────────────────────────────

_STR = str
_INT = int


def _check(cond: bool, why: str) -> None:
    if not cond:
        raise ProtocolViolation(why)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _check_event(ev: Any, where: str) -> dict[str, Any]:
    _check(type(ev) is dict, f"{where}: event is not a JSON object")
    _check(type(ev.get("type")) is str and ev["type"] != "", f"{where}: event has no string 'type'")
    _check(_is_int(ev.get("seq")) and ev["seq"] > 0, f"{where}: event has no positive integer 'seq'")
    return ev


def parse_event(payload: bytes) -> dict[str, Any]:
    """Parse and check the JSON of one event body (after the ``E`` tag). The hot path."""
    try:
        ev = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolViolation(f"event is not valid JSON: {exc}") from None
    if type(ev) is dict:
        kind, seq = ev.get("type"), ev.get("seq")
        if type(kind) is str and kind and type(seq) is int and seq > 0:
            return ev
    return _check_event(ev, "event")  # raises, naming what is wrong


#: op → required keys and their checks, for control messages from actors.
_ACTOR_OPS: dict[str, dict[str, Any]] = {
    "hello": {"pid": _is_int},
    "fatal": {"code": lambda v: type(v) is str, "message": lambda v: type(v) is str},
    "turn_done": {
        "run_id": lambda v: type(v) is str,
        "final": lambda v: type(v) is dict,
        "result": lambda v: type(v) is dict,
    },
    "replay": {
        "viewer": _is_int,
        "run_id": lambda v: v is None or type(v) is str,
        "events": lambda v: type(v) is list,
    },
    "rejected": {"run_id": lambda v: type(v) is str, "code": lambda v: type(v) is str},
}
#: The answer about the actor's last finished turn (navi_actor.front.resume checks the rest).
_ACTOR_OPS["replay_ended"] = _ACTOR_OPS["replay"]

_RESULT_FIELDS = {
    "status": lambda v: v in ("done", "stopped", "failed"),
    "content": lambda v: type(v) is str,
    "thinking": lambda v: type(v) is str,
    "tool_calls": lambda v: type(v) is list and all(type(t) is dict for t in v),
    "last_seq": _is_int,
    "stats": lambda v: type(v) is dict,
}


_RUN_STATE_FIELDS = {
    "run_id": lambda v: type(v) is str,
    "start": lambda v: type(v) is dict,
    "last_seq": _is_int,
    "done": lambda v: type(v) is bool,
    "stopping": lambda v: type(v) is bool,
    "text": lambda v: type(v) is str,
}


def parse_control(body: bytes, allowed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Parse a control body and check its op's required fields."""
    ops = _ACTOR_OPS if allowed is None else allowed
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolViolation(f"control message is not valid JSON: {exc}") from None
    _check(type(msg) is dict, "control message is not a JSON object")
    op = msg.get("op")
    spec = ops.get(op) if type(op) is str else None
    _check(spec is not None, f"unknown op {op!r:.40}")
    for key, ok in spec.items():
        _check(key in msg and ok(msg[key]), f"{op}: missing or malformed {key!r}")
    if op == "turn_done":
        result = msg["result"]
        for key, ok in _RESULT_FIELDS.items():
            _check(key in result and ok(result[key]), f"turn_done: result has malformed {key!r}")
        _check_event(msg["final"], "turn_done final")
    elif op == "replay" or op == "replay_ended":
        for ev in msg["events"]:
            _check_event(ev, "replay")
    elif op == "hello" and msg.get("run") is not None:
        _check(type(msg["run"]) is dict, "hello: run is not an object")
        for key, ok in _RUN_STATE_FIELDS.items():
            _check(key in msg["run"] and ok(msg["run"][key]), f"hello: run has malformed {key!r}")
        _check_event(msg["run"]["start"], "hello start")
    return msg


def parse_actor_body(body: bytes) -> tuple[dict[str, Any], bool]:
    """Return ``(message, is_event)`` for one body from an actor, or raise."""
    if body[:1] == b"E":
        return parse_event(body[1:]), True
    return parse_control(body), False
