"""What the front does while the session store cannot write (a full disk, an I/O error).

- A turn whose result cannot be written still ends for its viewers: with an
  ``error`` event, code ``store_error``, saying why. The result is kept
  (:mod:`navi_actor.front.unsaved`, bounded) and the actor keeps its
  ``turn_done`` (it is not told ``persisted``), so a front restart gets it
  again too.
- New turns are refused with ``store_error`` before anything is written
  while the store is failing, and in a session whose last answer waits.
- Every tick while something is wrong, the kept results are retried (oldest
  first, until the first failure, with no time limit), then the store is
  probed with a write that changes nothing. The first write that succeeds
  makes the store healthy again: no restart is needed.
- ``/healthz`` and ``/metrics`` read :meth:`StoreKeeper.health` and the
  store queue's failure counts.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar

from navi_actor import logs, protocol
from navi_actor.front.runs import LOST_IN_RESTART, Run, RunViewer
from navi_actor.front.storeq import StoreQueue
from navi_actor.front.unsaved import Unsaved, UnsavedResults
from navi_actor.protocol import ClientError
from navi_actor.store import SessionStore, StoreError, StoreFailure

log = logs.get("navi.front")
T = TypeVar("T")


class Runtime(Protocol):
    """What the keeper reaches of the runtime (:class:`navi_actor.front.runtime.Runtime`)."""

    loop: asyncio.AbstractEventLoop
    store_queue: StoreQueue
    store_backend: SessionStore
    runs: Mapping[str, Run]  # session id → its running turn
    viewers: Mapping[str, Iterable[RunViewer]]  # session id → its connected viewers

    async def store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


class StoreKeeper:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.unsaved = UnsavedResults()
        self.refused = 0  #: turns refused because the store could not write
        self.recover_pending = False  #: the start-up recovery of lost runs failed; retried here
        self._task: asyncio.Task[None] | None = None

    @property
    def failing(self) -> StoreFailure | None:
        return self.rt.store_queue.failing

    def health(self) -> dict[str, Any]:
        """The store as ``/healthz`` reports it: ``ok`` is false while it cannot write everything."""
        q = self.rt.store_queue
        failing = q.failing
        oldest = next(iter(self.unsaved), None)
        return {
            "ok": failing is None and not self.unsaved and not self.recover_pending,
            "error": failing.reason if failing is not None else oldest.reason if oldest is not None else None,
            "op": failing.op if failing is not None else "finish_run" if oldest is not None else None,
            "failing_since": q.failing_since,
            "unsaved_results": len(self.unsaved),
            "unsaved_bytes": self.unsaved.bytes,
        }

    def refuse_if_cannot_write(self, sid: str) -> None:
        """Raise ClientError(store_error) while the store cannot write, or this session's answer waits."""
        failing = self.failing
        if self.unsaved.waiting_in(sid):
            self.refused += 1
            reason = failing.reason if failing is not None else "it is being written"
            raise ClientError(
                protocol.STORE_ERROR,
                f"Your message was not saved and no turn started: the previous answer in this session "
                f"is not saved yet ({reason}). The server keeps retrying; send your message again "
                "once it is saved.",
            )
        if failing is not None:
            self.refused += 1
            raise ClientError(
                protocol.store_code(failing),
                f"Your message was not saved and no turn started: the server cannot write to its session "
                f"store right now ({failing.reason}). Send it again once the server has recovered "
                "(GET /healthz says so).",
            )

    def keep(self, run: Run, final: dict[str, Any], saved: dict[str, Any], exc: StoreFailure) -> dict[str, Any]:
        """Keep a result ``finish_run`` could not write; return the ``error`` event that ends its turn."""
        item = Unsaved(run.run_id, run.session_id, final["seq"], saved, exc.reason, actor=run.actor)
        for reduced in self.unsaved.add(item):
            log.warning("front.unsaved_reduced", run_id=reduced.run_id, session_id=reduced.session_id,
                        unsaved_bytes=self.unsaved.bytes, max_bytes=self.unsaved.max_bytes)
            self._release(reduced)
        log.error("front.finish_failed", session_id=run.session_id, run_id=run.run_id, error=exc.reason,
                  kept=not item.reduced, unsaved_results=len(self.unsaved))
        if item.reduced:
            kept = ("It is too large to keep for a retry: only the text saved during the turn will be kept, "
                    "once the store can write again.")
        else:
            kept = ("The server keeps it and saves it as soon as the store can write again; "
                    "reload the conversation then to see it.")
        return protocol.error_event(f"The answer could not be saved: {exc.reason}. {kept}",
                                    protocol.STORE_ERROR, final["seq"], run_id=run.run_id)

    def _release(self, item: Unsaved) -> None:
        """The front no longer needs the actor's copy of this result: the actor may forget it."""
        actor, item.actor = item.actor, None
        if actor is not None and actor.alive:
            actor.send({"op": "persisted", "run_id": item.run_id})

    def tick(self) -> None:
        """From the runtime's ticker: start a retry unless one is under way or nothing is wrong."""
        if self._task is not None and not self._task.done():
            return
        if self.unsaved or self.recover_pending or self.failing is not None:
            self._task = self.rt.loop.create_task(self.retry())

    async def retry(self) -> None:
        """Retry kept results (oldest first; stop at the first failure), the recovery, then probe."""
        rt = self.rt
        for item in self.unsaved:
            try:
                await rt.store(rt.store_backend.finish_run, item.run_id, last_seq=item.last_seq, **item.result)
            except StoreFailure as exc:
                item.tries += 1
                item.reason = exc.reason
                return
            except StoreError as exc:  # already written (by a former front) or gone with its session
                log.warning("front.unsaved_dropped", run_id=item.run_id, error=str(exc))
            else:
                log.info("front.result_saved", session_id=item.session_id, run_id=item.run_id,
                         tries=item.tries, reduced=item.reduced)
            self.unsaved.remove_run(item.run_id)
            self._release(item)
            for viewer in rt.viewers.get(item.session_id, ()):
                if viewer.run is None:
                    viewer.send(protocol.SESSION_SYNC)  # the history has the answer now
        if self.recover_pending:
            keep = [run.run_id for run in rt.runs.values()] + [item.run_id for item in self.unsaved]
            try:
                lost = await rt.store(rt.store_backend.recover_interrupted, LOST_IN_RESTART, keep=keep)
            except StoreError:
                return
            self.recover_pending = False
            log.info("front.recovered_lost_runs", interrupted=len(lost))
        if self.failing is not None:
            try:
                await rt.store(rt.store_backend.probe)
            except StoreError:
                pass

    async def close(self) -> None:
        """At shutdown: one last try; what is left is marked "interrupted" by the next start."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.unsaved:
            await self.retry()
        if self.unsaved:
            log.error("front.results_unsaved", runs=[item.run_id for item in self.unsaved],
                      error=self.failing.reason if self.failing is not None else None)
