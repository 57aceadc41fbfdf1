"""Who may do what: bearer tokens, WebSocket tickets, origins, and the HTTP guard.

Authentication is on when tokens are configured, in a tokens file
(``--tokens-file``) or in ``NAVI_TOKENS``, in one format: one entry per line
(``NAVI_TOKENS`` may also separate entries with ``;``)::

    # TOKEN                                         USER   ROLE (user or admin; default user)
    q3J0…                                           alice  admin
    Zk1p…                                           bob

The tokens are read here, in the front, after it is forked, with the
functions of :mod:`navi_actor.tokens` (no aiohttp there: the supervisor
imports it to check the configuration in a child). The supervisor never reads them (it forks actors, which must not inherit them). Only their
SHA-256 digests are kept, compared with :func:`hmac.compare_digest` against
every entry, so neither a lookup's time nor an error message tells anything
about a token.

A browser cannot set headers on a WebSocket, so it trades its token for a
short-lived, single-use ticket (``POST /ws-ticket``) and opens
``/ws/sessions/ID?ticket=…`` with it. Programs may send the header instead.

The guard (:meth:`Guard.middleware`) runs before every handler:

* with authentication off and no ``--insecure-no-auth`` (the development
  default, bound to loopback), the ``Host`` header must be a loopback name or
  an allowed origin's host, so a page on another site cannot reach the server
  through DNS rebinding;
* a request that carries an ``Origin`` header and opens a WebSocket or
  changes something (POST, PUT, PATCH, DELETE) must come from the server's own
  origin or one of ``--allowed-origins`` (403 otherwise), so a hostile page
  cannot drive a user's session (cross-site WebSocket hijacking, CSRF);
  programs send no ``Origin`` and are not affected;
* every route but the chat page's files and ``/healthz`` needs a principal:
  401 without a valid token (or ticket), 403 for a ``user`` on the
  operators' routes.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from navi_actor import logs
from navi_actor.config import Config, normalize_origin
from navi_actor.front import relayauth
from navi_actor.tokens import LOCAL, AuthConfigError, Principal, TokenTable, digest, is_loopback, load_entries, split_host

log = logs.get("navi.front.auth")

PRINCIPAL = "navi.principal"  # the request's key for its Principal
RELAYED_BY = "navi.relayed_by"  # the request's key for the node that relays it (front/relay.py)

#: Routes anyone may fetch: the chat page, its files, and the health check.
PUBLIC_ROUTES = frozenset({"/", "/static/{name}", "/healthz"})
#: Routes for operators: an ``admin`` token when authentication is on.
ADMIN_ROUTES = frozenset({"/runs", "/runs/{session_id}/kill", "/metrics"})
WS_ROUTE = "/ws/sessions/{session_id}"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Error codes of the HTTP answers the guard gives.
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
ORIGIN_NOT_ALLOWED = "origin_not_allowed"
HOST_NOT_ALLOWED = "host_not_allowed"


# ── WebSocket tickets ───────────────────────────────────────────────────────


class TicketBook:
    """Short-lived single-use tickets that stand for a principal on one WebSocket connect."""

    MAX_OUTSTANDING = 10_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._tickets: dict[bytes, tuple[Principal, float]] = {}  # digest → (principal, expiry)

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, principal: Principal) -> str:
        now = self.clock()
        self._prune(now)
        if len(self._tickets) >= self.MAX_OUTSTANDING:
            del self._tickets[next(iter(self._tickets))]  # the oldest: dicts keep insertion order
        ticket = secrets.token_urlsafe(32)
        self._tickets[digest(ticket)] = (principal, now + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> Principal | None:
        """The ticket's principal, once, before it expires; None otherwise."""
        if not ticket or len(ticket) > 128:
            return None
        entry = self._tickets.pop(digest(ticket), None)
        if entry is None or self.clock() > entry[1]:
            return None
        return entry[0]

    def _prune(self, now: float) -> None:
        for key in [k for k, (_, expiry) in self._tickets.items() if expiry < now]:
            del self._tickets[key]


# ── hosts and origins (split_host and is_loopback: navi_actor.tokens) ─────────


def own_origins(host_header: str) -> set[str]:
    """The origins of a page served from ``Host: host_header``: http and https."""
    out = set()
    for scheme in ("http", "https"):
        try:
            out.add(normalize_origin(f"{scheme}://{host_header}"))
        except ValueError:
            pass
    return out


def origin_allowed(origin: str, host_header: str, allowed: frozenset[str]) -> bool:
    try:
        norm = normalize_origin(origin)
    except ValueError:
        return False  # "null", garbage
    return norm in allowed or norm in own_origins(host_header)


# ── the guard ───────────────────────────────────────────────────────────────


def _deny(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message, "code": code}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """The server's authentication and origin policy, and the middleware that applies it."""

    def __init__(self, config: Config, tokens: TokenTable | None, cluster_secret: bytes | None = None) -> None:
        #: The secret the nodes share (NAVI_CLUSTER_SECRET or --cluster-secret-file): a relaying node signs
        #: with it (front/relay.py), the owner checks it.
        self.cluster_secret = cluster_secret
        self.tokens = tokens if tokens is not None and len(tokens) else None
        self.enabled = self.tokens is not None
        self.tickets = TicketBook(config.ws_ticket_ttl)
        self.allowed_origins = frozenset(o for o in config.allowed_origins.split(",") if o)
        self.allowed_hosts = frozenset(split_host(o.split("://", 1)[1]) for o in self.allowed_origins)
        #: Authentication off on a loopback address: the Host header must be local too.
        self.local_only = not self.enabled and not config.insecure_no_auth
        #: Message ``files`` must lie in the session's upload folder (not in local development mode).
        self.confine_files = not self.local_only

    def authenticate(self, request: web.Request, allow_ticket: bool) -> Principal | None:
        relayed = request.headers.get(relayauth.HEADER)
        if relayed is not None:  # another node, on behalf of its client: the WebSocket only, signed
            return self._relayed(request, relayed) if allow_ticket else None
        if self.tokens is None:
            return LOCAL
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return self.tokens.lookup(token.strip())
        if allow_ticket and "ticket" in request.query:
            return self.tickets.redeem(request.query["ticket"])
        return None

    def _relayed(self, request: web.Request, value: str) -> Principal | None:
        if self.cluster_secret is None:
            return None
        found = relayauth.verify(self.cluster_secret, value, request.match_info.get("session_id", ""), time.time())
        if found is None:
            log.warning("front.relay_refused", remote=request.remote, path=request.path[:200])
            return None
        request[RELAYED_BY] = found[0]
        return found[1]

    def host_allowed(self, host_header: str) -> bool:
        host = split_host(host_header)
        return is_loopback(host) or host in self.allowed_hosts

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.local_only and not self.host_allowed(request.host):
            log.warning("front.host_refused", host=request.host[:100], path=request.path[:200])
            return _deny(
                403,
                f"Host {request.host[:100]!r} is not allowed: this server runs without authentication and "
                "answers only to localhost. Configure tokens (--tokens-file) or list the origin in "
                "--allowed-origins.",
                HOST_NOT_ALLOWED,
            )
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        is_ws = canonical == WS_ROUTE
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and (is_ws or request.method in UNSAFE_METHODS)
            and not origin_allowed(origin, request.host, self.allowed_origins)
        ):
            log.warning("front.origin_refused", origin=origin[:200], path=request.path[:200])
            return _deny(403, f"Origin {origin[:200]!r} is not allowed (see --allowed-origins).",
                         ORIGIN_NOT_ALLOWED)
        if canonical is None or canonical in PUBLIC_ROUTES:
            return await handler(request)  # no principal: principal_of() refuses
        principal = self.authenticate(request, allow_ticket=is_ws)
        if principal is None:
            log.info("front.auth_refused", path=request.path[:200], remote=request.remote,
                     ticket="ticket" in request.query)
            if is_ws and "ticket" in request.query and "Authorization" not in request.headers:
                message = "The WebSocket ticket is invalid, used or expired; get a new one with POST /ws-ticket."
            else:
                message = "Authentication required: send 'Authorization: Bearer <token>'."
            return _deny(401, message, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="navi-actor"'})
        if canonical in ADMIN_ROUTES and not principal.is_admin:
            return _deny(403, "This needs an admin token.", FORBIDDEN)
        request[PRINCIPAL] = principal
        return await handler(request)


def principal_of(request: web.Request) -> Principal:
    """The request's principal, set by the guard; 401 if it set none (a public route)."""
    principal = request.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise web.HTTPUnauthorized(
            body=orjson.dumps({"error": "Authentication required.", "code": UNAUTHORIZED}),
            content_type="application/json",
        )
    return principal


def can_see(principal: Principal, session: dict[str, Any] | None) -> bool:
    """Whether the principal may see and use the session: its owner, an admin, or anyone with auth off."""
    if session is None:
        return False
    return principal.user is None or principal.is_admin or session.get("owner") == principal.user


def _read_fd(fd: int) -> bytes:
    """The whole content of a memfd the supervisor handed over (pread: it keeps the offset), then closed."""
    try:
        chunks, offset = [], 0
        while chunk := os.pread(fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_guard(config: Config, tokens_fd: int | None, secret_fd: int | None = None) -> Guard:
    """Read the tokens (the file, or NAVI_TOKENS handed over in ``tokens_fd``) and the cluster secret
    (the file, or NAVI_CLUSTER_SECRET in ``secret_fd``), and build the guard."""
    env_text = None if tokens_fd is None else _read_fd(tokens_fd).decode("utf-8", "replace")
    entries = load_entries(config.tokens_file, env_text)
    return Guard(config, TokenTable(entries) if entries else None, load_cluster_secret(config, secret_fd))


def load_cluster_secret(config: Config, secret_fd: int | None = None) -> bytes | None:
    """With a PostgreSQL store, the secret the nodes share: NAVI_CLUSTER_SECRET (handed over in
    ``secret_fd``) or --cluster-secret-file; None with SQLite. AuthConfigError if missing or unusable
    (the supervisor checks this before it forks, so this is a second line)."""
    if not config.shared_store:
        if secret_fd is not None:
            os.close(secret_fd)
        return None
    if secret_fd is not None:
        try:
            return relayauth.parse_secret(_read_fd(secret_fd), "NAVI_CLUSTER_SECRET")
        except relayauth.SecretError as exc:
            raise AuthConfigError(f"NAVI_CLUSTER_SECRET: {exc}") from None
    path = config.cluster_secret_file
    if not path:
        raise AuthConfigError("a PostgreSQL store needs the cluster secret: set NAVI_CLUSTER_SECRET or "
                              "--cluster-secret-file")
    try:
        return read_secret_file(path)
    except (OSError, relayauth.SecretError) as exc:
        raise AuthConfigError(f"--cluster-secret-file: {exc}") from None


def read_secret_file(path: str) -> bytes:
    """The cluster secret in the file at ``path``. SecretError when it is too short, or when the
    file's mode lets its group or other users read or write it (as ssh and PostgreSQL refuse
    their key files); OSError when it cannot be read."""
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise relayauth.SecretError(f"{path} is open to other users (mode {mode & 0o777:04o}): "
                                        f"make it mode 0600 (chmod 600 {path})")
        return relayauth.parse_secret(f.read(), path)
