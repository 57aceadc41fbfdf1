"""What an actor may not have: the server's secrets, and unlimited resources.

Actors run agent code, which the server does not trust with anything but its
own session. They are forked from the supervisor, so they inherit its memory
and environment; this module makes sure neither holds a secret by then:

* :func:`secure_supervisor`, in the supervisor before anything is forked:
  checks the tokens in a short-lived child (so the supervisor never reads
  them), moves ``NAVI_TOKENS`` (and, with a PostgreSQL store, ``NAVI_CLUSTER_SECRET``)
  into a memfd only the front receives, moves
  the allow-listed secrets (``--actor-env-allow``: the agent's API key) into
  a sealed memfd only actors receive, and drops every other secret-looking
  variable from the supervisor's own environment. So neither the supervisor
  nor the front (forked from it) holds one in its environment. Dropping wipes
  the value where it lives: Python's copy and the process's original
  environment block (what ``/proc/PID/environ`` shows). With authentication configured, the
  supervisor also becomes non-dumpable (``PR_SET_DUMPABLE`` 0), and so does
  the front forked from it: another process of the same user (an agent)
  cannot read their memory, environment or descriptors through ``/proc`` or
  ptrace (root can: CAP_SYS_PTRACE).
* :func:`enter_actor`, first thing in each actor: the same scrub again (a
  second line), the allow-listed secrets put back into its environment from
  their memfd (then closed), dumpable again (it holds only its own session),
  ``PR_SET_NO_NEW_PRIVS`` (no setuid escalation), and the ``--actor-rlimits``.

What it does not do: actors share the server's uid, so agent code can still
read any file that user can (the database, a tokens file); see SECURITY.md.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import resource
import sys
from typing import Callable, Iterable, NamedTuple

import orjson

from navi_actor.config import RLIMIT_NAMES, Config, rlimit_values

#: Parts of a variable's name that make it a secret (case-insensitive).
SECRET_WORDS = (
    "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "KEY", "CREDENTIAL", "PRIVATE", "AUTH",
    "COOKIE", "DSN",
)
#: Never given to an actor, whatever the allow-list says.
ALWAYS_SECRET = frozenset({"NAVI_TOKENS", "NAVI_TOKENS_FILE", "NAVI_CLUSTER_SECRET"})
#: navi-actor's own settings whose names only look secret.
NOT_SECRET = frozenset({"NAVI_AGENT_TOKENS_PER_SECOND", "NAVI_OPENAI_MAX_TOKENS"})
#: A value holding a URL with a password (``postgres://user:pw@host/db``) is a secret too.
_URL_WITH_PASSWORD = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")
_WORDS_RE = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

def _c() -> ctypes.CDLL:
    from navi_actor.sandbox import _libc

    return _libc.load()


def _prctl(option: int, arg: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    if _c().prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}) failed: {os.strerror(err)}")


def set_dumpable(dumpable: bool) -> None:
    """``PR_SET_DUMPABLE``: 0 keeps processes of the same user out of ours (``/proc``, ptrace)."""
    _prctl(PR_SET_DUMPABLE, 1 if dumpable else 0)


def no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS``: no program this process runs gains privileges (setuid, file caps)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


# ── secrets in the environment ──────────────────────────────────────────────


def is_secret(name: str, value: bytes, allow: frozenset[str] | set[str]) -> bool:
    """Whether an actor must not see the variable ``name`` (``value`` as bytes, never copied)."""
    if name in ALWAYS_SECRET:
        return True
    if name in allow or name in NOT_SECRET:
        return False
    return _WORDS_RE.search(name) is not None or _URL_WITH_PASSWORD.search(value) is not None


def parse_allow(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def secret_names(allow: frozenset[str] | set[str]) -> list[str]:
    """Names of the variables of this process's environment that are secrets."""
    out = []
    for key, value in os.environb.items():
        name = os.fsdecode(key)
        if is_secret(name, value, allow):
            out.append(name)
    return out


def _wipe_bytes(value: bytes) -> None:
    """Overwrite a bytes object's contents in place (CPython), before it is dropped."""
    if sys.implementation.name == "cpython" and len(value) > 1:
        ctypes.memset(id(value) + bytes.__basicsize__ - 1, 0, len(value))


def _environ_block() -> tuple[int, int] | None:
    """Start and end address of the process's original environment (``/proc/self/stat`` 50, 51)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        start, end = int(fields[47]), int(fields[48])
    except (OSError, ValueError, IndexError):
        return None
    return (start, end) if 0 < start < end else None


def _wipe_environ_block(keys: Iterable[bytes]) -> None:
    """Zero the ``KEY=value`` strings of ``keys`` in the original environment block.

    It is read in place, entry by entry with ``strlen``: copying it into a
    Python object would leave the secrets in freed memory.
    """
    span = _environ_block()
    wanted = [k + b"=" for k in keys]
    if span is None or not wanted:
        return
    start, end = span
    libc = _c()
    addr = start
    while addr < end:
        n = min(int(libc.strlen(ctypes.c_void_p(addr))), end - addr)
        for prefix in wanted:
            if n >= len(prefix) and ctypes.string_at(addr, len(prefix)) == prefix:
                ctypes.memset(addr, 0, n)
                break
        addr += n + 1


def drop_env(names: Iterable[str]) -> list[str]:
    """Remove variables from the environment, wiping their values; return the names removed."""
    removed: list[bytes] = []
    for name in names:
        key = os.fsencode(name)
        value = os.environb.get(key)
        if value is None:
            continue
        del os.environb[key]  # unsetenv() too; os.environ shares this dict
        _wipe_bytes(value)
        del value
        removed.append(key)
    _wipe_environ_block(removed)
    return [os.fsdecode(k) for k in removed]


def scrub_environ(allow: frozenset[str] | set[str]) -> list[str]:
    """Drop every secret variable but the allowed ones; return their names."""
    return drop_env(secret_names(allow))


# ── resource limits ─────────────────────────────────────────────────────────


def apply_rlimits(text: str) -> dict[str, int]:
    """Set ``--actor-rlimits`` (soft and hard, capped at the current hard limit); return what was set."""
    applied = {}
    for name, value in rlimit_values(text).items():
        which = getattr(resource, RLIMIT_NAMES[name])
        _soft, hard = resource.getrlimit(which)
        limit = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (limit, limit))
        applied[name] = limit
    return applied


# ── the two entry points ────────────────────────────────────────────────────


def enter_actor(config: Config, env_fd: int | None = None) -> None:
    """First thing in a forked actor: no secrets but its own, no privilege gain, the configured limits
    and nice value.

    ``env_fd`` is the memfd of :func:`stash_actor_env`: its variables are put
    back into this actor's environment, and the descriptor is closed before
    any agent code runs. The actor is made dumpable again (it inherits the
    supervisor's setting): it holds nothing but its own session, and agents
    may read their own ``/proc/self`` files, which a non-dumpable process cannot.
    """
    allow = parse_allow(config.actor_env_allow)
    scrub_environ(allow)
    if env_fd is not None:
        restore_actor_env(env_fd, allow)
    set_dumpable(True)
    no_new_privs()
    apply_rlimits(config.actor_rlimits)
    if config.actor_nice:
        os.nice(config.actor_nice)


def check_in_child(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child and return its result; raise RuntimeError with its error.

    For what the supervisor must know but not hold in its memory (the
    tokens): the child reads them, answers with a summary, and exits.
    """
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            answer = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = {"error": str(exc) or type(exc).__name__}
        try:
            os.write(w, orjson.dumps(answer)[:65536])
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        answer = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise RuntimeError("the check ended without an answer") from None
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return str(answer["ok"])


def env_is_set(name: str) -> bool:
    """Whether the variable is set to something other than blanks (without copying its value)."""
    value = os.environb.get(os.fsencode(name))
    return value is not None and len(value) > 0 and not value.isspace()


def stash_env_secret(name: str) -> int | None:
    """Move a variable's value into an anonymous memory file; return its descriptor (None: unset).

    The variable is dropped from the environment and its value wiped, so
    nothing forked later inherits it in memory; the descriptor is handed only
    to the front. A blank value counts as unset (and is dropped too).
    """
    key = os.fsencode(name)
    if not env_is_set(name):
        drop_env([name])
        return None
    value = os.environb[key]
    fd = os.memfd_create(name.lower().replace("_", "-"), os.MFD_CLOEXEC)
    view = memoryview(value)
    while view:
        view = view[os.write(fd, view):]
    view.release()
    del view, value
    drop_env([name])
    return fd


def actor_secret_names(allow: frozenset[str] | set[str]) -> list[str]:
    """The allow-listed variables of this environment that look secret: only actors need them."""
    return [name for name in sorted(allow)
            if name not in ALWAYS_SECRET and (value := os.environb.get(os.fsencode(name))) is not None
            and is_secret(name, value, frozenset())]


def stash_actor_env(allow: frozenset[str] | set[str]) -> tuple[int | None, list[str]]:
    """Move the allow-listed secrets (the agent's API key) into a sealed memory file for actors.

    Returns its descriptor (None when there is none to move) and the names
    moved. The variables are dropped from this process's environment and
    wiped, so the supervisor and the front, forked from it, do not hold them;
    each actor is given the descriptor and puts them back (:func:`restore_actor_env`).
    The file is sealed: no actor can change what the next one gets.
    """
    names = actor_secret_names(allow)
    if not names:
        return None, []
    fd = os.memfd_create("navi-actor-env", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    for name in names:
        key = os.fsencode(name)
        value = os.environb[key]  # the stored bytes themselves: no copy of the secret is made
        for part in (key + b"=", value, b"\0"):
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
            view.release()
        del view, part, value
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    drop_env(names)
    return fd, names


def restore_actor_env(fd: int, allow: frozenset[str] | set[str]) -> list[str]:
    """In an actor: set the variables of :func:`stash_actor_env`'s file (allow-listed ones only), close it.

    Returns the names set. Set with ``putenv``: the actor's own environment
    and the programs it runs have them; its original environment block
    (``/proc/PID/environ``) does not.
    """
    try:
        data = os.pread(fd, os.fstat(fd).st_size, 0)  # pread: actors share the file's offset
    finally:
        os.close(fd)
    found = []
    for entry in data.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        name = os.fsdecode(key)
        if sep and name in allow and name not in ALWAYS_SECRET:
            os.environb[key] = value
            found.append(name)
    return found


class Secured(NamedTuple):
    """What :func:`secure_supervisor` took out of the environment: descriptors (None: nothing to hold)."""

    tokens_fd: int | None  #: NAVI_TOKENS, for the front
    cluster_secret_fd: int | None  #: NAVI_CLUSTER_SECRET, for the front (with a PostgreSQL store)
    env_fd: int | None  #: the allow-listed secrets, for actors
    dropped: list[str]  #: the names of the variables taken out


def secure_supervisor(config: Config) -> Secured:
    """Before the supervisor forks: stash NAVI_TOKENS and NAVI_CLUSTER_SECRET for the front and the
    allow-listed secrets for actors, drop the other secrets.

    The cluster secret is kept only with a store several nodes share (PostgreSQL); otherwise it is
    dropped like any other secret.
    """
    allow = parse_allow(config.actor_env_allow)
    tokens_fd = stash_env_secret("NAVI_TOKENS")
    secret_fd = stash_env_secret("NAVI_CLUSTER_SECRET") if config.shared_store else None
    env_fd, moved = stash_actor_env(allow)
    dropped = scrub_environ(allow)
    stashed = [name for name, fd in (("NAVI_TOKENS", tokens_fd), ("NAVI_CLUSTER_SECRET", secret_fd)) if fd is not None]
    return Secured(tokens_fd, secret_fd, env_fd, stashed + moved + dropped)
