"""The openai agent end to end: the real server, over WebSocket, against a fake model server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import pytest

from tests.conftest import receive_until, run_turn, text_of, wait_for
from navi_actor.agents.openai import ModelServerError, OpenAIAgent, Settings, load_tools
from navi_actor.agents.openai.client import StopRace
from navi_actor.turn import Turn
from tests.fake_openai import MODEL, Cut, Drop, Empty, Fail, FakeOpenAI, Malformed, Reply, Slow

FINAL = ("stream_end", "stream_stopped", "error")


@pytest.fixture
async def fake():
    f = await FakeOpenAI().start()
    yield f
    await f.close()


@pytest.fixture
def openai_server(make_server, fake):
    """``openai_server(**env)``: the real server running ``--agent openai`` against the fake."""

    def start(**env: str):
        base = {
            "NAVI_OPENAI_BASE_URL": fake.url,
            "NAVI_OPENAI_MODEL": MODEL,
            "NAVI_OPENAI_RETRY_BACKOFF": "0.01",
        }
        return make_server("openai", env={**base, **env}, args=["--stop-grace", "3"])

    return start


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def error_of(events: list[dict[str, Any]]) -> str:
    final = events[-1]
    assert final["type"] == "error", final
    assert final["code"] == "model_server_error", final
    assert not final["message"].startswith("Internal error"), final
    return final["message"]


# ── answers ──────────────────────────────────────────────────────────────────


async def test_plain_answer(openai_server, client, fake):
    """A plain answer streams the fake's text, and stream_end carries the usage the fake reported."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Reply("The answer is 42, as always.", usage=(25, 6)))
    events = await run_turn(ws, "what is six times seven?")
    end = events[-1]
    assert end["type"] == "stream_end"
    assert text_of(events) == end["content"] == "The answer is 42, as always."
    assert end["token_count"] == 6 and end["context_tokens"] == 25 and end["max_context_tokens"] is None
    assert len(of_type(events, "stream_delta")) == 6  # streamed token by token, not in one piece

    (req,) = fake.requests
    assert req.body["model"] == MODEL and req.body["stream"] is True
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.messages[0]["role"] == "system"
    assert req.messages[1:] == [{"role": "user", "content": "what is six times seven?"}]
    assert {t["function"]["name"] for t in req.body["tools"]} == {"calculator", "current_time", "read_upload"}
    assert "Authorization" not in req.headers
    detail = await c.session(sid)
    assert detail["messages"][-1]["content"] == "The answer is 42, as always."


async def test_reasoning_becomes_thinking(openai_server, client, fake):
    """Reasoning deltas (reasoning_content or reasoning) become thinking_delta, closed by thinking_end."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    for field in ("reasoning_content", "reasoning"):
        fake.push(Reply("Forty-two.", reasoning="Six sevens are forty-two.", reasoning_field=field))
        events = await run_turn(ws, "six sevens?")
        kinds = [e["type"] for e in events]
        assert kinds.count("thinking_end") == 1
        last_thinking = max(i for i, k in enumerate(kinds) if k == "thinking_delta")
        assert last_thinking < kinds.index("thinking_end") < kinds.index("stream_delta")
        assert "".join(e["delta"] for e in of_type(events, "thinking_delta")) == "Six sevens are forty-two."
        assert text_of(events) == "Forty-two."
    detail = await c.session(sid)
    assert detail["messages"][-1]["thinking"] == "Six sevens are forty-two."


# ── tools ────────────────────────────────────────────────────────────────────


async def test_tool_call_round_trip(openai_server, client, fake):
    """A streamed calculator call is run, reported, and its result is sent back to the model as a tool message."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Reply("Let me compute that.", tool_calls=[("calculator", '{"expression": "(6 * 7) / 2"}')]),
              Reply("It is 21."))
    events = await run_turn(ws, "half of six sevens?")
    kinds = [e["type"] for e in events]
    assert kinds.index("tool_started") < kinds.index("tool_call")
    (started,) = of_type(events, "tool_started")
    (call,) = of_type(events, "tool_call")
    assert started["tool"] == call["tool"] == "calculator"
    assert started["args"] == call["args"] == {"expression": "(6 * 7) / 2"}
    assert call["result"] == "21" and call["success"] is True
    end = events[-1]
    assert end["type"] == "stream_end" and end["tool_call_count"] == 1 and end["token_count"] == 14
    assert text_of(events) == end["content"] == "Let me compute that.\n\nIt is 21."

    first, second = fake.requests
    assistant, tool_msg = second.messages[-2:]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me compute that."
    (tc,) = assistant["tool_calls"]
    assert tc["type"] == "function" and tc["function"] == {"name": "calculator",
                                                           "arguments": '{"expression": "(6 * 7) / 2"}'}
    assert tool_msg == {"role": "tool", "tool_call_id": tc["id"], "content": "21"}
    assert second.messages[:-2] == first.messages


async def test_bad_tool_arguments_and_unknown_tool_are_reported_to_the_model(openai_server, client, fake):
    """Malformed JSON arguments and an unknown tool are not run; both fail visibly and the model is told why."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Reply(tool_calls=[("calculator", '{"expression": "1 +'), ("launch_rockets", "{}")]),
              Reply("Sorry, I could not."))
    events = await run_turn(ws, "try it")
    bad, unknown = of_type(events, "tool_call")
    assert bad["tool"] == "calculator" and bad["success"] is False
    assert "not valid JSON" in bad["result"] and "not run" in bad["result"]
    assert unknown["tool"] == "launch_rockets" and unknown["success"] is False
    assert "no tool named 'launch_rockets'" in unknown["result"]
    assert events[-1]["type"] == "stream_end" and text_of(events) == "Sorry, I could not."

    second = fake.requests[1]
    calls = second.messages[-3]["tool_calls"]
    assert [t["function"]["name"] for t in calls] == ["calculator", "launch_rockets"]
    assert calls[0]["function"]["arguments"] == "{}"  # the broken JSON is not echoed back
    tool_msgs = second.messages[-2:]
    assert [m["tool_call_id"] for m in tool_msgs] == [t["id"] for t in calls]
    assert "not valid JSON" in tool_msgs[0]["content"] and '{"expression": "1 +' in tool_msgs[0]["content"]
    assert "calculator, current_time, read_upload" in tool_msgs[1]["content"]


async def test_read_upload_stays_in_the_upload_folder(openai_server, client, fake):
    """read_upload reads a file of the session's folder and refuses '../' and a symlink that escapes it."""
    server = openai_server()
    c = client(server)
    sid, ws = await c.open_session()
    uploads = server.data_dir / "uploads" / sid
    uploads.mkdir(parents=True, exist_ok=True)  # the front makes it with the session (sandbox)
    (uploads / "notes.txt").write_text("hello from notes")
    secret = server.data_dir / "secret.txt"
    secret.write_text("TOP SECRET")
    os.symlink(secret, uploads / "link.txt")
    fake.push(Reply(tool_calls=[("read_upload", '{"name": "notes.txt"}'),
                                ("read_upload", '{"name": "../../secret.txt"}'),
                                ("read_upload", '{"name": "link.txt"}'),
                                ("read_upload", f'{{"name": "{secret}"}}')]),
              Reply("Done."))
    events = await run_turn(ws, "read my files")
    ok, up, link, absolute = of_type(events, "tool_call")
    assert ok["success"] is True and ok["result"] == "hello from notes"
    assert up["success"] is False and "refused" in up["result"] and "'..'" in up["result"]
    assert link["success"] is False and "outside the uploads folder" in link["result"]
    assert absolute["success"] is False and "absolute path" in absolute["result"]
    assert "TOP SECRET" not in json.dumps(events)
    assert "TOP SECRET" not in json.dumps(fake.requests[1].body)


async def test_step_limit_ends_the_turn_with_an_error(openai_server, client, fake):
    """A model that keeps calling tools is stopped at NAVI_OPENAI_MAX_STEPS with a message naming the limit."""
    c = client(openai_server(NAVI_OPENAI_MAX_STEPS="2"))
    sid, ws = await c.open_session()
    loop = Reply(tool_calls=[("current_time", "{}")])
    fake.push(loop, loop, loop)
    events = await run_turn(ws, "loop forever")
    message = error_of(events)
    assert "after 2 requests" in message and "NAVI_OPENAI_MAX_STEPS=2" in message
    assert len(fake.requests) == 2
    assert len(of_type(events, "tool_call")) == 1  # the last step's calls are not run


async def test_extra_tools_from_nav_openai_tools(openai_server, client, fake):
    """A registry named by NAVI_OPENAI_TOOLS is offered to the model next to the built-ins, and its tools run."""
    c = client(openai_server(NAVI_OPENAI_TOOLS="examples.extra_tools:tools", NAVI_OPENAI_BUILTIN_TOOLS="calculator"))
    sid, ws = await c.open_session()
    fake.push(Reply(tool_calls=[("word_count", '{"text": "one two three"}')]), Reply("Three words."))
    events = await run_turn(ws, "count")
    (call,) = of_type(events, "tool_call")
    assert call["success"] is True and call["result"] == {"words": 3}
    names = [t["function"]["name"] for t in fake.requests[0].body["tools"]]
    assert names == ["calculator", "word_count", "pause"]
    assert fake.requests[1].messages[-1]["content"] == '{"words": 3}'


# ── history ──────────────────────────────────────────────────────────────────


async def test_history_is_sent_on_the_second_turn(openai_server, client, fake):
    """The second turn's request carries the first turn's message and answer, its tool call summarised."""
    c = client(openai_server(NAVI_OPENAI_SYSTEM_PROMPT="Be brief."))
    sid, ws = await c.open_session()
    fake.push(Reply(tool_calls=[("calculator", '{"expression": "2+3"}')]), Reply("Five."))
    await run_turn(ws, "what is 2+3?")
    fake.push(Reply("Yes."))
    events = await run_turn(ws, "sure?")
    assert text_of(events) == "Yes." and not of_type(events, "context_compressed")
    assert fake.requests[2].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is 2+3?"},
        {"role": "assistant",
         "content": '(tool calculator was called with {"expression": "2+3"}; it returned: 5)\n\nFive.'},
        {"role": "user", "content": "sure?"},
    ]


async def test_history_is_trimmed_to_the_context_budget(openai_server, client, fake):
    """History beyond NAVI_OPENAI_CONTEXT_CHARS is dropped from the oldest, announced by context_compressed first."""
    c = client(openai_server(NAVI_OPENAI_SYSTEM_PROMPT="Be brief.", NAVI_OPENAI_CONTEXT_CHARS="200",
                             NAVI_OPENAI_BUILTIN_TOOLS=""))  # no tool schemas in the budget here
    sid, ws = await c.open_session()
    for ask, answer in (("a" * 60, "b" * 60), ("c" * 60, "d" * 60)):
        fake.push(Reply(answer))
        assert not of_type(await run_turn(ws, ask), "context_compressed")
    fake.push(Reply("ok"))
    events = await run_turn(ws, "e" * 30)
    assert events[1]["type"] == "context_compressed"  # right after stream_start
    assert (events[1]["messages_before"], events[1]["messages_after"]) == (4, 2)
    assert "NAVI_OPENAI_CONTEXT_CHARS=200" in events[1]["summary"]
    assert [m["content"] for m in fake.requests[2].messages] == ["Be brief.", "c" * 60, "d" * 60, "e" * 30]


# ── stop ─────────────────────────────────────────────────────────────────────


async def test_stop_closes_the_model_stream(openai_server, client, fake):
    """Stop mid-stream closes the model's response at once, sends stream_stopped and saves the partial text."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Slow(interval=0.02))
    await ws.send_json({"type": "message", "content": "talk forever"})
    first = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["delta"] == "w3 ")
    assert (await c.stop(sid))["ok"] is True
    rest = await receive_until(ws, lambda e: e["type"] in FINAL, timeout=5)
    final = rest[-1]
    assert final["type"] == "stream_stopped" and final["stop_step"] == "event"  # returned, was not cancelled
    await asyncio.wait_for(fake.client_closed.wait(), 5)
    partial = text_of(first + rest)
    assert partial.startswith("w0 w1 w2 w3 ") and final["content"] == partial
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    assert detail["messages"][-1]["status"] == "stopped" and detail["messages"][-1]["content"] == partial


# ── errors ───────────────────────────────────────────────────────────────────


async def test_connection_refused_names_the_url_and_variable(make_server, client):
    """A model server that is not running gives an error naming the base URL and NAVI_OPENAI_BASE_URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    c = client(make_server("openai", env={"NAVI_OPENAI_BASE_URL": url, "NAVI_OPENAI_MODEL": MODEL}))
    sid, ws = await c.open_session()
    message = error_of(await run_turn(ws, "hello"))
    assert f"cannot connect to the model server at {url} (Connection refused)" in message
    assert "Set NAVI_OPENAI_BASE_URL" in message


async def test_unauthorized_points_at_the_api_key(openai_server, client, fake):
    """HTTP 401 is not retried and the error says to check NAVI_OPENAI_API_KEY; the key is sent as a bearer token."""
    c = client(openai_server(NAVI_OPENAI_API_KEY="sk-test-123"))
    sid, ws = await c.open_session()
    fake.push(Fail(401, "Incorrect API key provided"))
    message = error_of(await run_turn(ws, "hello"))
    assert "HTTP 401 (Incorrect API key provided)" in message and "check NAVI_OPENAI_API_KEY" in message
    (req,) = fake.requests
    assert req.headers["Authorization"] == "Bearer sk-test-123"


async def test_not_found_points_at_the_model_and_url(openai_server, client, fake):
    """HTTP 404 gives an error naming NAVI_OPENAI_MODEL and NAVI_OPENAI_BASE_URL."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Fail(404, f"model '{MODEL}' not found"))
    message = error_of(await run_turn(ws, "hello"))
    assert f"NAVI_OPENAI_MODEL='{MODEL}'" in message and "NAVI_OPENAI_BASE_URL" in message
    assert f"model '{MODEL}' not found" in message and len(fake.requests) == 1


async def test_rate_limit_honours_retry_after_then_gives_up(openai_server, client, fake):
    """HTTP 429 is retried after its retry-after; when it persists past the retries the error says so."""
    c = client(openai_server(NAVI_OPENAI_RETRIES="2"))
    sid, ws = await c.open_session()
    fake.push(Fail(429, "slow down", {"Retry-After": "0.3"}), Reply("Made it."))
    events = await run_turn(ws, "hello")
    assert events[-1]["type"] == "stream_end" and text_of(events) == "Made it."
    first, second = fake.requests
    assert second.at - first.at >= 0.3

    fake.push(*[Fail(429, "slow down", {"Retry-After": "0"})] * 3)
    message = error_of(await run_turn(ws, "again"))
    assert "rate-limiting requests (HTTP 429: slow down) (tried 3 times)" in message
    assert len(fake.requests) == 5


async def test_server_errors_are_retried_then_reported(openai_server, client, fake):
    """HTTP 5xx is retried with backoff; a failure that persists ends the turn with the status and a hint."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Fail(500, "boom"), Fail(502, "bad gateway"), Reply("Recovered."))
    events = await run_turn(ws, "hello")
    assert events[-1]["type"] == "stream_end" and text_of(events) == "Recovered."
    assert len(fake.requests) == 3

    fake.push(*[Fail(503, "overloaded")] * 4)
    message = error_of(await run_turn(ws, "again"))
    assert "failed with HTTP 503 (overloaded) (tried 4 times)" in message and "logs" in message
    assert len(fake.requests) == 7


async def test_stream_cut_keeps_the_partial_text(openai_server, client, fake):
    """A stream cut mid-answer ends the turn with an error saying so, and the text that streamed is saved."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    cut = Cut("The first half of")
    fake.push(cut)
    await ws.send_json({"type": "message", "content": "hello"})
    events = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["delta"] == " of")
    cut.release.set()
    events += await receive_until(ws, lambda e: e["type"] in FINAL)
    message = error_of(events)
    assert "stream broke off mid-answer" in message and "the text so far was kept" in message
    assert len(fake.requests) == 1  # not retried: text had streamed
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    assert detail["messages"][-1]["status"] == "failed"
    assert detail["messages"][-1]["content"] == text_of(events) == "The first half of"


async def test_malformed_chunk_is_named(openai_server, client, fake):
    """A data line that is not JSON ends the turn with an error quoting the bad chunk."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Malformed("Partial", bad="{oops, not json"))
    events = await run_turn(ws, "hello")
    message = error_of(events)
    assert "chunk that is not JSON: '{oops, not json'" in message
    assert text_of(events) == "Partial"


async def run_in_process(fake: FakeOpenAI, **env: str) -> list[Any]:
    """Run one turn of the agent in this process (no navi server) against the fake."""
    settings = Settings.from_env({"NAVI_OPENAI_BASE_URL": fake.url, "NAVI_OPENAI_MODEL": MODEL, **env})
    agent = OpenAIAgent(settings, load_tools(settings))
    turn = Turn("s", "r", "hello", "hello", [], [], [], asyncio.Event(), "")
    try:
        return [e async for e in agent.run_stream(turn)]
    finally:
        await agent.close()


async def test_stalled_stream_times_out(fake):
    """A stream that goes quiet for NAVI_OPENAI_TIMEOUT fails with a message naming the variable, and is closed."""
    fake.push(Slow(interval=2.0, count=3))
    with pytest.raises(ModelServerError, match=r"broke off mid-answer: no data for NAVI_OPENAI_TIMEOUT=0.2 s"):
        await run_in_process(fake, NAVI_OPENAI_TIMEOUT="0.2")
    await asyncio.wait_for(fake.client_closed.wait(), 5)


async def test_long_retry_after_is_not_waited_for(fake):
    """A retry-after beyond a minute ends the turn at once, saying how long the server asked to wait."""
    fake.push(Fail(429, "quota", {"Retry-After": "3600"}))
    with pytest.raises(ModelServerError, match="asked to retry after 3600 s"):
        await run_in_process(fake)
    assert len(fake.requests) == 1


async def test_bad_setting_fails_to_start(make_server, client):
    """A bad NAVI_OPENAI_* value makes the factory fail: agent_failed_to_start, naming the variable."""
    c = client(make_server("openai", env={"NAVI_OPENAI_MODEL": MODEL, "NAVI_OPENAI_TEMPERATURE": "hot"}))
    sid, ws = await c.open_session()
    events = await run_turn(ws, "hello")
    final = events[-1]
    assert final["type"] == "error" and final["code"] == "agent_failed_to_start"
    assert "NAVI_OPENAI_TEMPERATURE='hot' is not a number from 0 to 2" in final["message"]


# ── what real servers do (issue 19) ──────────────────────────────────────────


async def test_a_status_naming_tools_gets_the_hint_at_once(openai_server, client, fake):
    """llama-server without --jinja answers 500 about tools: the tools hint is given, and nothing is retried."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Fail(500, "tools param requires --jinja flag"), Reply("not reached"))
    message = error_of(await run_turn(ws, "hello"))
    assert "HTTP 500 (tools param requires --jinja flag)" in message and "tried" not in message
    assert "set NAVI_OPENAI_BUILTIN_TOOLS to empty" in message and "--jinja" in message
    assert len(fake.requests) == 1


async def test_an_empty_stream_is_no_answer(openai_server, client, fake):
    """An empty, cleanly ended event stream is 'sent no answer' with the context hint, not a broken stream."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    fake.push(Empty())
    message = error_of(await run_turn(ws, "hello"))
    assert "sent no answer" in message and "does not fit its context" in message
    assert "NAVI_OPENAI_CONTEXT_CHARS" in message and "broke off" not in message


async def test_finish_reason_reaches_stream_end_and_the_history(openai_server, client, fake):
    """stream_end carries the answer's finish_reason (length when cut off, unknown when the server sent none),
    and the saved message keeps it."""
    c = client(openai_server())
    sid, ws = await c.open_session()
    for finish, expected in (("stop", "stop"), ("length", "length"), (None, "unknown")):
        fake.push(Reply("Some words", finish=finish))
        end = (await run_turn(ws, "hello"))[-1]
        assert end["type"] == "stream_end" and end["finish_reason"] == expected, end
        detail = await c.session(sid)
        assert detail["messages"][-1]["status"] == "done"
        assert detail["messages"][-1]["stats"]["finish_reason"] == expected


async def test_tool_schemas_count_against_the_budget(openai_server, client, fake):
    """The tools' JSON schemas, sent with every request, are taken from NAVI_OPENAI_CONTEXT_CHARS first."""
    c = client(openai_server(NAVI_OPENAI_SYSTEM_PROMPT="", NAVI_OPENAI_CONTEXT_CHARS="1500"))
    sid, ws = await c.open_session()
    fake.push(Reply("b" * 200))
    await run_turn(ws, "a" * 200)
    fake.push(Reply("ok"))
    events = await run_turn(ws, "c" * 100)
    # 600 characters of messages fit 1500, but not with the ~1 KB of tool schemas
    (compressed,) = of_type(events, "context_compressed")
    assert "the tools' schemas take" in compressed["summary"]
    assert [m["content"] for m in fake.requests[1].messages] == ["c" * 100]


async def test_the_context_size_comes_from_llama_server(openai_server, client, fake):
    """With no NAVI_OPENAI_CONTEXT_CHARS, the budget is sized from llama-server's GET /props n_ctx at actor
    start, logged, and reported as max_context_tokens."""
    fake.props = {"default_generation_settings": {"n_ctx": 600}, "total_slots": 1}
    server = openai_server(NAVI_OPENAI_BUILTIN_TOOLS="", NAVI_OPENAI_SYSTEM_PROMPT="")
    c = client(server)
    sid, ws = await c.open_session()
    fake.push(Reply("b" * 700))
    end = (await run_turn(ws, "a" * 700))[-1]
    assert end["max_context_tokens"] == 600
    fake.push(Reply("ok"))
    events = await run_turn(ws, "next")
    (compressed,) = of_type(events, "context_compressed")  # 600 tokens: 450 for the prompt, 1350 characters
    assert "the model server's context of 600 tokens (llama-server GET /props n_ctx), about 1350 characters" \
        in compressed["summary"]
    assert "/props" in fake.probes
    log = wait_for_log(server, '"openai.context"')
    assert '"n_ctx": 600' in log and '"context_chars": 1350' in log


def wait_for_log(server, needle: str) -> str:
    return wait_for(lambda: needle in server.log_text() and server.log_text(), what=needle)


async def test_the_context_size_comes_from_ollama(fake):
    """Ollama's /api/show gives num_ctx when the model sets it, else its context_length, at most 4096."""
    fake.show = {"parameters": "stop <eot>\nnum_ctx 8192", "model_info": {"llama.context_length": 131072}}
    agent = OpenAIAgent(*_settings_and_tools(fake))
    try:
        budget = await agent._budget(_race())
        assert budget.n_ctx == 8192 and fake.probes == ["/props", "/api/show"]
        fake.show = {"model_info": {"general.architecture": "llama", "llama.context_length": 131072}}
        agent.budget = None
        assert (await agent._budget(_race())).n_ctx == 4096
    finally:
        await agent.close()


async def test_a_server_slow_to_say_its_context_is_not_waited_for(fake, monkeypatch):
    """The context questions get PROBE_SECONDS in all; past that the configured default is the budget."""
    import navi_actor.agents.openai.loop as loop_module

    monkeypatch.setattr(loop_module, "PROBE_SECONDS", 0.3)
    fake.props, fake.props_delay = {"n_ctx": 100_000}, 30.0
    agent = OpenAIAgent(*_settings_and_tools(fake))
    try:
        t0 = asyncio.get_running_loop().time()
        budget = await agent._budget(_race())
        assert asyncio.get_running_loop().time() - t0 < 5
        assert budget.n_ctx is None and "did not say its context size" in budget.source
    finally:
        await agent.close()


def _settings_and_tools(fake: FakeOpenAI, **env: str):
    settings = Settings.from_env({"NAVI_OPENAI_BASE_URL": fake.url, "NAVI_OPENAI_MODEL": MODEL, **env})
    return settings, load_tools(settings)


def _race() -> StopRace:
    return StopRace(asyncio.Event())


async def test_one_connection_is_reused_across_turns(fake):
    """The actor's requests, turn after turn and after the context probe, go over one kept-alive TCP
    connection, even from a server that ends the body a moment after [DONE]."""
    fake.push(Reply("one", eof_delay=0.2), Reply("two", eof_delay=0.2), Reply("three"))
    settings, tools = _settings_and_tools(fake)
    agent = OpenAIAgent(settings, tools)
    try:
        for _ in range(3):
            turn = Turn("s", "r", "hello", "hello", [], [], [], asyncio.Event(), "")
            [e async for e in agent.run_stream(turn)]
    finally:
        await agent.close()
    peers = {r.peer for r in fake.requests}
    assert len(fake.requests) == 3 and len(peers) == 1, [r.peer for r in fake.requests]


async def test_a_kept_alive_connection_closed_by_the_server_is_tried_again(fake):
    """A request on a connection the server dropped without answering is sent once more, on a new one."""
    fake.push(Drop(), Reply("Made it."))
    events = await run_in_process(fake)
    assert "".join(e.delta for e in events if type(e).__name__ == "TextDelta") == "Made it."
    assert len(fake.requests) == 2
    fake.push(Drop(), Drop())
    with pytest.raises(ModelServerError, match="closed the connection without answering"):
        await run_in_process(fake)
