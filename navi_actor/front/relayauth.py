"""The credential a node shows another node when it relays a client's WebSocket. Pure (no I/O).

A node that does not run a session's turn serves its client from the node
that does (:mod:`navi_actor.front.relay`). It has already authenticated the
client; it tells the owner who the client is in one header, signed with the
secret every node shares (``NAVI_CLUSTER_SECRET`` or ``--cluster-secret-file``)::

    X-Navi-Relay: BASE64URL("v1|NODE|SESSION|EXPIRES|USER|ROLE") "." HMAC-SHA256-HEX

The owner takes the principal from it instead of a token, only on the
WebSocket route, only for that session and only until ``EXPIRES`` (a few
seconds after signing). A header that does not verify is a 401, so a client
cannot pass as a node, and a relayed connection is never relayed again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from navi_actor.tokens import Principal

HEADER = "X-Navi-Relay"
VALID_FOR = 30.0  #: seconds a signed header is accepted after signing (clocks of the nodes may differ a little)
MIN_SECRET_BYTES = 16


class SecretError(ValueError):
    """The cluster secret (its file, or NAVI_CLUSTER_SECRET) cannot be used."""


def parse_secret(raw: bytes, path: str) -> bytes:
    """The secret from its bytes (a file's or the variable's; surrounding blanks dropped); SecretError when too short."""
    secret = raw.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"the cluster secret in {path} is {len(secret)} bytes long; it needs at least "
                          f"{MIN_SECRET_BYTES} (make one with: head -c 32 /dev/urandom | base64)")
    return secret


def _mac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def sign(secret: bytes, node: str, session_id: str, principal: Principal, now: float) -> str:
    """The header value for relaying ``session_id`` on behalf of ``principal``, signed at ``now``."""
    fields = ["v1", node, session_id, str(int(now + VALID_FOR)), principal.user or "", principal.role]
    payload = base64.urlsafe_b64encode("|".join(fields).encode()).rstrip(b"=")
    return f"{payload.decode()}.{_mac(secret, payload)}"


def verify(secret: bytes, value: str, session_id: str, now: float) -> tuple[str, Principal] | None:
    """``(node, principal)`` when ``value`` is a valid header for ``session_id`` at ``now``; None otherwise."""
    payload, dot, mac = value.partition(".")
    if not dot or not hmac.compare_digest(_mac(secret, payload.encode()), mac):
        return None
    try:
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    fields = text.split("|")
    if len(fields) != 6 or fields[0] != "v1" or fields[2] != session_id:
        return None
    _v, node, _sid, expires, user, role = fields
    if not expires.isdigit() or int(expires) < now or int(expires) > now + 2 * VALID_FOR:
        return None
    if role not in ("user", "admin"):
        return None
    return node, Principal(user or None, role)
