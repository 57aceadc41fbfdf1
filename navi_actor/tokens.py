"""Bearer tokens and loopback hosts: what the supervisor checks before it forks, without aiohttp.

The front's guard (:mod:`navi_actor.front.auth`) uses the same functions; they
live here so that ``navi-actor serve`` can check the tokens and the listening
address without importing aiohttp into the template that actors are cloned
from (a third of its memory is the front's modules, which actors never use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
from typing import Iterable

ROLES = ("user", "admin")
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{20,512}$")
MAX_TOKENS_TEXT = 1024 * 1024
LOCAL_HOSTS = frozenset({"localhost", "localhost."})


class AuthConfigError(Exception):
    """The tokens are unusable; the message says where and how to fix it (never the token)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request. ``user`` is None when authentication is off."""

    user: str | None
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


#: The principal of every request when authentication is off: the operator.
LOCAL = Principal(None, "admin")


def parse_tokens(text: str, where: str, *, semicolons: bool = False) -> list[tuple[str, str, str]]:
    """``(token, user, role)`` for each entry of ``text``; raise AuthConfigError naming the line.

    Blank lines and lines starting with ``#`` are skipped. ``semicolons``
    (``NAVI_TOKENS``) lets ``;`` separate entries too.
    """
    entries: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    lines = text.splitlines()
    if semicolons:
        lines = [part for line in lines for part in line.split(";")]
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) not in (2, 3):
            raise AuthConfigError(f"{where}, entry {n}: expected 'TOKEN USER [ROLE]'")
        token, user = words[0], words[1]
        role = words[2] if len(words) == 3 else "user"
        if not TOKEN_RE.match(token):
            raise AuthConfigError(
                f"{where}, entry {n}: the token must be 20 to 512 characters of A-Z a-z 0-9 _ . ~ + / = - "
                "(make one with: navi-actor token --user NAME)"
            )
        if not USER_RE.match(user):
            raise AuthConfigError(
                f"{where}, entry {n}: the user {user[:64]!r} must be 1 to 64 characters of "
                "A-Z a-z 0-9 _ . @ -, starting with a letter or digit"
            )
        if role not in ROLES:
            raise AuthConfigError(f"{where}, entry {n}: the role {role[:20]!r} must be 'user' or 'admin'")
        if token in seen:
            raise AuthConfigError(f"{where}, entries {seen[token]} and {n} have the same token")
        seen[token] = n
        entries.append((token, user, role))
    return entries


def read_tokens_file(path: str) -> str:
    """The text of a tokens file; refuse one that others may read or change."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise AuthConfigError(f"cannot open the tokens file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuthConfigError(f"the tokens file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise AuthConfigError(
                f"the tokens file {path} is accessible by group or others (mode {mode:04o}); "
                f"run: chmod 600 {path}"
            )
        if info.st_uid not in (os.getuid(), 0):
            raise AuthConfigError(
                f"the tokens file {path} belongs to uid {info.st_uid}, neither this user ({os.getuid()}) nor root"
            )
        if info.st_size > MAX_TOKENS_TEXT:
            raise AuthConfigError(f"the tokens file {path} is larger than {MAX_TOKENS_TEXT} bytes")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthConfigError(f"the tokens file {path} is not UTF-8 text") from None


def load_entries(tokens_file: str, env_text: str | None) -> list[tuple[str, str, str]] | None:
    """The configured tokens; None when none are configured (authentication off)."""
    if tokens_file and env_text is not None:
        raise AuthConfigError("both --tokens-file (NAVI_TOKENS_FILE) and NAVI_TOKENS are set; keep one")
    if tokens_file:
        where, text, semi = f"tokens file {tokens_file}", read_tokens_file(tokens_file), False
    elif env_text is not None:
        where, text, semi = "NAVI_TOKENS", env_text, True
    else:
        return None
    entries = parse_tokens(text, where, semicolons=semi)
    if not entries:
        raise AuthConfigError(f"{where} holds no token; add one (navi-actor token --user NAME) or unset it")
    return entries


def digest(token: str) -> bytes:
    """SHA-256 of a token or ticket: all that is kept of one."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenTable:
    """The configured tokens, as SHA-256 digests, each with its principal."""

    def __init__(self, entries: Iterable[tuple[str, str, str]]) -> None:
        self._entries = [(digest(token), Principal(user, role)) for token, user, role in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        """The token's principal, or None. Compares with every entry, in constant time each."""
        if not token or len(token) > 1024:
            return None
        wanted = digest(token)
        found = None
        for entry, principal in self._entries:
            if hmac.compare_digest(entry, wanted):
                found = principal
        return found

    def users(self) -> set[str]:
        return {p.user for _, p in self._entries if p.user}


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return secrets.token_urlsafe(32)


def split_host(host_header: str) -> str:
    """The host name of a ``Host`` header, without port or brackets, in lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().lower().strip("[]")
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
