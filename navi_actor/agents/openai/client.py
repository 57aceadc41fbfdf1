"""The openai agent's HTTP side: one connection pool per actor, one streamed request at a time.

:class:`ModelClient` posts a request (retrying 429 and 5xx before anything has
streamed), reads the event stream into a :class:`StreamState` and turns every
transport failure into a :class:`ModelServerError` that says what to check.
:class:`StopRace` awaits each step against the turn's stop event, so a stop
closes the response at once and the model server sees the connection go.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, AsyncIterator, Awaitable, TypeVar

import aiohttp

from navi_actor.agents.openai.context import PROBE_SECONDS
from navi_actor.agents.openai.errors import (
    ModelServerError,
    error_text,
    http_error_message,
    names_tools,
    no_answer_message,
    retry_after_seconds,
)
from navi_actor.agents.openai.settings import MAX_BACKOFF, MAX_RETRY_WAIT, Settings
from navi_actor.agents.openai.stream import SSEDecoder, StreamState

T = TypeVar("T")

KEEPALIVE = 60.0  # seconds an idle connection to the model server is kept for the next request
DRAIN_SECONDS = 2.0  # how long to wait for the body's end after [DONE] before giving the connection up
MAX_AFTER_DONE = 64 * 1024  # what may follow [DONE] and still be read to keep the connection
MAX_PROBE_BYTES = 1 << 20  # a /props or /models answer larger than this is not read


class Stopped(Exception):
    """The user asked to stop: unwind and return."""


def _silence(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class StopRace:
    """Await things while watching the turn's stop event; a stop raises :class:`Stopped` at once."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.waiter: asyncio.Task[Any] | None = None

    async def run(self, aw: Awaitable[T]) -> T:
        fut = asyncio.ensure_future(aw)
        if self.event.is_set():
            fut.cancel()
            fut.add_done_callback(_silence)
            raise Stopped
        if self.waiter is None:
            self.waiter = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait((fut, self.waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fut.done():
                fut.cancel()
                fut.add_done_callback(_silence)
        if fut.done() and not fut.cancelled():
            return fut.result()
        raise Stopped

    def close(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()


class ModelClient:
    """Requests to the model server, over one ``aiohttp.ClientSession`` per actor process.

    The session keeps its connection between requests and turns (HTTP
    keep-alive, up to :data:`KEEPALIVE` seconds idle), so an actor talks to
    its server over one TCP connection where the server allows it: a response
    is read to its end before it is released, or the connection could not be
    used again.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The process's HTTP session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            t = self.settings.timeout
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self.settings.api_key:
            h["Authorization"] = f"Bearer {self.settings.api_key}"
        return h

    async def fetch_json(self, method: str, url: str, body: dict[str, Any] | None) -> Any:
        """A small JSON answer (the server's context size, say), or None on any failure.

        Raises ConnectionError when the server cannot be reached. Bounded by
        PROBE_SECONDS; the body is read to its end, so the connection stays usable.
        """
        headers = {"Accept": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        timeout = aiohttp.ClientTimeout(total=min(PROBE_SECONDS, self.settings.timeout))
        try:
            async with self.session().request(method, url, json=body, headers=headers, timeout=timeout) as resp:
                data = b""
                while len(data) <= MAX_PROBE_BYTES:
                    piece = await resp.content.read(MAX_PROBE_BYTES + 1 - len(data))
                    if not piece:
                        break
                    data += piece
                if resp.status != 200 or not resp.content.at_eof():
                    return None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionError(str(exc)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    async def stream(self, body: dict[str, Any], state: StreamState,
                     stop: StopRace) -> AsyncIterator[Any]:
        """One request: yield its events; the response is closed at once on stop or error."""
        resp = await self._open(body, stop)
        clean = False
        try:
            decoder = SSEDecoder()
            while not state.done:
                data = await self._read(resp, state, stop)
                if not data:
                    for payload in decoder.feed(b"\n\n") if decoder.pending() else ():
                        for event in state.feed_data(payload):  # a last event without its blank line
                            yield event
                    self._check_ended(state)
                    break
                for payload in decoder.feed(data):
                    for event in state.feed_data(payload):
                        yield event
                    if state.done:
                        break
            if state.done:
                self._check_ended(state)
            for event in state.end_thinking():
                yield event
            clean = await self._drain(resp, stop)
        finally:
            if clean:
                resp.release()  # the connection goes back to the pool for the next request
            else:
                resp.close()  # the model server sees the connection go and stops generating

    async def _read(self, resp: aiohttp.ClientResponse, state: StreamState, stop: StopRace) -> bytes:
        try:
            return await stop.run(resp.content.readany())
        except aiohttp.ClientPayloadError as exc:
            raise self._cut(state, f"the connection closed before the answer was finished "
                                   f"({type(exc).__name__})") from None
        except asyncio.TimeoutError:
            raise self._cut(state, f"no data for NAVI_OPENAI_TIMEOUT={self.settings.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise self._cut(state, f"{type(exc).__name__}: {exc}") from None

    def _check_ended(self, state: StreamState) -> None:
        """At the stream's end: an empty stream answered nothing; one without its end broke off."""
        if not state.chunks:
            raise ModelServerError(no_answer_message(self.settings))
        if not state.finished:
            raise self._cut(state, "the connection ended before the answer was finished")

    async def _drain(self, resp: aiohttp.ClientResponse, stop: StopRace) -> bool:
        """Read what follows ``[DONE]`` (the body's end) so the connection can be reused; False if it does not come."""
        if resp.content.at_eof():
            return True
        try:
            await stop.run(asyncio.wait_for(resp.content.read(MAX_AFTER_DONE), DRAIN_SECONDS))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return resp.content.at_eof()

    def _cut(self, state: StreamState, detail: str) -> ModelServerError:
        kept = " (the text so far was kept)" if state.text else ""
        return ModelServerError(
            f"the model server's stream broke off mid-answer: {detail}{kept}; check that the model server "
            f"at {self.settings.base_url} is still running, and its logs"
        )

    async def _post(self, url: str, body: dict[str, Any], stop: StopRace) -> aiohttp.ClientResponse:
        """One POST; transport failures become a :class:`ModelServerError` that says what to check.

        A kept-alive connection that the server closed while idle fails at
        once (nothing was sent to the model): that is tried again, once, on a
        new connection.
        """
        s = self.settings
        for fresh in (False, True):
            try:
                return await stop.run(self.session().post(url, json=body, headers=self.headers()))
            except aiohttp.ClientConnectorError as exc:
                raise connect_error(s, exc) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:  # closed, or reset
                if fresh:
                    raise ModelServerError(
                        f"the model server at {s.base_url} closed the connection without answering "
                        f"({type(exc).__name__}); check its logs") from None
            except asyncio.TimeoutError:
                raise ModelServerError(
                    f"the model server at {s.base_url} did not answer within NAVI_OPENAI_TIMEOUT="
                    f"{s.timeout:g} s; is it overloaded, or still loading the model?"
                ) from None
            except aiohttp.ClientError as exc:
                raise ModelServerError(
                    f"the request to the model server at {s.base_url} failed: {type(exc).__name__}: {exc}"
                ) from None
        raise AssertionError("unreachable")

    async def _open(self, body: dict[str, Any], stop: StopRace) -> aiohttp.ClientResponse:
        """POST the request, retrying 429 and 5xx answers (nothing has streamed yet).

        An answer whose message names tools is not retried: the server cannot
        take them, and asking again will not change that.
        """
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            resp = await self._post(s.url, body, stop)
            if resp.status == 200:
                ctype = resp.headers.get("Content-Type", "")
                if "json" in ctype:
                    text = await self._body(resp, stop)
                    raise ModelServerError(
                        f"the model server at {s.base_url} answered with JSON instead of an event stream "
                        f"({error_text(text)}); does it support stream: true?"
                    )
                return resp
            text = await self._body(resp, stop)
            retryable = (resp.status == 429 or resp.status >= 500) and not names_tools(text)
            if not retryable or attempt > s.retries:
                raise ModelServerError(http_error_message(resp.status, text, s, attempt))
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if wait is None:
                wait = min(s.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            elif wait > MAX_RETRY_WAIT:
                raise ModelServerError(
                    http_error_message(resp.status, text, s, attempt)
                    + f"; it asked to retry after {wait:.0f} s, longer than the {MAX_RETRY_WAIT:.0f} s this agent waits"
                )
            await stop.run(asyncio.sleep(wait))

    async def _body(self, resp: aiohttp.ClientResponse, stop: StopRace) -> str:
        """Up to 4 KiB of an error body; the response is closed."""
        try:
            data = await stop.run(resp.content.read(4096))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            data = b""
        finally:
            resp.close()
        return data.decode("utf-8", errors="replace")


def connect_error(settings: Settings, exc: aiohttp.ClientConnectorError) -> ModelServerError:
    """The model server cannot be reached: the OS's reason ("Connection refused"), or the sandbox's port rule."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, PermissionError):  # Landlock refused the port
        return ModelServerError(
            f"cannot connect to the model server at {settings.base_url}: the sandbox does not allow "
            f"connecting to port {exc.port}; add it to the server's --sandbox-net-connect"
        )
    return ModelServerError(
        f"cannot connect to the model server at {settings.base_url} ({os_reason(os_error, exc)}); "
        "is it running? Set NAVI_OPENAI_BASE_URL to its address"
    )


def os_reason(os_error: OSError | None, exc: BaseException) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('127.0.0.1', 9)``."""
    if os_error is not None and os_error.errno:
        return os.strerror(os_error.errno)
    return str(getattr(os_error, "strerror", None) or os_error or exc)
