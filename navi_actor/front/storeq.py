"""The front's way to the session store: one thread, and group commit.

Store calls are blocking (SQLite, an fsync per commit), so they run on a
thread of their own. Calls made while a batch is being written wait in a
queue; when the batch is done, everything queued goes to the store as the
next batch, which `SessionStore.batch` commits together (one fsync). One
call alone is as fast as before; a thousand turns starting at once share a
few commits instead of queuing for a thousand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable, TypeVar

from navi_actor.store import SessionStore, StoreError

T = TypeVar("T")


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
        job = self._executor.submit(self.backend.batch, calls)
        job.add_done_callback(lambda job: self.loop.call_soon_threadsafe(self._done, batch, job))

    def _done(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
              job: concurrent.futures.Future[list[tuple[bool, Any]]]) -> None:
        try:
            outcomes = job.result()
        except Exception as exc:  # batch() itself failed: every call fails with it
            outcomes = [(False, exc)] * len(batch)
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

    async def close(self) -> None:
        """Let queued calls finish, then stop the thread and close the store."""
        self._closed = True
        await self._idle.wait()
        self._executor.shutdown(wait=True)
        self.backend.close()
