"""Unit tests of the openai agent's pure parts and of its tools, without a server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from navi_actor.agents.openai.client import os_reason
from navi_actor.agents.openai.context import (
    Probe,
    llama_props_n_ctx,
    ollama_context,
    probe_context,
    server_root,
    vllm_max_model_len,
)
from navi_actor.agents.openai.history import Budget, tools_chars
from navi_actor.agents.openai.settings import DEFAULT_CONTEXT_CHARS
from navi_actor.agents.openai.stream import normalize_finish_reason
from navi_actor.agents.openai import (
    ConfigError,
    ModelServerError,
    OpenAIAgent,
    Settings,
    SSEDecoder,
    StreamState,
    ToolCall,
    ToolCallAssembler,
    build_messages,
    error_text,
    history_messages,
    http_error_message,
    load_tools,
    retry_after_seconds,
    trim_history,
)
from navi_actor.agents.tools import (
    BUILTIN_TOOLS,
    MAX_UPLOAD_READ,
    ToolError,
    Tools,
    calculator,
    current_time,
    evaluate,
    read_upload_file,
    tool,
)
from navi_actor.events import ContextCompressed, TextDelta, ThinkingDelta, ThinkingEnd
from navi_actor.turn import Turn


def make_turn(content: str = "hi", history: list | None = None, upload_dir: str = "") -> Turn:
    return Turn("s", "r", content, content, [], [], history or [], asyncio.Event(), upload_dir)


# ── server-sent events ───────────────────────────────────────────────────────


def test_sse_decoder_reassembles_events_split_anywhere():
    """Events split at every byte boundary, with CRLF, comments and other fields, decode to their data."""
    body = (b": keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"a\": 1}\r\n\r\n"
            b"data: first line\ndata:second line\n\ndata: [DONE]\n\n")
    for size in (1, 2, 3, 7, len(body)):
        dec = SSEDecoder()
        out = []
        for i in range(0, len(body), size):
            out += dec.feed(body[i:i + size])
        assert out == ['{"a": 1}', "first line\nsecond line", "[DONE]"], size
        assert not dec.pending()


def test_sse_decoder_keeps_an_unfinished_event_pending():
    """An event without its closing blank line is held back until it ends."""
    dec = SSEDecoder()
    assert dec.feed(b'data: {"x"') == []
    assert dec.pending()
    assert dec.feed(b": 1}\n") == []
    assert dec.feed(b"\n") == ['{"x": 1}']


# ── tool-call assembly ───────────────────────────────────────────────────────


def test_tool_call_fragments_are_assembled_by_index():
    """Interleaved fragments of two calls come together: id and name from the first, arguments concatenated."""
    asm = ToolCallAssembler()
    asm.feed([{"index": 0, "id": "call_a", "type": "function", "function": {"name": "calculator", "arguments": ""}}])
    asm.feed([{"index": 1, "id": "call_b", "type": "function", "function": {"name": "current_time", "arguments": "{"}}])
    asm.feed([{"index": 0, "function": {"arguments": '{"expr'}}])
    asm.feed([{"index": 1, "function": {"arguments": "}"}}])
    asm.feed([{"index": 0, "function": {"arguments": 'ession": "1+1"}'}}])
    a, b = asm.calls()
    assert (a.id, a.name, a.parsed_arguments()) == ("call_a", "calculator", {"expression": "1+1"})
    assert (b.id, b.name, b.parsed_arguments()) == ("call_b", "current_time", {})


def test_tool_calls_without_index_are_matched_by_id():
    """A server that leaves out index (whole calls, or id-less continuations) still yields separate calls."""
    asm = ToolCallAssembler()
    asm.feed([{"id": "x", "function": {"name": "calculator", "arguments": {"expression": "2"}}}])
    asm.feed([{"id": "y", "function": {"name": "current_time", "arguments": "{"}}])
    asm.feed([{"function": {"arguments": "}"}}])
    calls = asm.calls()
    assert [(c.id, c.name) for c in calls] == [("x", "calculator"), ("y", "current_time")]
    assert calls[0].parsed_arguments() == {"expression": "2"} and calls[1].parsed_arguments() == {}


def test_tool_call_arguments_must_be_a_json_object():
    """Empty arguments are {}, broken JSON and non-objects are refused with the reason."""
    assert ToolCall(0, arguments="").parsed_arguments() == {}
    with pytest.raises(ValueError, match="not valid JSON"):
        ToolCall(0, arguments='{"a": ').parsed_arguments()
    with pytest.raises(ValueError, match="JSON list, not an object"):
        ToolCall(0, arguments="[1, 2]").parsed_arguments()
    with pytest.raises(ValueError, match="not a list"):
        ToolCallAssembler().feed({"index": 0})


# ── one streamed response ────────────────────────────────────────────────────


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra})


def test_stream_state_turns_chunks_into_events():
    """Reasoning is thinking, closed once when the answer starts; content is text; usage and finish are kept."""
    st = StreamState()
    events = []
    for data in [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "hmm"}),
                 chunk({"reasoning": " ok"}), chunk({"content": "Hi"}), chunk({"content": "!"}),
                 chunk({}, "stop"), json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
                 "[DONE]"]:
        events += st.feed_data(data)
    assert events == [ThinkingDelta("hmm"), ThinkingDelta(" ok"), ThinkingEnd(), TextDelta("Hi"), TextDelta("!")]
    assert st.finish_reason == "stop" and st.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert st.done and st.finished and "".join(st.text) == "Hi!"


def test_stream_state_closes_thinking_when_tool_calls_begin():
    """A tool call after reasoning ends the thinking block."""
    st = StreamState()
    events = st.feed_data(chunk({"reasoning_content": "use a tool"}))
    events += st.feed_data(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "current_time"}}]}))
    assert events == [ThinkingDelta("use a tool"), ThinkingEnd()]
    assert st.tools.calls()[0].name == "current_time"


def test_stream_state_refuses_bad_chunks():
    """A chunk that is not JSON, or an error chunk, raises with the chunk or the server's message."""
    with pytest.raises(ModelServerError, match="not JSON: '{nope'"):
        StreamState().feed_data("{nope")
    with pytest.raises(ModelServerError, match="not JSON: 'x{200}…'"):
        StreamState().feed_data("x" * 500)
    with pytest.raises(ModelServerError, match="error mid-answer: model crashed"):
        StreamState().feed_data(json.dumps({"error": {"message": "model crashed"}}))


# ── conversation ─────────────────────────────────────────────────────────────


HISTORY = [
    {"role": "user", "content": "2+3?"},
    {"role": "tool", "content": "5", "tool": "calculator", "args": {"expression": "2+3"}, "success": True},
    {"role": "assistant", "content": "Five.", "status": "done"},
    {"role": "user", "content": "fail please"},
    {"role": "assistant", "content": "", "status": "failed"},
    {"role": "user", "content": "read x"},
    {"role": "tool", "content": "error: no file", "tool": "read_upload", "args": {"name": "x"}, "success": False},
    {"role": "assistant", "content": "", "status": "done"},
]


def test_history_becomes_chat_messages():
    """User and assistant text pass through; tool calls are summarised into the answer; empty answers are left out."""
    assert history_messages(HISTORY) == [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant",
         "content": '(tool calculator was called with {"expression": "2+3"}; it returned: 5)\n\nFive.'},
        {"role": "user", "content": "fail please"},
        {"role": "user", "content": "read x"},
        {"role": "assistant", "content": '(tool read_upload was called with {"name": "x"}; it failed: error: no file)'},
    ]


def test_trim_history_drops_the_oldest_and_starts_with_a_user_message():
    """Trimming keeps the newest messages that fit, never starting with an answer."""
    msgs = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 10},
            {"role": "user", "content": "c" * 10}, {"role": "assistant", "content": "d" * 10}]
    assert trim_history(msgs, 100) == msgs
    assert trim_history(msgs, 40, fixed=5) == msgs[2:]  # 35 chars of room: three fit, the answer goes too
    assert trim_history(msgs, 20) == msgs[2:]
    assert trim_history(msgs, 19) == []
    assert trim_history(msgs, 30, fixed=100) == []


def test_build_messages_announces_trimming():
    """build_messages puts system, kept history and the new message together, with a ContextCompressed when trimmed."""
    s = Settings(model="m", system_prompt="sys", context_chars=100)
    history = [{"role": "user", "content": "u" * 50}, {"role": "assistant", "content": "a" * 30},
               {"role": "user", "content": "v" * 30}, {"role": "assistant", "content": "b" * 30}]
    messages, compressed = build_messages(s, make_turn("now", history))
    assert [m["content"] for m in messages] == ["sys", "v" * 30, "b" * 30, "now"]
    assert isinstance(compressed, ContextCompressed)
    assert (compressed.messages_before, compressed.messages_after) == (4, 2)
    assert "2 oldest messages (80 characters)" in compressed.summary
    messages, compressed = build_messages(Settings(model="m", system_prompt=""), make_turn("now", history))
    assert messages[0]["role"] == "user" and len(messages) == 5 and compressed is None


# ── settings and errors ──────────────────────────────────────────────────────


def test_settings_defaults_and_values():
    """Unset variables take their defaults; set ones are parsed; the base URL loses its trailing slash."""
    s = Settings.from_env({"NAVI_OPENAI_MODEL": "llama3.2"})
    assert (s.base_url, s.model, s.api_key, s.max_steps, s.temperature) == (
        "http://127.0.0.1:11434/v1", "llama3.2", None, 8, None)
    assert s.builtin_tools == ("calculator", "current_time", "read_upload") and s.system_prompt
    s = Settings.from_env({
        "NAVI_OPENAI_MODEL": "m", "NAVI_OPENAI_BASE_URL": "https://api.example.com/v1/",
        "NAVI_OPENAI_API_KEY": "k", "NAVI_OPENAI_TEMPERATURE": "0.2", "NAVI_OPENAI_MAX_TOKENS": "512",
        "NAVI_OPENAI_TIMEOUT": "30", "NAVI_OPENAI_MAX_STEPS": "3", "NAVI_OPENAI_CONTEXT_CHARS": "1000",
        "NAVI_OPENAI_SYSTEM_PROMPT": "", "NAVI_OPENAI_BUILTIN_TOOLS": "", "NAVI_OPENAI_RETRIES": "0",
    })
    assert s.url == "https://api.example.com/v1/chat/completions"
    assert (s.api_key, s.temperature, s.max_tokens, s.timeout, s.max_steps, s.context_chars, s.retries) == (
        "k", 0.2, 512, 30.0, 3, 1000, 0)
    assert s.system_prompt == "" and s.builtin_tools == ()
    body = OpenAIAgent(s, load_tools(s)).request_body([{"role": "user", "content": "x"}])
    assert "tools" not in body and body["max_tokens"] == 512 and body["temperature"] == 0.2


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "NAVI_OPENAI_MODEL is not set"),
        ({"NAVI_OPENAI_BASE_URL": "localhost:11434"}, "NAVI_OPENAI_BASE_URL='localhost:11434' is not an http"),
        ({"NAVI_OPENAI_TEMPERATURE": "3"}, "NAVI_OPENAI_TEMPERATURE='3' is not a number from 0 to 2"),
        ({"NAVI_OPENAI_MAX_TOKENS": "0"}, "NAVI_OPENAI_MAX_TOKENS='0' is not a whole number above 0"),
        ({"NAVI_OPENAI_TIMEOUT": "inf"}, "NAVI_OPENAI_TIMEOUT='inf' is not a number of seconds"),
        ({"NAVI_OPENAI_MAX_STEPS": "two"}, "NAVI_OPENAI_MAX_STEPS='two' is not a whole number from 1 to 100"),
        ({"NAVI_OPENAI_CONTEXT_CHARS": "-5"}, "NAVI_OPENAI_CONTEXT_CHARS='-5' is not a whole number"),
        ({"NAVI_OPENAI_BUILTIN_TOOLS": "calculator,shell"}, "unknown tools shell"),
        ({"NAVI_OPENAI_TOOLS": "nocolon"}, "NAVI_OPENAI_TOOLS='nocolon' is not MODULE:ATTR"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    """Each bad value raises ConfigError naming the variable and what it should be."""
    env = {"NAVI_OPENAI_MODEL": "m", **env} if "NAVI_OPENAI_MODEL is not set" not in message else env
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_extra_tool_registries_load_or_fail_clearly():
    """NAVI_OPENAI_TOOLS adds a registry's tools; a missing module, a non-registry or a name clash fail at start."""
    tools = load_tools(Settings.from_env({"NAVI_OPENAI_MODEL": "m", "NAVI_OPENAI_TOOLS": "examples.extra_tools:tools"}))
    assert tools.names() == ["calculator", "current_time", "read_upload", "word_count", "pause"]
    for spec, message in [("no_such_module_x:tools", "cannot import 'no_such_module_x'"),
                          ("examples.extra_tools:nope", "has no attribute 'nope'"),
                          ("examples.extra_tools:asyncio", "expected a Tools registry"),
                          ("navi_actor.agents.tools:calculator", "'calculator' is registered twice")]:
        with pytest.raises(ConfigError, match=message):
            load_tools(Settings.from_env({"NAVI_OPENAI_MODEL": "m", "NAVI_OPENAI_TOOLS": spec}))


def test_http_error_messages_say_what_to_check():
    """Each status gets a message naming what to check, quoting the server's own error."""
    s = Settings(model="llama3.2")
    assert "check NAVI_OPENAI_API_KEY (NAVI_OPENAI_API_KEY is not set)" in http_error_message(401, '{"error": "no"}', s)
    assert "NAVI_OPENAI_MODEL='llama3.2'" in http_error_message(404, '{"error": "model not found"}', s)
    assert "(tried 3 times)" in http_error_message(429, "", s, 3)
    assert "HTTP 502 (upstream down)" in http_error_message(502, "upstream down", s)
    assert "NAVI_OPENAI_BUILTIN_TOOLS" in http_error_message(400, '{"error": "model does not support tools"}', s)
    assert error_text('{"error": {"message": "bad key", "code": 1}}') == "bad key"
    assert error_text('{"detail": "nope"}') == "nope"
    assert error_text("") == "(empty body)"


def test_any_status_whose_message_names_tools_gets_the_hint():
    """The tools hint goes with 400 and 500 alike when the server's message is about tools; --jinja is named
    when the server names it."""
    s = Settings(model="m")
    jinja = http_error_message(500, '{"error": {"message": "tools param requires --jinja flag"}}', s)
    assert "HTTP 500 (tools param requires --jinja flag)" in jinja
    assert "set NAVI_OPENAI_BUILTIN_TOOLS to empty" in jinja and "started with --jinja" in jinja
    assert "check the model server's logs" not in jinja
    assert "NAVI_OPENAI_BUILTIN_TOOLS" in http_error_message(422, "this model does not support tool_choice", s)
    plain = http_error_message(500, "out of memory", s)
    assert "NAVI_OPENAI_BUILTIN_TOOLS" not in plain and "check the model server's logs" in plain


def test_connect_failures_say_the_os_reason():
    """asyncio's 'Connect call failed (addr)' becomes the OS's words for the errno."""
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
    assert os_reason(refused, refused) == "Connection refused"
    several = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 9), [Errno 111] ...")
    assert os_reason(several, several).startswith("Multiple exceptions")


def test_finish_reasons_are_normalised():
    """The server's finish_reason is one of five; none at all is unknown."""
    assert [normalize_finish_reason(r) for r in ("stop", "length", "content_filter", "tool_calls")] == [
        "stop", "length", "content_filter", "tool_calls"]
    assert normalize_finish_reason("function_call") == "tool_calls" and normalize_finish_reason("eos") == "stop"
    assert normalize_finish_reason(None) == normalize_finish_reason("") == normalize_finish_reason("abort") == "unknown"
    st = StreamState()
    st.feed_data(chunk({"content": "cut"}))
    st.feed_data("[DONE]")
    assert st.finished and st.outcome == "unknown" and st.chunks == 1
    assert StreamState().chunks == 0


def test_the_default_budget_fits_a_2048_token_server():
    """The default NAVI_OPENAI_CONTEXT_CHARS is no more than a 2,048-token context leaves for the prompt."""
    assert DEFAULT_CONTEXT_CHARS <= Budget.from_context(2048, None, "llama-cpp-python's default").chars
    assert Settings.from_env({"NAVI_OPENAI_MODEL": "m"}).context_chars == DEFAULT_CONTEXT_CHARS


def test_budget_from_a_context_size_keeps_room_for_the_answer():
    """A quarter of the context (or NAVI_OPENAI_MAX_TOKENS, at most half) is kept for the answer."""
    b = Budget.from_context(2048, None, "x")
    assert (b.chars, b.n_ctx) == ((2048 - 512) * 3, 2048) and "context of 2048 tokens (x)" in b.source
    assert Budget.from_context(2048, 100, "x").chars == (2048 - 100) * 3
    assert Budget.from_context(2048, 5000, "x").chars == 1024 * 3
    assert Budget.from_context(10, None, "x").chars == 100  # never below the smallest budget


def test_tool_schemas_are_part_of_the_fixed_prompt():
    """build_messages takes the tools' schemas out of the budget before the history."""
    specs = load_tools(Settings(model="m")).specs()
    extra = tools_chars(specs)
    assert extra == len(json.dumps(specs)) and extra > 500 and tools_chars([]) == 0
    s = Settings(model="m", system_prompt="", context_chars=extra + 50)
    history = [{"role": "user", "content": "u" * 40}, {"role": "assistant", "content": "a" * 40}]
    kept, compressed = build_messages(s, make_turn("now", history), fixed_extra=extra)
    assert [m["content"] for m in kept] == ["now"] and "tools' schemas take" in compressed.summary
    kept, compressed = build_messages(s, make_turn("now", history))
    assert len(kept) == 3 and compressed is None


def test_context_sizes_are_read_from_each_server_kind():
    """llama-server's /props, vLLM's /models and Ollama's /api/show each give a context size; junk gives none."""
    assert server_root("http://h:8080/v1") == "http://h:8080" and server_root("http://h/api") == "http://h/api"
    assert llama_props_n_ctx({"default_generation_settings": {"n_ctx": 4096}}) == 4096
    assert llama_props_n_ctx({"n_ctx": 512}) == 512
    assert llama_props_n_ctx({"default_generation_settings": {"n_ctx": "big"}}) is None
    assert llama_props_n_ctx([]) is None and llama_props_n_ctx({"n_ctx": True}) is None
    models = {"data": [{"id": "other", "max_model_len": 1}, {"id": "m", "max_model_len": 32768}]}
    assert vllm_max_model_len(models, "m") == 32768 and vllm_max_model_len(models, "x") is None
    assert vllm_max_model_len({"data": [{"id": "m"}]}, "m") is None  # OpenAI's list says no length
    assert ollama_context({"parameters": "num_ctx 8192\nstop x"}) == 8192
    assert ollama_context({"model_info": {"qwen2.context_length": 32768}}) == 4096
    assert ollama_context({"model_info": {"llama.context_length": 2048}}) == 2048
    assert ollama_context({"parameters": "stop x"}) is None


async def test_probe_context_asks_in_turn_and_notices_a_server_that_is_not_there():
    """The first server kind that answers wins; a refused connection means: ask again later."""
    asked = []

    def fetch_from(answers):
        async def fetch(method, url, body):
            asked.append((method, url, body))
            answer = answers.get(url)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return fetch

    base = "http://h:1/v1"
    found = await probe_context(fetch_from({"http://h:1/api/show": {"parameters": "num_ctx 999"}}), base, "m")
    assert found == Probe(999, "Ollama POST /api/show")
    assert [a[1] for a in asked] == ["http://h:1/props", "http://h:1/v1/models", "http://h:1/api/show"]
    assert asked[-1] == ("POST", "http://h:1/api/show", {"model": "m"})
    assert await probe_context(fetch_from({}), base, "m") == Probe(None)
    down = await probe_context(fetch_from({"http://h:1/props": ConnectionError("refused")}), base, "m")
    assert down.n_ctx is None and not down.reached


def test_retry_after_accepts_seconds_and_dates():
    """retry-after is read as seconds or as an HTTP date; junk is ignored."""
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28 <= retry_after_seconds(date, now) <= 31


# ── the calculator ───────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "expression, result",
    [("1 + 2 * 3", "7"), ("(1 + 2) * 3", "9"), ("7 / 2", "3.5"), ("7 // 2", "3"), ("-7 % 3", "2"),
     ("2 ** 10", "1024"), ("2^10", "1024"), ("0.1 + 0.2", "0.3"), ("6 / 3", "2"), ("sqrt(16) + abs(-2)", "6"),
     ("round(pi, 2)", "3.14"), ("max(1, 5, 3)", "5"), ("factorial(20)", "2432902008176640000"),
     ("2 ** -1", "0.5"), ("10 ** 100", "1" + "0" * 100), ("1e3", "1000")],
)
def test_calculator_does_arithmetic(expression, result):
    """The calculator evaluates arithmetic with Python's precedence (and ^ as a power)."""
    assert calculator(expression) == result


@pytest.mark.parametrize(
    "expression, message",
    [("__import__('os').system('id')", "unknown function"), ("__import__('os')", "unknown function '__import__'"),
     ("().__class__", "not arithmetic"), ("x + 1", "unknown name 'x'"), ("'a' * 3", "'a' is not a number"),
     ("(lambda: 1)()", "unknown function"), ("True + 1", "True is not a number"), ("1 / 0", "division by zero"),
     ("9 ** 9 ** 9", "too large"), ("10 ** 10000", "too large"), ("2.0 ** 5000", "too large"),
     ("factorial(10000)", "0 to 1000"), ("sqrt(-1)", "sqrt: math domain error"), ("1 +", "cannot parse"),
     ("-" * 500 + "1", "nested too deeply"), ("(" * 300 + "1" + ")" * 300, "cannot parse"),
     ("1" * 1001, "longer than 1000"), ("", "give an arithmetic"),
     ("[1, 2]", "not arithmetic"), ("abs(x=1)", "not name=value")],
)
def test_calculator_refuses_what_is_not_arithmetic(expression, message):
    """Names, attributes, strings, lambdas and results too large are refused quickly with a reason."""
    t0 = time.monotonic()
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expression)
    assert time.monotonic() - t0 < 0.5


# ── tools ────────────────────────────────────────────────────────────────────


async def test_tools_registry_and_decorator():
    """@tool makes a Tool from a function (name and description from it); Tools refuses duplicates and non-tools."""
    reg = Tools()

    @reg.tool(parameters={"type": "object", "properties": {"n": {"type": "integer"}}})
    def double(n: int) -> int:
        """Twice n.

        More detail that the model is not shown."""
        return n * 2

    @tool("async_one")
    async def whatever(*, turn) -> str:
        return turn.session_id

    reg.add(whatever)
    assert reg.names() == ["double", "async_one"]
    assert reg.specs()[0] == {"type": "function", "function": {
        "name": "double", "description": "Twice n.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}}
    assert await double.run({"n": 4}) == 8 and double(5) == 10
    assert await whatever.run({}, make_turn()) == "s"
    with pytest.raises(ValueError, match="registered twice"):
        reg.add(double)
    with pytest.raises(TypeError, match="not a Tool"):
        reg.add(len)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool name"):
        tool("has space")(len)
    with pytest.raises(ValueError, match='"type": "object"'):
        tool(parameters={"type": "string"})(len)
    assert set(BUILTIN_TOOLS) == {"calculator", "current_time", "read_upload"}
    assert current_time().endswith("+00:00")


def test_read_upload_stays_inside_the_folder(tmp_path: Path):
    """read_upload reads files and links inside the folder, and refuses '..', absolute paths, escapes and binaries."""
    up = tmp_path / "uploads"
    (up / "sub").mkdir(parents=True)
    (up / "a.txt").write_text("alpha")
    (up / "sub" / "b.txt").write_text("beta")
    (up / "big.txt").write_bytes(b"x" * (MAX_UPLOAD_READ + 10))
    (up / "bin.dat").write_bytes(b"\x00\x01")
    (tmp_path / "secret").write_text("secret")
    os.symlink(tmp_path / "secret", up / "out.txt")
    os.symlink(up / "a.txt", up / "in.txt")
    os.symlink(tmp_path, up / "sub" / "dir")
    os.mkfifo(up / "pipe")  # opening it for reading must not wait for a writer
    d = str(up)
    assert read_upload_file(d, "a.txt") == "alpha"
    assert read_upload_file(d, "sub/b.txt") == "beta"
    assert read_upload_file(d, "in.txt") == "alpha"
    big = read_upload_file(d, "big.txt")
    assert big.startswith("x" * MAX_UPLOAD_READ) and f"[truncated: big.txt has {MAX_UPLOAD_READ + 10} bytes" in big
    for name, message in [("../secret", "'..'"), ("sub/../../secret", "'..'"), (str(tmp_path / "secret"), "absolute"),
                          ("out.txt", "outside the uploads folder"), ("sub/dir/secret", "outside the uploads folder"),
                          ("bin.dat", "not a text file"), ("sub", "not a regular file"), ("pipe", "not a regular file"),
                          ("", "give the uploaded"),
                          ("missing.txt", "files are: a.txt, big.txt, bin.dat, in.txt, out.txt, pipe, sub/b.txt")]:
        with pytest.raises(ToolError, match=message.replace(".", r"\.")):
            read_upload_file(d, name)
    with pytest.raises(ToolError, match="no files have been uploaded"):
        read_upload_file(str(tmp_path / "nothing"), "a.txt")
