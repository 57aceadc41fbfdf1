"""Tests for navi_actor.protocol and navi_actor.events (pure: client messages and agent events)."""

import contextlib

import orjson
import pytest

from navi_actor import events, protocol
from navi_actor.events import (
    RESERVED_TYPES,
    ContextCompressed,
    PlanningStatus,
    PlanReady,
    ProfileSwitched,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ThinkingEnd,
    ToolEvent,
    ToolStarted,
    TurnThinking,
    event_to_wire,
)
from navi_actor.protocol import ClientError, UserMessage, agent_content, parse_client_message

MiB = 1024 * 1024
SHAPE = "Expected {type: 'message', content: '...'}"


def msg(**fields) -> str:
    return orjson.dumps({"type": "message", "content": "hi", **fields}).decode()


def refused(raw) -> ClientError:
    with pytest.raises(ClientError) as info:
        parse_client_message(raw)
    return info.value


# ── parse_client_message: accepted ─────────────────────────────────────────


def test_plain_message_is_accepted():
    """A {type: message, content} object gives a UserMessage with no images, no files and the content unchanged."""
    m = parse_client_message('{"type": "message", "content": "hello"}')
    assert m == UserMessage("hello", "hello", [], [])


def test_bytes_input_is_accepted():
    """parse_client_message accepts the message as bytes as well as str."""
    assert parse_client_message(b'{"type":"message","content":"x"}').display_content == "x"


def test_extra_fields_are_ignored():
    """Unknown fields next to type and content do not refuse the message."""
    assert parse_client_message(msg(client_id="abc", n=3)).content == "hi"


@pytest.mark.parametrize("empty", [None, [], ""])
def test_empty_images_and_files_mean_none(empty):
    """A null, empty-list or empty-string images/files field counts as none, as in the original endpoint."""
    m = parse_client_message(msg(images=empty, files=empty))
    assert m.images == [] and m.files == [] and m.content == "hi"


# ── parse_client_message: refused ──────────────────────────────────────────


@pytest.mark.parametrize("raw", ["{", "", "not json", '{"type": "message", "content": "x",}', b"\xff\xfe", "\ud800"])
def test_invalid_json(raw):
    """Text that is not JSON is refused with "Invalid JSON" and code invalid_json."""
    err = refused(raw)
    assert err.code == "invalid_json" == protocol.INVALID_JSON
    assert err.message == "Invalid JSON"


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "msg", "content": "x"}',
        '{"content": "x"}',
        '{"type": null, "content": "x"}',
        '{"type": "message"}',
        '{"type": "message", "content": ""}',
        '{"type": "message", "content": null}',
        '{"type": "message", "content": 5}',
        '{"type": "message", "content": ["x"]}',
        '{"type": "message", "content": {"text": "x"}}',
        "[]",
        '["message", "x"]',
        '"message"',
        "null",
        "42",
        "true",
    ],
    ids=[
        "wrong-type", "no-type", "null-type", "no-content", "empty-content", "null-content",
        "int-content", "list-content", "dict-content", "empty-array", "array", "string", "null",
        "number", "bool",
    ],
)
def test_wrong_shape_is_invalid_message(raw):
    """Non-object JSON, a type other than 'message', or missing/empty/non-string content is refused with the original text."""
    err = refused(raw)
    assert err.code == "invalid_message" == protocol.INVALID_MESSAGE
    assert err.message == SHAPE == protocol.EXPECTED_SHAPE


def test_too_many_images():
    """Eleven images are refused with "Too many images (11). Max 10 allowed." and code too_many_images."""
    err = refused(msg(images=["aGk="] * 11))
    assert err.code == "too_many_images"
    assert err.message == "Too many images (11). Max 10 allowed."


def test_ten_images_pass():
    """Exactly ten images are accepted."""
    m = parse_client_message(msg(images=["aGk="] * 10))
    assert m.images == ["aGk="] * 10


def test_image_one_byte_over_5_mib_is_too_large():
    """An image of 5 MiB + 1 byte is refused with "Image exceeds 5 MB limit." and code image_too_large."""
    err = refused(msg(images=["A" * (5 * MiB + 1)]))
    assert err.code == "image_too_large"
    assert err.message == "Image exceeds 5 MB limit."


def test_image_of_exactly_5_mib_passes():
    """An image of exactly 5 MiB is accepted."""
    img = "A" * (5 * MiB)
    assert parse_client_message(msg(images=[img])).images == [img]


def test_data_url_prefix_is_stripped_before_measuring():
    """A data:image/png;base64, prefix is removed from the image and not counted toward the 5 MiB limit."""
    payload = "B" * (5 * MiB)
    m = parse_client_message(msg(images=["data:image/png;base64," + payload, "data:image/jpeg;base64,aGk="]))
    assert m.images == [payload, "aGk="]
    err = refused(msg(images=["data:image/png;base64," + payload + "B"]))
    assert err.code == "image_too_large"


def test_data_prefix_without_comma_is_kept():
    """A string starting with data: but with no comma is kept whole."""
    assert parse_client_message(msg(images=["data:abc"])).images == ["data:abc"]


def test_image_size_is_measured_in_utf8_bytes():
    """The 5 MiB limit counts UTF-8 bytes, not characters."""
    err = refused(msg(images=["é" * (5 * MiB // 2 + 1)]))  # 2 bytes each: just over the limit
    assert err.code == "image_too_large"


@pytest.mark.parametrize(
    "images",
    ["aGk=", ["aGk=", 5], [None], [["aGk="]], {"a": "aGk="}, 7, True],
    ids=["string", "int-item", "null-item", "nested", "dict", "int", "bool"],
)
def test_images_not_a_list_of_strings_is_invalid_message(images):
    """An images field that is not a list of strings is refused with code invalid_message."""
    err = refused(msg(images=images))
    assert err.code == "invalid_message"
    assert err.message == "'images' must be a list of base64 strings."


@pytest.mark.parametrize(
    "files",
    [
        "a.txt",
        ["a.txt"],
        [{"name": "a.txt"}],
        [{"path": "/x/a.txt"}],
        [{"name": "a.txt", "path": 5}],
        [{"name": None, "path": "/x/a.txt"}],
        [{"name": "a", "path": "/a"}, 3],
        {"name": "a.txt", "path": "/x/a.txt"},
        1,
    ],
    ids=["string", "str-item", "no-path", "no-name", "int-path", "null-name", "mixed", "dict", "int"],
)
def test_files_not_a_list_of_name_path_is_invalid_message(files):
    """A files field that is not a list of {name, path} string objects is refused with code invalid_message."""
    err = refused(msg(files=files))
    assert err.code == "invalid_message"
    assert err.message == "'files' must be a list of {name, path} objects."


def test_client_error_event():
    """ClientError.event() is the wire error event with message and code."""
    err = ClientError("too_many_images", "Too many images (11). Max 10 allowed.")
    assert err.event() == {
        "type": "error",
        "message": "Too many images (11). Max 10 allowed.",
        "code": "too_many_images",
    }
    assert isinstance(err, Exception)


def test_client_error_survives_a_contextmanager():
    """A ClientError raised inside a contextlib.contextmanager block reaches the caller as that ClientError."""

    @contextlib.contextmanager
    def scope():
        yield

    with pytest.raises(ClientError) as info:
        with scope():
            parse_client_message("{")
    assert info.value.code == "invalid_json"


# ── agent_content ───────────────────────────────────────────────────────────

ONE_IMAGE = "\n\n[1 image attached inline — already in your context, no extra loading needed.]"
TWO_IMAGES = "\n\n[2 images attached inline — already in your context, no extra loading needed.]"


def test_agent_content_notes():
    """agent_content appends the original endpoint's image and file notes, images first."""
    assert agent_content("q", 0, []) == "q"
    assert agent_content("q", 1, []) == "q" + ONE_IMAGE
    assert agent_content("q", 2, []) == "q" + TWO_IMAGES
    files = [{"name": "a.txt", "path": "/x/a.txt"}]
    assert agent_content("q", 0, files) == "q\n\n[Uploaded files on disk:\n- a.txt → /x/a.txt]"
    two = files + [{"name": "b.md", "path": "/y/b.md"}]
    assert agent_content("q", 2, two) == (
        "q" + TWO_IMAGES + "\n\n[Uploaded files on disk:\n- a.txt → /x/a.txt\n- b.md → /y/b.md]"
    )


def test_parsed_message_carries_display_and_agent_content():
    """A message with images and files keeps the typed text for display and the noted text for the agent."""
    m = parse_client_message(
        msg(
            content="look",
            images=["data:image/png;base64,aGk="],
            files=[{"name": "a.txt", "path": "/x/a.txt", "size": 3}],
        )
    )
    assert m.display_content == "look"
    assert m.content == "look" + ONE_IMAGE + "\n\n[Uploaded files on disk:\n- a.txt → /x/a.txt]"
    assert m.images == ["aGk="]
    assert m.files == [{"name": "a.txt", "path": "/x/a.txt"}]


# ── runtime events ──────────────────────────────────────────────────────────


def test_runtime_event_builders():
    """stream_start, error_event, stream_stopped and replay_start build the documented wire shapes."""
    assert protocol.stream_start(3, "r") == {"type": "stream_start", "seq": 3, "run_id": "r"}
    assert protocol.error_event("m", "c") == {"type": "error", "message": "m", "code": "c"}
    assert protocol.error_event("m", "c", 4, run_id="r") == {
        "type": "error", "message": "m", "code": "c", "seq": 4, "run_id": "r",
    }
    assert protocol.stream_stopped(5, "r", "cancel", "partial") == {
        "type": "stream_stopped", "seq": 5, "run_id": "r", "stop_step": "cancel", "content": "partial",
    }
    assert orjson.loads(protocol.replay_start(2, False, 7)) == {"type": "replay_start", "count": 2}
    assert orjson.loads(protocol.replay_start(2, True, 7)) == {
        "type": "replay_start", "count": 2, "truncated": True, "first_seq": 7,
    }
    assert orjson.loads(protocol.HEARTBEAT) == {"type": "heartbeat"}
    assert orjson.loads(protocol.SESSION_SYNC) == {"type": "session_sync"}
    assert protocol.session_sync(None) == protocol.SESSION_SYNC
    assert orjson.loads(protocol.session_sync(12)) == {"type": "session_sync", "last_seq": 12}
    assert orjson.loads(protocol.REPLAY_END) == {"type": "replay_end"}


# ── events.event_to_wire ────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "event, wire",
    [
        (TextDelta("hi"), {"type": "stream_delta", "delta": "hi"}),
        (ThinkingDelta("hm"), {"type": "thinking_delta", "delta": "hm"}),
        (ThinkingEnd(), {"type": "thinking_end"}),
        (
            ToolStarted("search", {"q": "x"}),
            {"type": "tool_started", "tool": "search", "args": {"q": "x"}, "is_subagent": False},
        ),
        (
            ToolStarted("search", {}, is_subagent=True),
            {"type": "tool_started", "tool": "search", "args": {}, "is_subagent": True},
        ),
        (
            ToolEvent("search", {"q": "x"}, ["r1"], True),
            {
                "type": "tool_call", "tool": "search", "args": {"q": "x"}, "result": ["r1"],
                "success": True, "is_subagent": False, "metadata": None,
            },
        ),
        (
            ToolEvent("run", {}, "boom", False, is_subagent=True, metadata={"ms": 3}),
            {
                "type": "tool_call", "tool": "run", "args": {}, "result": "boom",
                "success": False, "is_subagent": True, "metadata": {"ms": 3},
            },
        ),
        (
            ContextCompressed(40, 5),
            {"type": "context_compressed", "messages_before": 40, "messages_after": 5, "summary": ""},
        ),
        (
            ContextCompressed(40, 5, "sum"),
            {"type": "context_compressed", "messages_before": 40, "messages_after": 5, "summary": "sum"},
        ),
        (TurnThinking("all"), {"type": "turn_thinking", "thinking": "all", "is_subagent": False}),
        (TurnThinking("all", True), {"type": "turn_thinking", "thinking": "all", "is_subagent": True}),
        (
            ProfileSwitched("p1", "Coder"),
            {"type": "profile_switched", "profile_id": "p1", "profile_name": "Coder"},
        ),
        (
            PlanningStatus("draft", "Drafting"),
            {"type": "planning_status", "phase": "draft", "label": "Drafting", "is_subagent": False},
        ),
        (PlanReady({"steps": [1]}), {"type": "plan_ready", "plan": {"steps": [1]}, "is_subagent": False}),
        (PlanReady("p", is_subagent=True), {"type": "plan_ready", "plan": "p", "is_subagent": True}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_event_to_wire_for_each_event_class(event, wire):
    """Each event class becomes its wire dict with the original endpoint's field names."""
    out = event_to_wire(event)
    assert out == wire
    assert list(out) == list(wire)  # field order as on the wire


def test_every_public_event_class_is_covered():
    """Every event class exported by navi_actor.events except StreamEnd (and the AgentError exception) has a wire form."""
    classes = {getattr(events, n) for n in events.__all__ if isinstance(getattr(events, n), type)}
    assert classes - {StreamEnd, events.AgentError} == {
        TextDelta, ThinkingDelta, ThinkingEnd, ToolStarted, ToolEvent, ContextCompressed,
        TurnThinking, ProfileSwitched, PlanningStatus, PlanReady,
    }


def test_stream_end_has_no_wire_form():
    """StreamEnd is consumed by the runtime, so event_to_wire refuses it with a TypeError naming it."""
    with pytest.raises(TypeError, match="StreamEnd"):
        event_to_wire(StreamEnd(token_count=3))


def test_dict_with_type_passes_through_as_a_copy():
    """A dict with a string type is returned equal to it but as a new dict."""
    original = {"type": "custom_progress", "pct": 40, "nested": {"a": 1}}
    out = event_to_wire(original)
    assert out == original
    assert out is not original
    out["seq"] = 1
    assert "seq" not in original


def test_dict_of_a_plain_delta_type_passes_through():
    """A dict shaped like a runtime-owned delta type (not reserved) is forwarded."""
    assert event_to_wire({"type": "stream_delta", "delta": "x"}) == {"type": "stream_delta", "delta": "x"}


@pytest.mark.parametrize("kind", sorted(RESERVED_TYPES))
def test_dict_of_reserved_type_is_refused(kind):
    """A dict whose type only the runtime may send raises TypeError naming that type."""
    with pytest.raises(TypeError, match=f"reserved type '{kind}'"):
        event_to_wire({"type": kind})


def test_reserved_types_include_the_runtime_events():
    """stream_start, stream_end, stream_stopped, error, heartbeat, session_sync and replay markers are reserved."""
    assert {"stream_start", "stream_end", "stream_stopped", "error", "heartbeat", "session_sync",
            "replay_start", "replay_end"} <= RESERVED_TYPES


@pytest.mark.parametrize("bad", [{}, {"type": ""}, {"type": 5}, {"type": None}, {"kind": "x"}])
def test_dict_without_string_type_is_refused(bad):
    """A dict without a non-empty string type raises TypeError saying so."""
    with pytest.raises(TypeError, match="without a string 'type' key"):
        event_to_wire(bad)


@pytest.mark.parametrize(
    "value, name",
    [("hello", "str"), (42, "int"), (None, "NoneType"), (["x"], "list"), (object(), "object"), (b"x", "bytes")],
)
def test_non_events_are_refused_naming_what_was_yielded(value, name):
    """A value that is neither an event nor a typed dict raises TypeError naming its type and value."""
    with pytest.raises(TypeError) as info:
        event_to_wire(value)
    text = str(info.value)
    assert text.startswith(f"agent yielded {name} (")
    assert repr(value)[:50] in text
    assert "navi_actor.events" in text


def test_tool_calls_seen_keeps_finished_tools_and_marks_the_one_still_running() -> None:
    """What the front saves for a turn whose actor died: every tool, the unfinished one marked."""
    events = [
        {"type": "tool_started", "tool": "search", "args": {"q": 1}, "is_subagent": False, "seq": 2},
        {"type": "tool_call", "tool": "search", "args": {"q": 1}, "result": {"hits": 3}, "success": True,
         "is_subagent": False, "metadata": {"call_id": "a"}, "seq": 3},
        {"type": "tool_call", "tool": "clock", "args": {}, "result": "noon", "success": True, "seq": 4},
        {"type": "tool_started", "tool": "fetch", "args": {"url": "x"}, "is_subagent": True, "seq": 5},
    ]
    calls = protocol.tool_calls_seen(events)
    assert [c["tool"] for c in calls] == ["search", "clock", "fetch"]
    assert calls[0] == {"tool": "search", "args": {"q": 1}, "result": {"hits": 3}, "success": True,
                        "is_subagent": False, "metadata": {"call_id": "a"}}
    assert calls[2] == {"tool": "fetch", "args": {"url": "x"}, "result": protocol.UNFINISHED_TOOL,
                        "success": False, "is_subagent": True, "metadata": {"unfinished": True}}
    assert protocol.tool_calls_seen([]) == []


# ── if_busy, client_message_id, cancel_queued ───────────────────────────────


def test_busy_fields_are_parsed():
    """if_busy and client_message_id are kept; absent or null they are None."""
    m = parse_client_message(msg(if_busy="enqueue", client_message_id="c-1"))
    assert (m.if_busy, m.client_message_id) == ("enqueue", "c-1")
    m = parse_client_message(msg(if_busy=None, client_message_id=None))
    assert (m.if_busy, m.client_message_id) == (None, None)
    assert parse_client_message(msg(client_message_id="x" * 64)).client_message_id == "x" * 64


@pytest.mark.parametrize("value", ["later", "", "ENQUEUE", 1, True, ["enqueue"], {}])
def test_unknown_if_busy_names_the_allowed_values(value):
    err = refused(msg(if_busy=value))
    assert err.code == "invalid_message"
    assert err.message == "'if_busy' must be one of 'reject', 'enqueue', 'interrupt'."


@pytest.mark.parametrize("value", ["", "x" * 65, 5, ["a"], {"a": 1}, False])
def test_bad_client_message_id_is_refused(value):
    err = refused(msg(client_message_id=value))
    assert err.code == "invalid_message" and "1 to 64 characters" in err.message


def test_cancel_queued_frames():
    """parse_client_frame: a cancel_queued with a message_id, else invalid_message; messages as before."""
    from navi_actor.protocol import CancelQueued, parse_client_frame

    assert parse_client_frame('{"type": "cancel_queued", "message_id": "abc"}') == CancelQueued("abc")
    assert parse_client_frame(msg()).content == "hi"
    for bad in ('{"type": "cancel_queued"}', '{"type": "cancel_queued", "message_id": 3}',
                '{"type": "cancel_queued", "message_id": ""}'):
        with pytest.raises(ClientError) as info:
            parse_client_frame(bad)
        assert info.value.code == "invalid_message" and "message_id" in info.value.message
    with pytest.raises(ClientError) as info:
        parse_client_message('{"type": "cancel_queued", "message_id": "abc"}')
    assert info.value.code == "invalid_message", "parse_client_message takes messages only"
