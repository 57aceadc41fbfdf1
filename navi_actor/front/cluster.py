"""The front's part in a cluster of nodes sharing one PostgreSQL store.

With a PostgreSQL store (``--store postgresql://…``), the front runs this
node's membership (`navi_actor.store.open_cluster`: heartbeat, sweeper, the
listener of stop/kill requests) and answers it:

- **the lease is lost** (this node could not renew it for a whole
  ``--lease-ttl``: it was paused, or cut off): every turn this node runs is
  stopped, with reason ``lease_lost``. Another node may already have ended
  them as ``interrupted`` and taken their sessions; their late results are
  refused by the store (`LeaseLost`), so the history keeps the new owner's.
- **another node asks** for a stop (``POST /sessions/ID/stop`` there) or a
  kill (``POST /runs/ID/kill`` there) of a turn that runs here: it is done
  here as if asked here, and the outcome goes back to the caller. It may
  also say that it queued (or cancelled) a message of a session whose turn
  runs here, or queued one to interrupt it (:mod:`navi_actor.front.elsewhere`):
  the session's queue is read again, and its head runs when the turn ends.
- **this node is asked** to stop or kill a turn that runs elsewhere: the
  request goes to its owner (`request`), and the caller learns whether it
  was delivered.
- **this node's sweeper ended a dead node's turns**: the messages queued in
  their sessions start here (the dead node had counted them).

With SQLite there is one node and nothing of this runs (`FrontCluster.open`
gives None).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from navi_actor import logs
from navi_actor.front import elsewhere
from navi_actor.store import open_cluster

if TYPE_CHECKING:
    from navi_actor.config import Config
    from navi_actor.front.runtime import Runtime

log = logs.get("navi.front.cluster")
LEASE_LOST = "lease_lost"  #: the stop reason of turns this node stopped because it lost their lease
CONTROL_WAIT = 10.0  #: seconds the listener waits for this front to carry out a request


class FrontCluster:
    def __init__(self, runtime: Runtime, config: Config, url: str) -> None:
        self.rt = runtime
        self.loop = runtime.loop
        self.node_id = config.node_id
        self.node = open_cluster(config.store or None, config.node_id, lease_ttl=config.lease_ttl,
                                 advertise_url=url, on_lost=self._on_lost, on_control=self._on_control,
                                 on_swept=self._on_swept)
        self.lost = 0  #: turns stopped because their lease was lost
        self._lost_for: float | None = None  #: the last heartbeat for which the watchdog stopped the turns

    @classmethod
    def open(cls, runtime: Runtime, config: Config, url: str) -> FrontCluster | None:
        """This node's membership, started; None with a store that only one node uses (SQLite).

        ``url`` is where this node serves (``http://HOST:PORT``), shown with its turns.
        """
        cluster = cls(runtime, config, url)
        if cluster.node is None:
            return None
        cluster.node.start()
        log.info("cluster.joined", node=config.node_id, lease_ttl=config.lease_ttl)
        cluster.loop.call_later(cluster.node.beat_every, cluster._watchdog)
        return cluster

    def close(self) -> None:
        self.node.close()

    def _watchdog(self) -> None:
        """Stop this node's turns once its last heartbeat is older than the lease TTL, from the front's loop.

        The heartbeat thread checks this too, but only between beats: cut off from PostgreSQL, its
        write can hang until TCP gives up (keepalives: 11 s), far past a short TTL. This check needs
        no database, so a node cut off stops its turns within a beat of its lease's end."""
        if self.node._closing.is_set():
            return
        last, ttl = self.node.last_beat, self.node.lease_ttl
        if last is not None and time.monotonic() - last > ttl and self._lost_for != last:
            self._lost_for = last
            gap = time.monotonic() - last
            log.error("cluster.lease_lost", node=self.node_id, seconds_since_heartbeat=round(gap, 1), by="watchdog")
            self._stop_all(f"this node could not renew its lease for {gap:.1f} s (TTL {ttl:g} s)")
        self.loop.call_later(self.node.beat_every, self._watchdog)

    # -- called from the cluster's threads ---------------------------------

    def _on_lost(self, reason: str) -> None:
        self.loop.call_soon_threadsafe(self._stop_all, reason)

    def _stop_all(self, reason: str) -> None:
        for sid, run in list(self.rt.runs.items()):
            if run.stop_reason is not None and run.stop_reason.get("code") == LEASE_LOST:
                continue  # stopped for this already (by the watchdog or the heartbeat thread)
            if self.rt.stop(sid, {"code": LEASE_LOST, "message": f"This turn was stopped: {reason}; another "
                                  "node may have taken the session over."}):
                self.lost += 1
                log.error("cluster.turn_stopped", session_id=sid, reason=reason)

    def _on_swept(self, sessions: list[str]) -> None:
        """This node's sweeper ended a dead node's turns: their sessions' queued messages start here."""
        for sid in sessions:
            asyncio.run_coroutine_threadsafe(self._adopt_queue(sid), self.loop)

    async def _adopt_queue(self, sid: str) -> None:
        try:
            await self.rt.queueing.reread(sid)
        except Exception as exc:  # noqa: BLE001 — a later start (or this node's restart) runs them
            log.warning("cluster.queue_adopt_failed", session_id=sid, error=str(exc))

    def _on_control(self, req: dict[str, Any]) -> str:
        return asyncio.run_coroutine_threadsafe(self._control(req), self.loop).result(CONTROL_WAIT)

    async def _control(self, req: dict[str, Any]) -> str:
        sid, op = req["session_id"], req["op"]
        if op in (elsewhere.QUEUE_CHANGED, elsewhere.INTERRUPT):  # another node queued a message of it
            return await self.rt.queueing.from_elsewhere(sid, op)
        run = self.rt.runs.get(sid)
        if run is None or (req.get("run_id") and run.run_id != req["run_id"]):
            return "no active run"
        if op == "stop":
            return "stopping" if self.rt.stop(sid) else "no active run"
        reply = await self.rt.control({"op": "kill" if op == "kill" else "stop", "session_ids": [sid]})
        results = reply.get("results") or [{}]
        return str(results[0].get("outcome", "no active run"))

    # -- asked here, for a turn elsewhere ------------------------------------

    async def request(self, session_id: str, op: str) -> dict[str, Any]:
        """Stop or kill the session's turn on the node that runs it: ``{"delivered", "node", ...}``."""
        return await self.loop.run_in_executor(None, self.node.request, session_id, op)

    async def stop_and_wait(self, session_id: str, timeout: float) -> bool:
        """Stop the session's turn on whichever node runs it; True once none runs (or none did)."""
        out = await self.request(session_id, "stop")
        if not out["delivered"] and "node" not in out:
            return True  # no other node runs one
        return await self.loop.run_in_executor(None, self.node.wait_ended, session_id, timeout)

    async def running(self) -> list[dict[str, Any]]:
        """The running turns of every live node, each with its ``node``."""
        return await self.loop.run_in_executor(None, self.node.running)
