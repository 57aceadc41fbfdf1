"""Property-based fuzzing of what crosses a trust boundary: client messages and actor frames.

Every input is either accepted (and then well-formed) or refused with the
module's own error (ClientError, FrameError); nothing else escapes, and
nothing takes long (hypothesis' deadline).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navi_actor import framing, protocol
from navi_actor.framing import FrameDecoder, FrameError, parse_actor_body
from navi_actor.protocol import ClientError, UserMessage, parse_client_message

FUZZ = settings(max_examples=300, deadline=1000, database=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values, nested, with the strings a client might send.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
base64_text = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
images = st.lists(
    st.one_of(base64_text, st.text(max_size=30), base64_text.map(lambda s: "data:image/png;base64," + s),
              json_values),
    max_size=12,
)
files = st.lists(
    st.one_of(st.fixed_dictionaries({"name": st.text(max_size=20), "path": st.text(max_size=40)}), json_values),
    max_size=22,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "stop", "", "MESSAGE"]) | json_values},
    optional={"content": st.text(max_size=60) | json_values, "images": images | json_values,
              "files": files | json_values, "extra": json_values},
)


def check_message(raw: str | bytes, strict: bool) -> None:
    try:
        m = parse_client_message(raw, strict_base64=strict)
    except ClientError as err:
        assert err.code in protocol.ERROR_CODES and err.message
        assert err.event() == {"type": "error", "message": err.message, "code": err.code}
        return
    assert isinstance(m, UserMessage)
    assert type(m.display_content) is str and m.display_content
    assert m.content.startswith(m.display_content)
    assert len(m.images) <= protocol.MAX_IMAGES
    assert all(type(i) is str and len(i.encode()) <= protocol.MAX_IMAGE_BYTES for i in m.images)
    if strict:
        assert all(protocol.is_base64(i) for i in m.images)
    assert len(m.files) <= protocol.MAX_FILES
    assert all(set(f) == {"name", "path"} and type(f["name"]) is str and type(f["path"]) is str for f in m.files)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_are_a_message_or_a_client_error(raw, strict):
    """Arbitrary bytes are either a valid message or refused with a ClientError, strict or not."""
    check_message(raw, strict)


@FUZZ
@given(st.text(max_size=200), st.booleans())
def test_any_text_is_a_message_or_a_client_error(raw, strict):
    """Arbitrary text is either a valid message or refused with a ClientError."""
    check_message(raw, strict)


@FUZZ
@given(messages, st.booleans())
def test_message_shaped_objects_are_a_message_or_a_client_error(obj, strict):
    """Objects shaped like messages, with every field of any type, are accepted well-formed or refused."""
    check_message(orjson.dumps(obj), strict)


@FUZZ
@given(st.text(max_size=80))
def test_is_base64_agrees_with_a_strict_decoder(text):
    """is_base64 accepts every text that round-trips through base64, and only texts a validating decoder accepts."""
    try:
        same = base64.b64encode(base64.b64decode(text, validate=True)).decode() == text and text != ""
    except ValueError:
        same = False
    if same:
        assert protocol.is_base64(text)
    if protocol.is_base64(text):  # (its padding bits may be non-zero, which a round trip would change)
        base64.b64decode(text, validate=True)


# ── frames from actors ──────────────────────────────────────────────────────

events = st.fixed_dictionaries({"type": st.text(max_size=10) | json_values,
                                "seq": st.integers(-(2**63), 2**64 - 1) | json_values},
                               optional={"delta": json_values})
controls = st.fixed_dictionaries(
    {"op": st.sampled_from(["hello", "fatal", "turn_done", "replay", "rejected", "nope"]) | json_values},
    optional={"pid": json_values, "code": json_values, "message": json_values, "run_id": json_values,
              "final": events | json_values, "result": json_values, "viewer": json_values,
              "events": st.lists(events, max_size=3) | json_values, "run": json_values},
)
bodies = st.one_of(
    st.binary(max_size=100),
    events.map(lambda e: b"E" + orjson.dumps(e)),
    controls.map(orjson.dumps),
    json_values.map(orjson.dumps),
)


def check_body(body: bytes) -> None:
    try:
        msg, is_event = parse_actor_body(body)
    except FrameError as err:
        assert str(err)
        return
    assert type(msg) is dict
    if is_event:
        assert type(msg["type"]) is str and msg["type"] and type(msg["seq"]) is int and msg["seq"] > 0
    else:
        assert type(msg["op"]) is str


@FUZZ
@given(bodies)
def test_any_body_from_an_actor_is_checked_or_refused(body):
    """Every frame body is parsed into a checked event or control message, or refused with a FrameError."""
    check_body(body)


@FUZZ
@given(st.lists(bodies, max_size=6), st.binary(max_size=40), st.lists(st.integers(1, 64), max_size=10))
def test_any_stream_from_an_actor_decodes_or_is_refused(good, tail, cuts):
    """Framed bodies followed by garbage, cut anywhere, decode to the same bodies or end in a FrameError."""
    stream = b"".join(framing.frame(b) for b in good) + tail
    decoder = FrameDecoder(1024)
    out: list[bytes] = []
    pos = 0
    try:
        for size in [*cuts, len(stream)]:
            out += decoder.feed(stream[pos:pos + size])
            pos += size
    except FrameError:
        return
    assert out[: len(good)] == good
    for body in out:
        check_body(body)
    assert decoder.buffered < 4 + 1024


@FUZZ
@given(st.integers(0, 2**32 - 1))
def test_a_length_over_the_limit_is_refused_at_once(length):
    """A header announcing more than the limit raises FrameError as soon as it is read, before any body."""
    decoder = FrameDecoder(100)
    try:
        out: Any = decoder.feed(struct.pack(">I", length))
    except FrameError:
        assert length > 100
        return
    assert length <= 100 and out == ([b""] if length == 0 else [])
