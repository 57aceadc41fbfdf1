"""A fake OpenAI-compatible Chat Completions server, for the openai agent's tests.

It runs in the test's event loop (aiohttp ``AppRunner`` + ``TCPSite`` on
127.0.0.1, port 0) and answers ``POST /v1/chat/completions`` from a queue of
scripted responses, streaming server-sent events the way the real API does:
``data: {chunk}\\n\\n`` lines with ``chat.completion.chunk`` objects, tool-call
deltas split across chunks by ``index``, ``usage`` in a last chunk with no
choices, then ``data: [DONE]``. It records each request (body, headers, time)
and sets :attr:`FakeOpenAI.client_closed` when a client drops a stream.

Script it with :meth:`FakeOpenAI.push` and the response types below; an empty
queue answers HTTP 500 "fake_openai: nothing scripted".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections import deque
from typing import Any

from aiohttp import web

MODEL = "fake-model"


@dataclasses.dataclass
class Reply:
    """A streamed answer: reasoning, then text, then tool calls, then usage.

    ``tool_calls`` is a list of ``(name, arguments_json_text)``; each call's
    arguments are streamed in fragments of ``arg_piece`` characters.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    usage: tuple[int, int] | None = (11, 7)  # (prompt_tokens, completion_tokens)
    reasoning_field: str = "reasoning_content"
    arg_piece: int = 4
    finish: str | None = "auto"  # the last chunk's finish_reason: "auto" is stop or tool_calls; None sends none
    eof_delay: float = 0.0  # seconds between [DONE] and the body's end, as a server that flushes [DONE] first


@dataclasses.dataclass
class Fail:
    """An HTTP error answer with an OpenAI-style JSON error body."""

    status: int
    message: str = "fake failure"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Cut:
    """Stream ``text``; once ``release`` is set (the test saw the text arrive), drop the
    connection without finishing the body."""

    text: str
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass
class Malformed:
    """Stream ``text``, then a ``data:`` line that is not JSON."""

    text: str
    bad: str = "{this is not json"


@dataclasses.dataclass
class Empty:
    """``200 text/event-stream`` with an empty body, cleanly ended: llama-cpp-python's answer to a
    prompt that overflows its context."""


@dataclasses.dataclass
class Drop:
    """Close the connection on receiving the request, without an answer: what a kept-alive
    connection does when the server closed it while it was idle."""


@dataclasses.dataclass
class Slow:
    """Stream ``w0 w1 …`` every ``interval`` seconds, up to ``count``, noticing a client that goes."""

    interval: float = 0.02
    count: int = 500


@dataclasses.dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    peer: tuple[str, int] | None = None  # the client's address and port: one TCP connection, one peer

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]


def tokens(text: str) -> list[str]:
    """Split text like an LLM streams it: words with their leading space."""
    return re.findall(r"\s*\S+|\s+$", text)


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[Any] = deque()
        self.requests: list[Recorded] = []
        self.client_closed = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._n = 0
        self.props: dict[str, Any] | None = None  # GET /props answers it (llama-server), else 404
        self.show: dict[str, Any] | None = None  # POST /api/show answers it (Ollama), else 404
        self.probes: list[str] = []  # the paths of those requests
        self.props_delay = 0.0  # seconds before /props answers: a server slow to say

    def push(self, *responses: Any) -> None:
        self.script.extend(responses)

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/props", self._about)
        app.router.add_post("/api/show", self._about)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ── chunks as the real API sends them ────────────────────────────────────
    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{self._n}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    def _usage_chunk(self, usage: tuple[int, int]) -> dict[str, Any]:
        prompt, completion = usage
        return {
            "id": f"chatcmpl-fake{self._n}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }

    def reply_chunks(self, r: Reply, include_usage: bool = True) -> list[dict[str, Any]]:
        chunks = [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        for tok in tokens(r.reasoning):
            chunks.append(self._chunk({r.reasoning_field: tok}))
        for tok in tokens(r.text):
            chunks.append(self._chunk({"content": tok}))
        for i, (name, args) in enumerate(r.tool_calls):
            chunks.append(self._chunk({"tool_calls": [
                {"index": i, "id": f"call_{self._n}_{i}", "type": "function",
                 "function": {"name": name, "arguments": ""}}]}))
            for j in range(0, len(args), r.arg_piece):
                chunks.append(self._chunk({"tool_calls": [
                    {"index": i, "function": {"arguments": args[j:j + r.arg_piece]}}]}))
        finish = ("tool_calls" if r.tool_calls else "stop") if r.finish == "auto" else r.finish
        chunks.append(self._chunk({}, finish))
        if include_usage and r.usage is not None:
            chunks.append(self._usage_chunk(r.usage))
        return chunks

    # ── the endpoints ────────────────────────────────────────────────────────
    async def _about(self, request: web.Request) -> web.Response:
        self.probes.append(request.path)
        if request.path == "/props" and self.props_delay:
            await asyncio.sleep(self.props_delay)  # the server's own pace, not a test waiting for a state
        answer = self.props if request.path == "/props" else self.show
        if answer is None:
            raise web.HTTPNotFound()
        return web.json_response(answer)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.requests.append(Recorded(body, dict(request.headers), time.monotonic(),
                                      tuple(peer[:2]) if peer else None))
        self._n += 1
        item = self.script.popleft() if self.script else Fail(500, "fake_openai: nothing scripted")
        if isinstance(item, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if isinstance(item, Fail):
            return web.json_response(
                {"error": {"message": item.message, "type": "fake_error", "param": None, "code": None}},
                status=item.status, headers=item.headers,
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if isinstance(item, Empty):
            await resp.write_eof()
        elif isinstance(item, Reply):
            for chunk in self.reply_chunks(item, include_usage):
                await send(chunk)
            await send("[DONE]")
            if item.eof_delay:
                await asyncio.sleep(item.eof_delay)  # the server's own pace, not a test waiting for a state
            await resp.write_eof()
        elif isinstance(item, (Cut, Malformed)):
            await send(self._chunk({"role": "assistant", "content": ""}))
            for tok in tokens(item.text):
                await send(self._chunk({"content": tok}))
            if isinstance(item, Malformed):
                await send(item.bad)
                await send("[DONE]")
                await resp.write_eof()
            else:
                await asyncio.wait_for(item.release.wait(), 10)
                assert request.transport is not None
                request.transport.close()  # mid-body: the chunked encoding never ends
        elif isinstance(item, Slow):
            await send(self._chunk({"role": "assistant", "content": ""}))
            def gone() -> bool:
                return request.transport is None or request.transport.is_closing()

            try:
                for i in range(item.count):
                    if gone():
                        raise ConnectionResetError
                    await send(self._chunk({"content": f"w{i} "}))
                    deadline = time.monotonic() + item.interval
                    while time.monotonic() < deadline and not gone():  # the model's pace; notice a client that goes
                        await asyncio.sleep(min(0.01, item.interval))
                await send("[DONE]")
                await resp.write_eof()
            except ConnectionResetError:
                self.client_closed.set()
        else:  # pragma: no cover - a test's mistake
            raise TypeError(f"cannot play {item!r}")
        return resp
