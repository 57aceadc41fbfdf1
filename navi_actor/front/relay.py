"""Serving a client from the node that runs its session's turn (nodes sharing a PostgreSQL store).

A balancer hashes on the session id, but hashing is not ownership: a client
may reach a node that does not run its session's turn (a node joined or left,
or the balancer is not session-aware). That node then relays the turn from
its owner: it opens the same WebSocket there (``/ws/sessions/ID?after=…``),
authenticated as a node with the cluster secret
(:mod:`navi_actor.front.relayauth`), and

- forwards the owner's frames to the client as they are (the same events, the
  same ``seq``, the replay from the turn's start, ``session_sync`` at its end),
  through the client's own :class:`~navi_actor.front.viewer.Viewer`, so a slow
  client is bounded and told where to resume as with a direct one;
- forwards the client's messages to the owner, where the busy guard, the busy
  policies and the rate limit apply as to its own clients.

When the owner closes the connection, the close (code and reason) goes to the
client. When the owner stops answering (killed, paused, cut off) or cannot be
reached, the client is sent an ``error`` ``node_lost`` naming the node and the
cause; if a turn was streaming, a ``session_sync`` follows once that turn is
ended (another node's sweeper marks it ``interrupted`` within the lease TTL +
5 s), and from then on this node serves the connection itself. A relayed
viewer never waits without bound.

The store is asked who runs the turn once per connection, never per event.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from navi_actor import logs, protocol
from navi_actor.front import auth, relayauth
from navi_actor.tokens import Principal

if TYPE_CHECKING:
    from navi_actor.front.cluster import FrontCluster
    from navi_actor.front.runtime import Runtime
    from navi_actor.front.viewer import Viewer

log = logs.get("navi.front.relay")

TERMINAL_TYPES = frozenset({"stream_end", "stream_stopped", "error"})
ENDED_POLL = 0.25  #: seconds between looks at the store for the end of a lost owner's turn
ENDED_SLACK = 10.0  #: seconds past the lease TTL after which a lost turn is given up on (the sweeper takes 5)


class Relay:
    """This node's relays of turns that run on other nodes."""

    def __init__(self, rt: Runtime, cluster: FrontCluster, secret: bytes, lease_ttl: float) -> None:
        self.rt = rt
        self.cluster = cluster
        self.secret = secret
        self.lease_ttl = lease_ttl
        self.heartbeat = max(1.0, lease_ttl / 2)  #: a paused owner is noticed within 1.5 × this
        self.links: set[RelayLink] = set()
        self.opened = 0
        self.lost = 0
        self._http: aiohttp.ClientSession | None = None

    async def owner(self, session_id: str) -> dict[str, Any] | None:
        """The live node other than this one that runs the session's turn (``node``, ``url``, ``run_id``)."""
        try:
            return await self.rt.loop.run_in_executor(None, self.cluster.node.owner, session_id)
        except Exception as exc:  # the database is away: serve the client here, as without a relay
            log.warning("relay.owner_unknown", session_id=session_id, error=str(exc))
            return None

    async def run_ended(self, run_id: str) -> bool:
        try:
            return not await self.rt.loop.run_in_executor(None, self.cluster.node.run_running, run_id)
        except Exception as exc:
            log.warning("relay.status_unknown", run_id=run_id, error=str(exc))
            return False

    async def for_connection(self, request: web.Request, viewer: Viewer, after: int | None) -> RelayLink | None:
        """A link when another live node runs the session's turn; None: this node serves the client.

        A connection that another node relays is never relayed again."""
        sid = viewer.session_id
        if auth.RELAYED_BY in request or sid in self.rt.runs:
            return None
        owner = await self.owner(sid)
        if owner is None or sid in self.rt.runs:
            return None
        return self.open(viewer, owner, after, auth.principal_of(request))

    def open(self, viewer: Viewer, owner: dict[str, Any], after: int | None, principal: Principal) -> RelayLink:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5))
        link = RelayLink(self, viewer, owner)
        self.links.add(link)
        self.opened += 1
        link.task = self.rt.loop.create_task(link.run(self._http, after, principal))
        return link

    async def close(self) -> None:
        for link in list(self.links):
            await link.close()
        if self._http is not None:
            await self._http.close()


class RelayLink:
    """One client's WebSocket, served from the owner's."""

    def __init__(self, relay: Relay, viewer: Viewer, owner: dict[str, Any]) -> None:
        self.relay = relay
        self.viewer = viewer
        self.owner = owner
        self.up: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()  # set once the connection is made, or failed
        self.task: asyncio.Task[None] | None = None
        self.active = True  # False once this node serves the client itself
        self.in_turn = False  # the last frame relayed was inside a turn (after stream_start, before its end)
        self.run_id: str | None = owner.get("run_id")

    def __repr__(self) -> str:
        return f"<RelayLink session={self.viewer.session_id} from {self.owner['node']} in_turn={self.in_turn}>"

    async def send(self, text: str) -> bool:
        """Forward a client's message to the owner; False when the relay is over (serve it here)."""
        await self.connected.wait()
        if not self.active or self.up is None or self.up.closed:
            return False
        try:
            await self.up.send_str(text)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False  # lost: run() is telling the client
        return True

    async def run(self, http: aiohttp.ClientSession, after: int | None, principal: Principal) -> None:
        relay, viewer = self.relay, self.viewer
        sid = viewer.session_id
        url = f"{self.owner['url'].rstrip('/')}/ws/sessions/{sid}" + ("" if after is None else f"?after={after}")
        header = relayauth.sign(relay.secret, relay.cluster.node_id, sid, principal, time.time())
        try:
            try:
                self.up = await http.ws_connect(url, headers={relayauth.HEADER: header}, heartbeat=relay.heartbeat,
                                                max_msg_size=protocol.MAX_WS_MESSAGE, autoclose=False)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self.connected.set()
                await self._lost(f"cannot be reached ({exc or type(exc).__name__})", connected=False)
                return
            self.connected.set()
            log.info("relay.opened", session_id=sid, viewer=viewer.id, node=self.owner["node"], after=after)
            closed = await self._pump(self.up)
            if viewer.closed:
                return
            if closed is not None:  # the owner closed it on purpose (shutting down, too slow): the client too
                code, reason = closed
                if not 1000 <= code <= 4999 or code in (1005, 1006, 1015):  # codes that cannot be sent on
                    code = aiohttp.WSCloseCode.OK
                await viewer.flush_and_close(code, reason or "closed by the node running this session")
                return
            exc = self.up.exception()
            await self._lost(f"stopped answering ({exc or 'its connection was cut'})", connected=True)
        finally:
            self.active = False
            self.connected.set()
            relay.links.discard(self)

    async def _pump(self, up: aiohttp.ClientWebSocketResponse) -> tuple[int, str] | None:
        """Forward the owner's frames until its connection ends: its close frame's (code, reason), or
        None when it ended without one (the owner died, stopped answering pings, or the link broke)."""
        viewer = self.viewer
        while not viewer.closed:
            msg = await up.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                data = msg.data.encode()
                viewer.send(data, self._note(data))
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                await up.close()
                return int(msg.data), str(msg.extra or "")
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return None
        return None

    def _note(self, data: bytes) -> int:
        """Follow where the relayed stream stands (inside a turn or not); the frame's seq (0: none)."""
        ev = orjson.loads(data)
        kind, seq = ev.get("type"), ev.get("seq")
        if kind == "stream_start":
            self.in_turn = True
            self.run_id = ev.get("run_id") or self.run_id
        elif kind in TERMINAL_TYPES and seq is not None:
            self.in_turn = False
        return seq if type(seq) is int else 0

    async def _lost(self, cause: str, connected: bool) -> None:
        """The owner is gone: tell the client, wait (bounded) for its turn to be ended, then serve it here."""
        relay, viewer = self.relay, self.viewer
        node = self.owner["node"]
        relay.lost += 1
        log.warning("relay.lost", session_id=viewer.session_id, viewer=viewer.id, node=node, cause=cause,
                    in_turn=self.in_turn)
        self.active = False
        waiting = self.in_turn or not connected
        message = f"The node running this session's turn ({node}) {cause}."
        if waiting:
            message += " Its turn is ended as interrupted, with the text saved so far, within its lease; " \
                       "the history follows then, and this connection goes on here."
        viewer.send(orjson.dumps({"type": "error", "code": protocol.NODE_LOST, "message": message, "node": node}))
        if waiting and self.run_id is not None:
            deadline = time.monotonic() + relay.lease_ttl + ENDED_SLACK
            while not viewer.closed and time.monotonic() < deadline and not await relay.run_ended(self.run_id):
                await asyncio.sleep(ENDED_POLL)
        if not viewer.closed:
            relay.rt.attach(viewer, None)  # served here from now on: session_sync, or this node's turn

    async def close(self) -> None:
        self.active = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.up is not None and not self.up.closed:
            await self.up.close()
