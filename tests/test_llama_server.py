"""The openai agent against a real model server: llama-cpp-python's, on a tiny random-weight model.

Our fake server (tests/fake_openai.py) behaves as we assumed real servers do;
this tier finds where they do not. The server is built once by
scripts/ensure-llama (run by scripts/test) and cached; the model is written by
tests/tiny_gguf.py, so nothing is downloaded. Without the build, every test
here is skipped with the reason.

The tiny model never ends an answer by itself: an answer ends at
NAVI_OPENAI_MAX_TOKENS (``finish_reason: "length"``). llama-cpp-python streams
it at about a hundred tokens a second, so a long answer leaves time to stop or
to kill the server in the middle of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import receive_until, run_turn, text_of, wait_for

LLAMA_HOME = Path(os.environ.get("NAVI_LLAMA_HOME")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "navi-actor" / "llama")
LLAMA_PYTHON = LLAMA_HOME / "current" / "bin" / "python"
FINAL = ("stream_end", "stream_stopped", "error")
LONG = "3000"  # max_tokens of an answer that runs for tens of seconds unless stopped


def _why_not_built() -> str | None:
    if LLAMA_PYTHON.exists():
        return None
    failed = LLAMA_HOME / "FAILED"
    detail = failed.read_text(errors="replace").strip() if failed.exists() else "scripts/ensure-llama has not run"
    return f"no llama-cpp-python server at {LLAMA_PYTHON} (scripts/ensure-llama builds it): {detail}"


pytestmark = pytest.mark.skipif(_why_not_built() is not None, reason=_why_not_built() or "")
LLAMA_CPP_SERVER = LLAMA_HOME / "server-current" / "bin" / "llama-server"


def _why_no_llama_server() -> str | None:
    if LLAMA_CPP_SERVER.exists():
        return None
    failed = LLAMA_HOME / "SERVER_FAILED"
    detail = failed.read_text(errors="replace").strip() if failed.exists() else "scripts/ensure-llama has not built it"
    return f"no llama.cpp llama-server at {LLAMA_CPP_SERVER}: {detail}"


needs_llama_server = pytest.mark.skipif(_why_no_llama_server() is not None, reason=_why_no_llama_server() or "")


class LlamaServer:
    """``python -m llama_cpp.server`` (or llama.cpp's ``llama-server`` with ``cpp=[flags]``) on 127.0.0.1,
    its output in a log file."""

    def __init__(self, model: Path, log: Path, n_ctx: int, cpp: list[str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log
        self.log = open(log, "ab")
        if cpp is None:
            cmd = [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny",
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "1"]
            env = None
        else:
            cmd = [str(LLAMA_CPP_SERVER), "-m", str(model), "--alias", "tiny", "--host", "127.0.0.1",
                   "--port", str(self.port), "-c", str(n_ctx), "-t", "1", *cpp]
            env = {**os.environ, "LD_LIBRARY_PATH": str(LLAMA_CPP_SERVER.parent)}  # its libraries sit beside it
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        wait_for(self._ready, 60, "the llama server to answer")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the llama server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "/models", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_gguf import write_model

    return write_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One server shared by the module's tests that leave it running."""
    server = LlamaServer(tiny_model, tmp_path_factory.mktemp("llama") / "llama.log", n_ctx=4096)
    yield server
    server.kill()


@pytest.fixture
def own_llama(tiny_model: Path, tmp_path: Path) -> Iterator[Any]:
    """``own_llama(n_ctx)``: a server of the test's own, to kill or to overflow."""
    started: list[LlamaServer] = []

    def start(n_ctx: int = 4096, cpp: list[str] | None = None) -> LlamaServer:
        started.append(LlamaServer(tiny_model, tmp_path / f"llama{len(started)}.log", n_ctx, cpp))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def navi(make_server: Any, llama: LlamaServer, **env: str) -> Any:
    base = {
        "NAVI_OPENAI_BASE_URL": llama.url,
        "NAVI_OPENAI_MODEL": "tiny",
        "NAVI_OPENAI_MAX_TOKENS": "8",
        "NAVI_OPENAI_TEMPERATURE": "0",
        "NAVI_OPENAI_RETRY_BACKOFF": "0.01",
        # the actors may connect to the model server's port (the sandbox refuses others)
        "NAVI_SANDBOX_NET_CONNECT": str(llama.port),
    }
    return make_server("openai", env={**base, **env}, args=["--stop-grace", "3"])


def error_message(events: list[dict[str, Any]]) -> str:
    final = events[-1]
    assert final["type"] == "error" and final["code"] == "model_server_error", final
    return final["message"]


def complete(llama: LlamaServer, content: str) -> dict[str, Any]:
    """A short request of another client, straight to the server."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2})
    req = urllib.request.Request(llama.url + "/chat/completions", body.encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def client_ports(llama: LlamaServer, since: int) -> list[int]:
    """The client port of each request in the server's access log after offset ``since``."""
    return [int(p) for p in re.findall(r"INFO: +127\.0\.0\.1:(\d+) - \"", llama.log_text()[since:])]


async def test_a_streamed_turn_then_a_second_with_history(make_server, client, llama):
    """A turn streams the model's words and ends at max_tokens as 'length'; the second turn's prompt holds
    the first turn, and both go over one kept-alive connection."""
    since = len(llama.log_text())
    c = client(navi(make_server, llama, NAVI_OPENAI_SYSTEM_PROMPT="Be brief."))
    sid, ws = await c.open_session()
    first = await run_turn(ws, "the way of water", timeout=30)
    end = first[-1]
    assert end["type"] == "stream_end", end
    deltas = [e for e in first if e["type"] == "stream_delta"]
    assert len(deltas) >= 4 and text_of(first) == end["content"] and end["content"].strip()
    assert end["finish_reason"] == "length"
    assert end["max_context_tokens"] is None  # llama-cpp-python does not say its context size

    second = await run_turn(ws, "and then", timeout=30)
    assert second[-1]["type"] == "stream_end" and second[-1]["finish_reason"] == "length"
    detail = await c.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["messages"][1]["stats"]["finish_reason"] == "length"
    log = llama.log_text()[since:]
    # the second prompt holds the first turn: llama.cpp reuses its cached prefix ("prefix-match hit")
    prompts = [int(n) for n in re.findall(r"prompt eval time = .*?/\s*(\d+) tokens", log)]
    hits = re.findall(r"(\d+) prefix-match hit", log)
    assert prompts and hits and int(hits[-1]) > len("the way of water") // 2, log[-2000:]
    ports = client_ports(llama, since)
    assert len(ports) >= 5 and len(set(ports)) == 1, ports  # the probes and both turns: one connection


async def test_stop_closes_the_upstream_request(make_server, client, llama):
    """Stop mid-answer ends the turn at once, and the server's log shows the client went away."""
    since = len(llama.log_text())
    c = client(navi(make_server, llama, NAVI_OPENAI_MAX_TOKENS=LONG))
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "talk"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta", timeout=30)
    assert (await c.stop(sid))["ok"] is True
    rest = await receive_until(ws, lambda e: e["type"] in FINAL, timeout=10)
    assert rest[-1]["type"] == "stream_stopped" and rest[-1]["stop_step"] == "event"
    assert text_of(seen + rest) == rest[-1]["content"]
    wait_for(lambda: "Disconnected from client" in llama.log_text()[since:], 10, "the server to log the cancel")


async def test_a_second_request_cuts_the_running_answer_off(make_server, client, llama):
    """llama-cpp-python ends a running stream with [DONE] and no finish reason when another request comes:
    the cut-off answer is reported as finish_reason 'unknown', not as complete. The server sends that
    [DONE] and cancels the stream in the same step, so on a busy machine the connection may close
    before the [DONE] is written: the answer is then reported as broken off, not as complete either."""
    server = navi(make_server, llama, NAVI_OPENAI_MAX_TOKENS=LONG)
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "talk"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta", timeout=30)
    other = await asyncio.to_thread(complete, llama, "hello")  # someone else's request
    assert other["choices"][0]["finish_reason"] == "length"
    rest = await receive_until(ws, lambda e: e["type"] in FINAL, timeout=30)
    end = rest[-1]
    detail = await c.session(sid)
    if end["type"] == "error":  # the close overtook the [DONE]
        assert end["code"] == "model_server_error" and "broke off mid-answer" in end["message"], end
        assert detail["messages"][-1]["status"] == "failed"
        return
    assert end["type"] == "stream_end" and end["finish_reason"] == "unknown", end
    assert detail["messages"][-1]["stats"]["finish_reason"] == "unknown"


async def test_the_server_killed_mid_answer(make_server, client, own_llama):
    """A server killed while it streams ends the turn with 'broke off mid-answer'; the text so far is saved."""
    llama = own_llama()
    c = client(navi(make_server, llama, NAVI_OPENAI_MAX_TOKENS=LONG))
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "talk"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta", timeout=30)
    llama.kill()
    rest = await receive_until(ws, lambda e: e["type"] in FINAL, timeout=15)
    message = error_message(seen + rest)
    assert "broke off mid-answer" in message and "the text so far was kept" in message
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    assert detail["messages"][-1]["status"] == "failed"
    assert detail["messages"][-1]["content"] == text_of(seen + rest) != ""
    again = error_message(await run_turn(ws, "still there?", timeout=15))
    assert "(Connection refused)" in again


async def test_a_prompt_that_overflows_the_context(make_server, client, own_llama):
    """llama-cpp-python answers an overflowing prompt with an empty stream: 'sent no answer', with the hint."""
    llama = own_llama(n_ctx=256)
    c = client(navi(make_server, llama, NAVI_OPENAI_CONTEXT_CHARS="100000"))
    sid, ws = await c.open_session()
    message = error_message(await run_turn(ws, "word " * 400, timeout=30))
    assert "sent no answer" in message and "NAVI_OPENAI_CONTEXT_CHARS" in message
    wait_for(lambda: "exceed context window of 256" in llama.log_text(), 10, "the server to log the overflow")


async def test_the_default_budget_fits_a_2048_token_server(make_server, client, own_llama):
    """With the defaults (tools on, no NAVI_OPENAI_CONTEXT_CHARS), a session of long messages still fits
    llama-cpp-python's default context of 2,048 tokens turn after turn: the history is cut, no turn fails."""
    llama = own_llama(n_ctx=2048)
    c = client(navi(make_server, llama))
    sid, ws = await c.open_session()
    long_message = "tell me about the water " * 100  # 2,400 characters, about 600 tokens
    compressed = 0
    for i in range(4):
        events = await run_turn(ws, f"turn {i}: {long_message}", timeout=60)
        assert events[-1]["type"] == "stream_end", (i, events[-1])
        compressed += any(e["type"] == "context_compressed" for e in events)
    assert compressed  # the budget did cut the history


async def test_tools_with_a_server_whose_template_has_none(make_server, client, llama):
    """llama-cpp-python with a chat template that knows no tools takes the request with tools and answers in
    text (it does not refuse them as llama-server without --jinja does): the turn simply ends."""
    c = client(navi(make_server, llama))
    sid, ws = await c.open_session()
    events = await run_turn(ws, "what is 2 + 2?", timeout=30)
    assert events[-1]["type"] == "stream_end" and not [e for e in events if e["type"] == "tool_call"]


# ── llama.cpp's own llama-server ─────────────────────────────────────────────


@needs_llama_server
async def test_llama_server_without_jinja_refuses_tools(make_server, client, own_llama):
    """llama-server started without --jinja answers HTTP 500 'tools param requires --jinja flag': the turn
    ends at once with the tools hint, after one request, not after retries."""
    llama = own_llama(n_ctx=1024, cpp=["--no-jinja", "--chat-template", "chatml"])  # ours needs --jinja
    c = client(navi(make_server, llama, NAVI_OPENAI_RETRY_BACKOFF="0.5"))
    sid, ws = await c.open_session()
    message = error_message(await run_turn(ws, "what is 2 + 2?", timeout=30))
    assert "HTTP 500 (tools param requires --jinja flag)" in message and "tried" not in message
    assert "set NAVI_OPENAI_BUILTIN_TOOLS to empty" in message and "started with --jinja" in message
    assert llama.log_text().count("tools param requires --jinja flag") == 1  # asked once, not retried
    c2 = client(navi(make_server, llama, NAVI_OPENAI_BUILTIN_TOOLS=""))
    sid2, ws2 = await c2.open_session()
    assert (await run_turn(ws2, "what is 2 + 2?", timeout=30))[-1]["type"] == "stream_end"  # as the hint says


@needs_llama_server
async def test_llama_server_says_its_context_size(make_server, client, own_llama):
    """The budget is sized from llama-server's /props n_ctx (one slot's), logged at actor start, and
    stream_end reports it as max_context_tokens."""
    llama = own_llama(n_ctx=2048, cpp=["--parallel", "2"])  # two slots of 1,024 tokens
    server = navi(make_server, llama)
    c = client(server)
    sid, ws = await c.open_session()
    end = (await run_turn(ws, "tell me about the water", timeout=30))[-1]
    assert end["type"] == "stream_end" and end["max_context_tokens"] == 1024, end
    assert end["finish_reason"] == "length" and end["context_tokens"] > 0
    line = wait_for(lambda: next((ln for ln in server.log_text().splitlines() if '"openai.context"' in ln), None),
                    10, "the openai.context log line")
    assert '"n_ctx": 1024' in line and "llama-server GET /props n_ctx" in line
