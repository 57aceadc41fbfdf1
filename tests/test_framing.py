"""Tests for navi_actor.framing (pure: length-prefixed frames and actor bodies)."""

import copy

import orjson
import pytest

from navi_actor.framing import (
    HEADER,
    MAX_ACTOR_FRAME,
    MAX_FRONT_FRAME,
    FrameDecoder,
    FrameError,
    ProtocolViolation,
    control,
    event_frame,
    frame,
    parse_actor_body,
    parse_control,
    parse_event,
)

# ── valid messages from an actor ────────────────────────────────────────────

HELLO = {"op": "hello", "pid": 4242}
FATAL = {"op": "fatal", "code": "agent_failed_to_start", "message": "boom"}
REJECTED = {"op": "rejected", "run_id": "r1", "code": "already_running"}
REPLAY = {
    "op": "replay",
    "viewer": 3,
    "run_id": "r1",
    "events": [
        {"type": "stream_start", "seq": 1, "run_id": "r1"},
        {"type": "stream_delta", "delta": "hi", "seq": 2},
    ],
}
REPLAY_NO_RUN = {"op": "replay", "viewer": 3, "run_id": None, "events": []}
TURN_DONE = {
    "op": "turn_done",
    "run_id": "r1",
    "final": {"type": "stream_end", "seq": 9, "content": "hello"},
    "result": {
        "status": "done",
        "content": "hello",
        "thinking": "",
        "tool_calls": [{"tool": "t", "args": {}}],
        "last_seq": 9,
        "stats": {"token_count": 2},
    },
}

VALID_CONTROLS = [HELLO, FATAL, REJECTED, REPLAY, REPLAY_NO_RUN, TURN_DONE]


def _body(msg) -> bytes:
    return orjson.dumps(msg)


def _with(base, path, value):
    """Return a deep copy of ``base`` with ``path`` (tuple of keys) set to ``value``."""
    msg = copy.deepcopy(base)
    target = msg
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return msg


def _without(base, path):
    """Return a deep copy of ``base`` with the key at ``path`` removed."""
    msg = copy.deepcopy(base)
    target = msg
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return msg


# ── frame / control / event_frame ──────────────────────────────────────────


def test_frame_prefixes_big_endian_length():
    """frame() prepends the body's length as a 4-byte big-endian integer."""
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


def test_control_round_trips_through_decoder_and_parser():
    """A framed control message decodes to one body that parses back to the same dict."""
    for msg in VALID_CONTROLS:
        bodies = FrameDecoder(MAX_ACTOR_FRAME).feed(control(msg))
        assert len(bodies) == 1
        parsed, is_event = parse_actor_body(bodies[0])
        assert is_event is False
        assert parsed == msg


def test_event_frame_round_trips_with_e_tag():
    """event_frame() frames b"E" + the event JSON, and parse_actor_body returns the event flagged as one."""
    ev = {"type": "stream_delta", "delta": "héllo", "seq": 12}
    data = event_frame(orjson.dumps(ev))
    assert data == frame(b"E" + orjson.dumps(ev))
    (body,) = FrameDecoder(MAX_ACTOR_FRAME).feed(data)
    assert body[:1] == b"E"
    parsed, is_event = parse_actor_body(body)
    assert is_event is True
    assert parsed == ev


def test_limits_are_ordered():
    """The front may send bigger frames than an actor (a turn carries images)."""
    assert 0 < MAX_ACTOR_FRAME < MAX_FRONT_FRAME


# ── FrameDecoder ────────────────────────────────────────────────────────────


def _stream():
    bodies = [b"", b"a", control(HELLO)[4:], b"E" + orjson.dumps({"type": "x", "seq": 1}), bytes(range(256)) * 3]
    return bodies, b"".join(frame(b) for b in bodies)


def test_decoder_splits_several_frames_in_one_feed():
    """One feed holding several whole frames returns every body in order."""
    bodies, data = _stream()
    dec = FrameDecoder(MAX_ACTOR_FRAME)
    assert dec.feed(data) == bodies
    assert dec.buffered == 0


def test_decoder_handles_a_split_at_every_byte_boundary():
    """Cutting the stream in two at any byte gives the same bodies, in order, across the two feeds."""
    bodies, data = _stream()
    for cut in range(len(data) + 1):
        dec = FrameDecoder(MAX_ACTOR_FRAME)
        out = dec.feed(data[:cut])
        out += dec.feed(data[cut:])
        assert out == bodies, cut
        assert dec.buffered == 0


def test_decoder_handles_one_byte_at_a_time():
    """Feeding the stream byte by byte yields each body exactly when its last byte arrives."""
    bodies, data = _stream()
    dec = FrameDecoder(MAX_ACTOR_FRAME)
    out = []
    for i in range(len(data)):
        got = dec.feed(data[i : i + 1])
        assert len(got) <= 1
        out += got
    assert out == bodies
    assert dec.buffered == 0


def test_decoder_buffered_counts_a_partial_frame():
    """buffered reports the bytes of a frame not yet complete, and drops to 0 once it completes."""
    dec = FrameDecoder(100)
    data = frame(b"hello")
    assert dec.feed(data[:2]) == []
    assert dec.buffered == 2
    assert dec.feed(data[2:6]) == []
    assert dec.buffered == 2  # header consumed, 2 body bytes waiting
    assert dec.feed(data[6:] + data[:1]) == [b"hello"]
    assert dec.buffered == 1
    assert "FrameDecoder" in repr(dec)


def test_decoder_empty_feed_is_harmless():
    """Feeding no bytes returns no bodies and changes nothing."""
    dec = FrameDecoder(10)
    assert dec.feed(b"") == []
    assert dec.buffered == 0


def test_decoder_accepts_a_frame_of_exactly_the_limit():
    """A body exactly max_frame bytes long is accepted."""
    dec = FrameDecoder(16)
    assert dec.feed(frame(b"z" * 16)) == [b"z" * 16]


def test_decoder_refuses_oversize_length_from_the_header_alone():
    """A header announcing more than max_frame raises FrameError at once, without waiting for the body."""
    dec = FrameDecoder(16)
    with pytest.raises(FrameError, match="17 bytes exceeds the limit of 16"):
        dec.feed(HEADER.pack(17))


def test_decoder_refuses_oversize_header_arriving_byte_by_byte():
    """An oversize length is refused as soon as its fourth header byte arrives."""
    dec = FrameDecoder(MAX_ACTOR_FRAME)
    header = HEADER.pack(MAX_ACTOR_FRAME + 1)
    for b in header[:3]:
        assert dec.feed(bytes([b])) == []
    with pytest.raises(FrameError):
        dec.feed(header[3:])


def test_decoder_refuses_oversize_frame_after_valid_ones():
    """An oversize header following valid frames in the same feed raises FrameError."""
    dec = FrameDecoder(8)
    with pytest.raises(FrameError):
        dec.feed(frame(b"ok") + HEADER.pack(0xFFFFFFFF) + b"x" * 10)


def test_protocol_violation_is_a_frame_error():
    """ProtocolViolation is a FrameError, so one except clause catches both."""
    assert issubclass(ProtocolViolation, FrameError)


# ── parse_actor_body / parse_control: accepted ─────────────────────────────


@pytest.mark.parametrize("msg", VALID_CONTROLS, ids=lambda m: f"{m['op']}")
def test_valid_control_messages_are_accepted(msg):
    """hello, fatal, rejected, replay and turn_done with well-formed fields parse to the same dict."""
    parsed, is_event = parse_actor_body(_body(msg))
    assert is_event is False
    assert parsed == msg


@pytest.mark.parametrize("status", ["done", "stopped", "failed"])
def test_turn_done_accepts_each_result_status(status):
    """A turn_done result may have status done, stopped or failed."""
    msg = _with(TURN_DONE, ("result", "status"), status)
    assert parse_control(_body(msg)) == msg


def test_control_extra_keys_are_kept():
    """Keys beyond an op's required ones are allowed and returned."""
    msg = dict(HELLO, extra=[1, 2])
    assert parse_control(_body(msg)) == msg


def test_parse_control_with_custom_allowed_ops():
    """parse_control checks against the ops it is given instead of the actor ops."""
    allowed = {"stop": {"run_id": lambda v: type(v) is str}}
    assert parse_control(b'{"op":"stop","run_id":"r"}', allowed) == {"op": "stop", "run_id": "r"}
    with pytest.raises(ProtocolViolation):
        parse_control(_body(HELLO), allowed)
    with pytest.raises(ProtocolViolation):
        parse_control(b'{"op":"stop","run_id":1}', allowed)


# ── parse_actor_body / parse_control: refused ──────────────────────────────


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"not json",
        b'{"op": "hello", "pid": 1',
        b"[1, 2]",
        b'"hello"',
        b"null",
        b"42",
    ],
    ids=["empty", "garbage", "text", "truncated", "array", "string", "null", "number"],
)
def test_garbage_and_non_object_control_bodies_are_violations(body):
    """A control body that is not a JSON object raises ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_actor_body(body)


@pytest.mark.parametrize(
    "msg",
    [
        {"pid": 1},
        {"op": "explode"},
        {"op": "HELLO", "pid": 1},
        {"op": 5, "pid": 1},
        {"op": None},
        {"op": ["hello"], "pid": 1},
    ],
    ids=["no-op", "unknown", "wrong-case", "int-op", "null-op", "list-op"],
)
def test_unknown_or_missing_op_is_a_violation(msg):
    """A control message whose op is missing, not a string or not known raises ProtocolViolation."""
    with pytest.raises(ProtocolViolation, match="unknown op"):
        parse_actor_body(_body(msg))


MALFORMED = [
    ("hello-no-pid", _without(HELLO, ("pid",))),
    ("hello-str-pid", _with(HELLO, ("pid",), "1")),
    ("hello-bool-pid", _with(HELLO, ("pid",), True)),
    ("hello-float-pid", _with(HELLO, ("pid",), 1.0)),
    ("fatal-no-message", _without(FATAL, ("message",))),
    ("fatal-int-code", _with(FATAL, ("code",), 1)),
    ("rejected-no-run", _without(REJECTED, ("run_id",))),
    ("rejected-null-code", _with(REJECTED, ("code",), None)),
    ("replay-str-viewer", _with(REPLAY, ("viewer",), "3")),
    ("replay-int-run", _with(REPLAY, ("run_id",), 1)),
    ("replay-missing-run", _without(REPLAY, ("run_id",))),
    ("replay-events-dict", _with(REPLAY, ("events",), {})),
    ("replay-event-not-object", _with(REPLAY, ("events",), [1])),
    ("replay-event-seq-0", _with(REPLAY, ("events", 1, "seq"), 0)),
    ("replay-event-no-type", _without(REPLAY, ("events", 0, "type"))),
    ("turn_done-null-run", _with(TURN_DONE, ("run_id",), None)),
    ("turn_done-final-list", _with(TURN_DONE, ("final",), [])),
    ("turn_done-result-str", _with(TURN_DONE, ("result",), "done")),
    ("turn_done-bad-status", _with(TURN_DONE, ("result", "status"), "ok")),
    ("turn_done-null-status", _with(TURN_DONE, ("result", "status"), None)),
    ("turn_done-int-content", _with(TURN_DONE, ("result", "content"), 1)),
    ("turn_done-null-thinking", _with(TURN_DONE, ("result", "thinking"), None)),
    ("turn_done-tool-calls-dict", _with(TURN_DONE, ("result", "tool_calls"), {})),
    ("turn_done-tool-call-str", _with(TURN_DONE, ("result", "tool_calls"), ["t"])),
    ("turn_done-str-last-seq", _with(TURN_DONE, ("result", "last_seq"), "9")),
    ("turn_done-bool-last-seq", _with(TURN_DONE, ("result", "last_seq"), False)),
    ("turn_done-stats-list", _with(TURN_DONE, ("result", "stats"), [])),
    ("turn_done-final-no-seq", _without(TURN_DONE, ("final", "seq"))),
    ("turn_done-final-seq-0", _with(TURN_DONE, ("final", "seq"), 0)),
    ("turn_done-final-seq-negative", _with(TURN_DONE, ("final", "seq"), -9)),
    ("turn_done-final-seq-str", _with(TURN_DONE, ("final", "seq"), "9")),
    ("turn_done-final-seq-float", _with(TURN_DONE, ("final", "seq"), 9.0)),
    ("turn_done-final-seq-bool", _with(TURN_DONE, ("final", "seq"), True)),
    ("turn_done-final-no-type", _without(TURN_DONE, ("final", "type"))),
    ("turn_done-final-empty-type", _with(TURN_DONE, ("final", "type"), "")),
] + [
    (f"turn_done-result-no-{key}", _without(TURN_DONE, ("result", key)))
    for key in ("status", "content", "thinking", "tool_calls", "last_seq", "stats")
] + [
    (f"turn_done-no-{key}", _without(TURN_DONE, (key,))) for key in ("run_id", "final", "result")
]


@pytest.mark.parametrize("msg", [m for _, m in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_missing_or_malformed_fields_are_violations(msg):
    """A known op with a required field missing or of the wrong shape raises ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_actor_body(_body(msg))


def test_violation_message_names_the_op_and_field():
    """The ProtocolViolation text names the op and the offending field."""
    with pytest.raises(ProtocolViolation, match="hello: missing or malformed 'pid'"):
        parse_control(_body(_with(HELLO, ("pid",), "x")))
    with pytest.raises(ProtocolViolation, match="turn_done: result has malformed 'status'"):
        parse_control(_body(_with(TURN_DONE, ("result", "status"), "ok")))


# ── events ─────────────────────────────────────────────────────────────────


def test_parse_event_accepts_a_typed_event_with_positive_seq():
    """An event object with a non-empty string type and a positive int seq is returned as is."""
    ev = {"type": "tool_call", "seq": 1, "tool": "x", "args": {"a": [1, 2]}}
    assert parse_event(orjson.dumps(ev)) == ev
    big = {"type": "stream_delta", "delta": "", "seq": 2**62}
    assert parse_actor_body(b"E" + orjson.dumps(big)) == (big, True)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1]",
        b'"stream_delta"',
        b"null",
        b'{"seq": 1}',
        b'{"type": "", "seq": 1}',
        b'{"type": 5, "seq": 1}',
        b'{"type": null, "seq": 1}',
        b'{"type": "x"}',
        b'{"type": "x", "seq": 0}',
        b'{"type": "x", "seq": -1}',
        b'{"type": "x", "seq": true}',
        b'{"type": "x", "seq": false}',
        b'{"type": "x", "seq": 1.0}',
        b'{"type": "x", "seq": "1"}',
        b'{"type": "x", "seq": null}',
    ],
    ids=[
        "empty", "garbage", "text", "array", "string", "null", "no-type", "empty-type", "int-type",
        "null-type", "no-seq", "seq-0", "seq-negative", "seq-true", "seq-false", "seq-float",
        "seq-str", "seq-null",
    ],
)
def test_bad_events_are_violations(payload):
    """An event body that is not an object with a string type and a positive int seq raises ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_event(payload)
    with pytest.raises(ProtocolViolation):
        parse_actor_body(b"E" + payload)
