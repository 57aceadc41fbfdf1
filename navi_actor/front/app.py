"""The aiohttp application: WebSocket and HTTP routes, and the front's main."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from navi_actor import logs, protocol, tokens
from navi_actor.config import Config
from navi_actor.front import auth, uploads
from navi_actor.front.auth import can_see, principal_of
from navi_actor.front.cluster import FrontCluster
from navi_actor.front.metrics import CONTENT_TYPE
from navi_actor.front.ratelimit import TokenBucket
from navi_actor.front.relay import Relay
from navi_actor.front.runtime import Runtime
from navi_actor.front.viewer import Viewer
from navi_actor.store import ANY_OWNER, StoreFailure, open_store, redact, valid_session_id
from supervisor import proctitle
from supervisor.causes import EXIT_CANNOT_START

log = logs.get("navi.front.http")

RUNTIME = web.AppKey("runtime", Runtime)
GUARD = web.AppKey("guard", auth.Guard)
TITLE_MAX = 200
CLOSE_NOT_FOUND = 4004
CLOSE_BAD_REQUEST = 4400


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, code: str) -> web.Response:
    return _json({"error": message, "code": code}, status)


def _not_found() -> web.Response:
    return _error(404, "Session not found", "session_not_found")


async def _read_json(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "Invalid JSON", "code": protocol.INVALID_JSON}),
            content_type="application/json",
        ) from None


# ── HTTP ────────────────────────────────────────────────────────────────────


async def _visible_session(request: web.Request, sid: str) -> dict[str, Any] | None:
    """The session, if it exists and the request's principal may see it.

    None either way: another user's session answers exactly like one that
    does not exist.
    """
    rt = request.app[RUNTIME]
    session = await rt.store(rt.store_backend.get_session, sid)
    return session if can_see(principal_of(request), session) else None


async def create_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    owner = principal_of(request).user
    body = await _read_json(request)
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(body, dict) or (title is not None and not isinstance(title, str)):
        return _error(400, "Expected {title?: string}", protocol.INVALID_MESSAGE)
    if title is not None and len(title) > TITLE_MAX:
        return _error(400, f"The title may have at most {TITLE_MAX} characters.", protocol.INVALID_MESSAGE)
    session = await rt.store(rt.store_backend.create_session, title, owner)
    await _make_session_folders(rt, session["id"])
    return _json(session, 201)


async def _make_session_folders(rt: Any, sid: str) -> None:
    """With the sandbox on, make the session's work folders now, not on its first turn's path."""
    from navi_actor.sandbox import policy

    if not policy.current().on:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(None, policy.make_session_folders,
                                                         str(rt.uploads_dir), sid)
    except (OSError, policy.SandboxFailed) as exc:  # the actor tries again, and reports what fails
        log.warning("front.session_folders_failed", session_id=sid, error=str(exc))


async def list_sessions(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    principal = principal_of(request)
    try:
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        return _error(400, "limit and offset must be integers", "invalid_query")
    if not (1 <= limit <= 1000 and offset >= 0):
        return _error(400, "limit must be 1..1000 and offset >= 0", "invalid_query")
    every = request.query.get("all", "0")
    if every not in ("0", "1", "true", "false"):
        return _error(400, "all must be 1 or 0", "invalid_query")
    owner: Any = principal.user  # one's own sessions
    if principal.user is None or (every in ("1", "true") and principal.is_admin):
        owner = ANY_OWNER  # authentication off, or an admin who asks for all
    elif every in ("1", "true"):
        return _error(403, "Only an admin may list every user's sessions.", auth.FORBIDDEN)
    sessions = await rt.store(rt.store_backend.list_sessions, limit, offset, owner=owner)
    for s in sessions:
        run = rt.runs.get(s["id"])
        s["running_run_id"] = run.run_id if run else None
    return _json({"sessions": sessions})


async def get_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    detail = await rt.store(rt.store_backend.get_session_detail, sid)
    if not can_see(principal_of(request), detail):
        return _not_found()
    assert detail is not None
    run = rt.runs.get(sid)
    detail["running_run_id"] = run.run_id if run else None
    own = await rt.store(rt.store_backend.get_if_busy, sid)
    detail["if_busy"] = own or rt.config.if_busy  # what a message without if_busy does while a turn runs
    detail["if_busy_session"] = own  # the session's own setting (None: the server's --if-busy)
    detail["queue"] = await rt.store(rt.store_backend.queue, sid)
    return _json(detail)


async def patch_session(request: web.Request) -> web.Response:
    """``PATCH /sessions/{id}`` ``{"if_busy": "reject"|"enqueue"|"interrupt"|null}``: the session's own policy."""
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    body = await _read_json(request)
    allowed = ", ".join(protocol.IF_BUSY_POLICIES)
    if not isinstance(body, dict) or set(body) != {"if_busy"} or (
            body["if_busy"] is not None and body["if_busy"] not in protocol.IF_BUSY_POLICIES):
        return _error(400, f"Expected {{if_busy: {allowed} or null}}", protocol.INVALID_MESSAGE)
    if await _visible_session(request, sid) is None or not await rt.store(rt.store_backend.set_if_busy, sid,
                                                                          body["if_busy"]):
        return _not_found()
    return _json({"id": sid, "if_busy": body["if_busy"] or rt.config.if_busy, "if_busy_session": body["if_busy"]})


async def delete_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    if await _visible_session(request, sid) is None:
        return _not_found()
    rt.queueing.forget(sid)  # its queued messages start no turn now
    run = rt.runs.get(sid)
    if run is not None:
        rt.stop(sid)
        cfg = rt.config
        try:
            await asyncio.wait_for(run.ended.wait(), cfg.stop_term_after + cfg.stop_kill_after + 3.0)
        except TimeoutError:
            return _error(409, "The running turn did not stop in time; try again.", "stop_timeout")
    elif rt.cluster is not None:  # its turn may run on another node: stopped there first
        cfg = rt.config
        if not await rt.cluster.stop_and_wait(sid, cfg.stop_term_after + cfg.stop_kill_after + 3.0):
            return _error(409, "The running turn did not stop in time; try again.", "stop_timeout")
    await rt.store(rt.store_backend.delete_session, sid)
    for viewer in list(rt.viewers.get(sid, ())):
        await viewer.flush_and_close(CLOSE_NOT_FOUND, "Session deleted")
    actor = rt.actors.get(sid)
    if actor is not None:
        rt.retire(actor)
    rt.session_owners.pop(sid, None)
    await asyncio.get_running_loop().run_in_executor(None, uploads.remove_session_dir, rt.config.data_path, sid)
    return _json({"ok": True, "id": sid})


async def stop_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    # Another user's session answers like one with no run, as an unknown session does.
    visible = principal_of(request).user is None or await _visible_session(request, sid) is not None
    if visible and rt.stop(sid):
        return _json({"ok": True})
    if visible and rt.cluster is not None and valid_session_id(sid):  # does it run on another node?
        out = await rt.cluster.request(sid, "stop")
        if out["delivered"]:
            return _json({"ok": out["result"] != "no active run", "node": out["node"],
                          **({} if out["result"] != "no active run" else {"reason": "no active run"})})
        if "node" in out:
            return _json({"ok": False, "node": out["node"], "reason": out["reason"]})
    return _json({"ok": False, "reason": "no active run"})


async def upload_files(request: web.Request) -> web.Response:
    """``POST /sessions/{id}/files`` (multipart): store the files; answer the ``files`` entries naming them."""
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    if not valid_session_id(sid) or await _visible_session(request, sid) is None:
        return _not_found()
    try:
        files = await uploads.receive(request, rt.config.data_path, sid, rt.config.upload_max_bytes)
    except uploads.UploadError as exc:
        return _error(exc.status, exc.message, exc.code)
    log.info("front.upload", session_id=sid, files=len(files))
    return _json({"files": files}, 201)


async def ws_ticket(request: web.Request) -> web.Response:
    """``POST /ws-ticket``: a single-use ticket for ``/ws/sessions/ID?ticket=…``, for browsers."""
    guard = request.app[GUARD]
    ticket = guard.tickets.issue(principal_of(request))
    return _json({"ticket": ticket, "expires_in": guard.tickets.ttl})


async def whoami(request: web.Request) -> web.Response:
    """``GET /me``: whether authentication is on, and who the token belongs to."""
    principal = principal_of(request)
    return _json({"auth": request.app[GUARD].enabled, "user": principal.user, "role": principal.role})


async def healthz(request: web.Request) -> web.Response:
    """The front's health; 503 while the session store cannot write (``store.ok`` false).

    ``actors``: every actor process alive, warm ones included; ``warm``: those with no session yet
    (the supervisor's counts, as in ``navi-actor ps`` and ``/metrics``; null if it does not answer in 1 s).
    ``agent_start``: whether new actors start their agent (``ok``), the failures in a row and the last
    one's ``error``, and whether that ``paused`` the warm pool (null with the counts)."""
    rt = request.app[RUNTIME]
    store = rt.store_keeper.health()
    try:
        sup = await rt.control({"op": "status"}, timeout=1.0)
    except (TimeoutError, ConnectionError):
        sup = {}
    return _json(
        {
            "ok": not rt.shutting_down and store["ok"],
            "shutting_down": rt.shutting_down,
            "actors": sup.get("actors"),
            "warm": sup.get("warm"),
            "agent_start": sup.get("agent_start"),
            "runs": len(rt.runs),
            "viewers": sum(len(v) for v in rt.viewers.values()),
            "store": store,
        },
        200 if store["ok"] else 503,
    )


# ── WebSocket ───────────────────────────────────────────────────────────────


async def websocket(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    sid = request.match_info["session_id"]
    after: int | None = None
    bad_after = False
    if "after" in request.query:
        try:
            after = int(request.query["after"])
            bad_after = after < 0
        except ValueError:
            bad_after = True
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_WS_MESSAGE, compress=rt.config.ws_compress)
    await ws.prepare(request)
    if bad_after:  # closed with a reason: a browser cannot read an HTTP error on an upgrade
        await ws.close(code=CLOSE_BAD_REQUEST, message=b"after must be a non-negative integer seq")
        return ws
    session = await _visible_session(request, sid) if valid_session_id(sid) else None
    if session is None:  # unknown, or another user's: the same answer
        await ws.close(code=CLOSE_NOT_FOUND, message=b"Session not found")
        return ws
    if session.get("owner"):
        rt.session_owners[sid] = session["owner"]  # reported with its actor (navi-actor ps, GET /runs)
    guard = request.app[GUARD]
    bucket = TokenBucket(rt.config.rate_limit)
    await rt.reconciled.wait()  # after a front restart: runs are adopted before anyone attaches
    viewer = Viewer(ws, request, sid, rt.config.client_max_pending_bytes)
    viewer.principal = auth.principal_of(request)
    log.info("front.ws_connected", session_id=sid, viewer=viewer.id, after=after)
    # A relay now, or later (front/elsewhere.py: a message queued for another node's turn).
    viewer.relay = await rt.relay.for_connection(request, viewer, after) if rt.relay is not None else None
    if viewer.relay is None:
        rt.attach(viewer, after)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not bucket.take():
                wait = max(1, round(bucket.retry_after()))
                viewer.send(orjson.dumps(protocol.ClientError(
                    protocol.RATE_LIMITED,
                    f"Too many messages: at most {rt.config.rate_limit} a minute. Try again in {wait} s.",
                ).event()))
            elif msg.type == WSMsgType.TEXT:
                if viewer.relay is None or not await viewer.relay.send(msg.data):
                    await _on_client_message(rt, guard, viewer, msg.data)
            elif msg.type == WSMsgType.BINARY:
                viewer.send(orjson.dumps(protocol.ClientError(protocol.INVALID_MESSAGE, protocol.EXPECTED_SHAPE).event()))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        if viewer.relay is not None:
            await viewer.relay.close()
        rt.detach(viewer)
        log.info("front.ws_disconnected", session_id=sid, viewer=viewer.id)
        for gone in [s for s in rt.session_owners if s not in rt.viewers and s not in rt.actors]:
            del rt.session_owners[gone]
    return ws


async def _on_client_message(rt: Runtime, guard: auth.Guard, viewer: Viewer, raw: str) -> None:
    try:
        message = protocol.parse_client_frame(raw, strict_base64=True)
        if isinstance(message, protocol.CancelQueued):
            return await rt.queueing.cancel(viewer, message.message_id)
        if message.files and guard.confine_files:
            files = uploads.confine(rt.config.data_path, viewer.session_id, message.files)
            message = dataclasses.replace(
                message,
                content=protocol.agent_content(message.display_content, len(message.images), files),
                files=files,
            )
        await rt.queueing.on_message(viewer, message)
    except protocol.ClientError as err:
        viewer.send(orjson.dumps(err.event()))


# ── operators ───────────────────────────────────────────────────────────────


async def _ask_supervisor(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return await rt.control(request)
    except (TimeoutError, ConnectionError) as exc:
        raise web.HTTPServiceUnavailable(
            body=orjson.dumps({"error": f"the supervisor did not answer: {exc!r}", "code": "supervisor_unavailable"}),
            content_type="application/json",
        ) from None


async def list_runs(request: web.Request) -> web.Response:
    """The same rows as ``navi-actor ps --json``; with ``?cluster=1``, every live node's running turns."""
    rt = request.app[RUNTIME]
    if request.query.get("cluster") not in (None, "", "0"):
        if rt.cluster is None:
            return _error(400, "This server shares its store with no other node (its store is SQLite): "
                               "GET /runs lists all it runs", "not_a_cluster")
        runs = await rt.cluster.running()
        return _json({"runs": runs, "node": rt.cluster.node_id})
    reply = await _ask_supervisor(rt, {"op": "list"})
    return _json({"actors": reply.get("actors", []), "warm": reply.get("warm", 0)})


async def kill_run(request: web.Request) -> web.Response:
    """Stop a session's actor (the ladder), or SIGKILL it with ``{"force": true}``."""
    rt = request.app[RUNTIME]
    body = await _read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("force", False), bool):
        return _error(400, "Expected {force?: boolean}", protocol.INVALID_MESSAGE)
    sid = request.match_info["session_id"]
    reply = await _ask_supervisor(rt, {"op": "kill" if body.get("force") else "stop", "session_ids": [sid]})
    results = reply.get("results", [])
    if (not results or results[0].get("outcome") == "not found") and rt.cluster is not None \
            and valid_session_id(sid):  # on another node?
        out = await rt.cluster.request(sid, "kill" if body.get("force") else "terminate")
        if out["delivered"] and out["result"] not in ("no active run", "not found"):
            return _json({"session_id": sid, "outcome": out["result"], "node": out["node"]})
        if not out["delivered"] and "node" in out:
            return _error(504, f"The turn runs on node {out['node']}, which did not carry out the request: "
                               f"{out['reason']}", "node_unreachable")
    if not results or results[0].get("outcome") == "not found":
        return _error(404, "No actor runs for this session", "not_found")
    return _json(results[0])


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    try:
        state = await rt.control({"op": "status"}, timeout=2.0)
        listing = await rt.control({"op": "list"}, timeout=2.0)
    except (TimeoutError, ConnectionError):
        state, listing = {}, {}
    body = rt.metrics.render(state, listing)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".png": "image/png", ".svg": "image/svg+xml"}


async def static_file(request: web.Request) -> web.StreamResponse:
    """The chat page (``GET /``) and its files (``GET /static/NAME``), never cached stale."""
    name = request.match_info.get("name", "index.html")
    path = STATIC_DIR / name
    ctype = _STATIC_TYPES.get(path.suffix)
    if ctype is None or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    charset = "; charset=utf-8" if ctype.startswith("text/") else ""
    return web.FileResponse(path, headers={"Content-Type": ctype + charset, "Cache-Control": "no-cache",
                                           **PAGE_HEADERS})


#: The chat page may load only its own files and talk only to its own server;
#: no other site may frame it (clickjacking). No inline scripts or styles, no
#: eval: agent text is never HTML anyway (markdown.js builds DOM nodes).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def _store_failures(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request the store could not serve (the disk is full, say) answers 503 ``store_error``, not 500."""
    try:
        return await handler(request)
    except StoreFailure as exc:
        return _error(503, str(exc), protocol.store_code(exc))


def make_app(runtime: Runtime, guard: auth.Guard | None = None) -> web.Application:
    guard = guard if guard is not None else auth.Guard(runtime.config, None)
    app = web.Application(client_max_size=1024 * 1024, middlewares=[guard.middleware, _store_failures])
    app[RUNTIME] = runtime
    app[GUARD] = guard
    app.router.add_post("/ws-ticket", ws_ticket)
    app.router.add_get("/me", whoami)
    app.router.add_post("/sessions/{session_id}/files", upload_files)
    app.router.add_get("/", static_file)
    app.router.add_get("/static/{name:[A-Za-z0-9_-][A-Za-z0-9_.-]*}", static_file)
    app.router.add_post("/sessions", create_session)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_patch("/sessions/{session_id}", patch_session)
    app.router.add_post("/sessions/{session_id}/stop", stop_session)
    app.router.add_get("/ws/sessions/{session_id}", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/runs", list_runs)
    app.router.add_post("/runs/{session_id}/kill", kill_run)
    app.router.add_get("/metrics", metrics)
    return app


# ── process main ────────────────────────────────────────────────────────────


def front_main(config: Config, fd: int, listen_fd: int, tokens_fd: int | None = None,
               secret_fd: int | None = None) -> int:
    """Entry point of the forked front process; returns its exit code.

    ``fd`` is the channel to the supervisor; ``listen_fd`` the listening
    socket, which the supervisor owns so it survives a front restart;
    ``tokens_fd`` a memfd holding NAVI_TOKENS, ``secret_fd`` one holding
    NAVI_CLUSTER_SECRET (the supervisor keeps its own descriptors for the
    next front; these are closed once read).
    """
    import uvloop

    logs.configure("front", config.log_format)
    proctitle.set_title("navi-actor: front", comm=b"navi-front")
    try:
        guard = auth.load_guard(config, tokens_fd, secret_fd)
    except tokens.AuthConfigError as exc:
        log.error("front.auth_unusable", error=str(exc))
        print(f"navi-actor: {exc}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    return uvloop.run(_serve(config, fd, listen_fd, guard))


async def _serve(config: Config, fd: int, listen_fd: int, guard: auth.Guard | None = None) -> int:
    loop = asyncio.get_running_loop()
    try:
        store = open_store(config.data_path, config.store or None, node_id=config.node_id)
    except Exception as exc:
        log.error("front.store_unusable", error=str(exc), data_dir=str(config.data_path), store=redact(config.store))
        return EXIT_CANNOT_START
    runtime = Runtime(config, store, fd)
    app = make_app(runtime, guard)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    listener = socket.socket(fileno=listen_fd)
    site = web.SockSite(runner, listener)
    await site.start()
    host, port = listener.getsockname()[:2]
    try:
        runtime.cluster = FrontCluster.open(runtime, config, config.advertise_url or f"http://{host}:{port}")
    except Exception as exc:  # the database went away between the store's open and this
        log.error("front.cluster_unusable", error=str(exc), store=redact(config.store))
        await runner.cleanup()
        return EXIT_CANNOT_START
    if runtime.cluster is not None and guard is not None and guard.cluster_secret is not None:
        runtime.relay = Relay(runtime, runtime.cluster, guard.cluster_secret, config.lease_ttl)
    runtime.link.send({"op": "ready", "host": host, "port": port})
    loop.add_signal_handler(signal.SIGTERM, runtime.request_shutdown, True)
    await runtime.shutdown_requested.wait()
    log.info("front.shutting_down", drain=runtime.drain)
    await runtime.shutdown()
    if runtime.relay is not None:
        await runtime.relay.close()
    if runtime.cluster is not None:
        await loop.run_in_executor(None, runtime.cluster.close)
    await runner.cleanup()
    log.info("front.exit")
    return 0
