"""The front's way to the session store: one thread, and group commit.

Store calls are blocking (SQLite, an fsync per commit), so they run on a
thread of their own. Calls made while a batch is being written wait in a
queue; when the batch is done, everything queued goes to the store as the
next batch, which `SessionStore.batch` commits together (one fsync). One
call alone is as fast as before; a thousand turns starting at once share a
few commits instead of queuing for a thousand.

The queue also knows the store's health, from the outcomes it hands back:
a call that fails inside the database (`StoreFailure`: the disk is full, an
I/O error) makes the store *failing*; the next write that succeeds makes it
healthy again. Failures are counted by the store method that failed. Which
exceptions are the database's own is the backend's to say
(`SessionStore.failure`): this module does not know the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import time
from typing import Any, Callable, TypeVar

from navi_actor import logs
from navi_actor.store import SessionStore, StoreError, StoreFailure

T = TypeVar("T")
log = logs.get("navi.front.store")

#: Store methods whose success says nothing of whether the store can write: reads, and
#: the start-up recovery, which most often has nothing to write.
NOT_PROOF_OPS = frozenset({"get_session", "list_sessions", "get_session_detail", "history", "running_runs",
                           "recover_interrupted"})


class StoreQueue:
    def __init__(self, backend: SessionStore, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.batches = 0  #: batches written (for metrics and tests)
        self.calls = 0  #: calls made through them
        self.failures: dict[str, int] = {}  #: store method → calls that failed in the database
        self.failing: StoreFailure | None = None  #: the failure since which no write succeeded
        self.failing_since: float | None = None  #: when (unix time) it began

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a store method) on the store thread; its result or its exception.

        A caller that is cancelled does not cancel the call: it may already be written.
        """
        return await self.submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """:meth:`call`, handed to the store thread now; await the future it returns.

        Raises StoreError at once when the store is closed.
        """
        if self._closed:
            raise StoreError("the session store is closed (the server is shutting down)")
        fut: asyncio.Future[T] = self.loop.create_future()
        self._queue.append((functools.partial(fn, *args, **kwargs), fut))
        if not self._busy:
            self._next_batch()
        return fut

    def _next_batch(self) -> None:
        batch, self._queue = self._queue, []
        self._busy = True
        self._idle.clear()
        self.batches += 1
        self.calls += len(batch)
        calls = [call for call, _fut in batch]
        # The loop's context (the log's role and pid) for the store thread and for the callback.
        job = self._executor.submit(contextvars.copy_context().run, self.backend.batch, calls)
        ctx = contextvars.copy_context()
        job.add_done_callback(lambda job: self.loop.call_soon_threadsafe(self._done, batch, job, context=ctx))

    def _done(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
              job: concurrent.futures.Future[list[tuple[bool, Any]]]) -> None:
        try:
            outcomes = job.result()
        except Exception as exc:  # batch() itself failed: every call fails with it
            outcomes = [(False, exc)] * len(batch)
        self._note_health(batch, outcomes)
        for (_call, fut), (ok, value) in zip(batch, outcomes):
            if fut.done():
                continue  # its caller was cancelled
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if self._queue:
            self._next_batch()
        else:
            self._busy = False
            self._idle.set()

    def _note_health(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
                     outcomes: list[tuple[bool, Any]]) -> None:
        failed: StoreFailure | None = None
        wrote = False
        for (call, _fut), (ok, value) in zip(batch, outcomes):
            op = getattr(getattr(call, "func", call), "__name__", "call")
            if ok:
                wrote = wrote or op not in NOT_PROOF_OPS
                continue
            failure = self.backend.failure(value, op)
            if failure is not None:
                self.failures[failure.op] = self.failures.get(failure.op, 0) + 1
                failed = failure
        if failed is not None:  # a failure wins over the writes that succeeded beside it
            if self.failing is None:
                self.failing_since = time.time()
                log.error("store.failing", op=failed.op, error=failed.reason)
            self.failing = failed
        elif wrote and self.failing is not None:
            log.info("store.recovered", failing_for=round(time.time() - (self.failing_since or 0), 3),
                     error=self.failing.reason)
            self.failing = self.failing_since = None

    async def close(self) -> None:
        """Let queued calls finish, then stop the thread and close the store."""
        self._closed = True
        await self._idle.wait()
        self._executor.shutdown(wait=True)
        self.backend.close()
