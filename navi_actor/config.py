"""Server settings: one table drives the defaults, the environment and ``--help``.

Every option of ``navi-actor serve`` is also read from an environment variable
(``--idle-timeout`` ↔ ``NAVI_IDLE_TIMEOUT``); a command-line flag wins over the
environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    name: str  # attribute and --flag (underscores become dashes)
    default: Any
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    switch: bool = False  # a flag without a value (``--insecure-no-auth``); env: 1/true/yes/on
    repeat: bool = False  # may be given several times (a tuple); env: values separated by ':'

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "NAVI_" + self.name.upper()


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:  # also refuses NaN
            raise ValueError(f"must be greater than 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= 0:
            raise ValueError(f"must be 0 or more, got {text!r}")
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def _poll_ms(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:  # also refuses NaN
        raise ValueError(f"milliseconds 0..100, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"a port is 0..65535, got {text!r}")
    return value


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise ValueError(f"a nice increment is 0..19, got {text!r}")
    return value


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, got {text!r}")


_ORIGIN_RE = re.compile(r"^(?i:(https?))://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?/?$")


def normalize_origin(text: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or a trailing slash."""
    m = _ORIGIN_RE.match(text.strip())
    if m is None:
        raise ValueError(f"an origin is scheme://host[:port] with http or https, got {text.strip()!r}")
    scheme, host, port = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if port is not None and int(port) > 65535:
        raise ValueError(f"port out of range in origin {text.strip()!r}")
    if port is None or (scheme, int(port)) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def _origins(text: str) -> str:
    """Comma-separated origins, each checked and normalized."""
    return ",".join(normalize_origin(o) for o in text.split(",") if o.strip())


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_names(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
    return ",".join(names)


#: ``--actor-rlimits`` names → the ``resource`` module's constants.
RLIMIT_NAMES = {"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "as": "RLIMIT_AS"}
_SIZE_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def rlimit_values(text: str) -> dict[str, int]:
    """``nofile=1024,nproc=64,as=2G`` → ``{"nofile": 1024, "nproc": 64, "as": 2147483648}``."""
    out: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name, raw = name.strip().lower(), raw.strip().lower()
        if not sep or name not in RLIMIT_NAMES:
            raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(RLIMIT_NAMES)}, got {item!r}")
        if name in out:
            raise ValueError(f"{name} is given twice")
        m = re.fullmatch(r"(\d+)([kmgt]?)", raw)
        if m is None or int(m.group(1)) <= 0:
            raise ValueError(f"{name}: expected a positive integer, optionally with K, M, G or T, got {raw!r}")
        out[name] = int(m.group(1)) * _SIZE_SUFFIX[m.group(2)]
    return out


def ports(text: str) -> tuple[int, ...]:
    """``443,11434`` → ``(443, 11434)``; empty → ``()``."""
    out: list[int] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"expected TCP ports 1..65535 separated by commas, got {item!r}")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


def _ports(text: str) -> str:
    return ",".join(str(p) for p in ports(text))


def _existing_path(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a path")
    return text


def store_url(text: str) -> str:
    """A ``--store`` URL, checked: ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``, no password in it.

    A password in the URL would sit in the memory and command line of every
    process, actors included; libpq reads it from ``PGPASSFILE`` (or
    ``~/.pgpass``) instead, which actors cannot read.
    """
    from navi_actor.store.factory import sqlite_path, store_kind
    from navi_actor.store.errors import StoreError

    text = text.strip()
    if not text:
        return ""  # the default: DATA_DIR/navi.sqlite3
    try:
        if store_kind(text) == "sqlite":
            sqlite_path(text)
            return text
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    netloc = text.partition("://")[2].split("/", 1)[0]
    if ":" in netloc.rpartition("@")[0] or "password=" in text.lower():
        raise ValueError("put no password in the store URL (every process would hold it, actors too): "
                         "give it to libpq in a password file (PGPASSFILE or ~/.pgpass, mode 0600)")
    return text


_NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _node_id(text: str) -> str:
    text = text.strip()
    if text and not _NODE_ID_RE.match(text):
        raise ValueError(f"a node id is 1-64 letters, digits, '_', '.', ':' or '-', got {text!r}")
    return text


_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", re.IGNORECASE)


def _advertise_url(text: str) -> str:
    text = text.strip().rstrip("/")
    if text and not _URL_RE.match(text):
        raise ValueError(f"expected http(s)://HOST[:PORT][/PATH], got {text!r}")
    return text


def _rlimits(text: str) -> str:
    values = rlimit_values(text)
    return ",".join(f"{k}={v}" for k, v in values.items())


OPTIONS: tuple[Option, ...] = (
    Option("host", "127.0.0.1", str, "address to listen on"),
    Option("port", 8765, _port, "TCP port to listen on (0 picks a free one, written to DATA_DIR/server.json)"),
    Option(
        "agent",
        "demo",
        str,
        "the agent: MODULE:ATTR, or a built-in name (demo, echo, openai)",
    ),
    Option("data_dir", "./var", str, "folder for the session database and server.json"),
    Option(
        "store",
        "",
        store_url,
        "the session store: sqlite:///PATH (an SQLite file) or postgresql://USER@HOST:PORT/DB (a PostgreSQL "
        "database, its schema created or migrated at start; password in PGPASSFILE, never in the URL); "
        "empty: DATA_DIR/navi.sqlite3",
    ),
    Option(
        "node_id",
        "",
        _node_id,
        "this node's name among the nodes sharing a PostgreSQL store (letters, digits, _ . : -); "
        "empty: the host name and the port, HOST:PORT",
    ),
    Option(
        "advertise_url",
        "",
        _advertise_url,
        "how the other nodes and operators reach this node's HTTP port, e.g. http://10.0.0.5:8765 (shown with "
        "its turns by GET /runs?cluster=1 and ps --cluster); empty: http://HOST:PORT as bound",
    ),
    Option(
        "lease_ttl",
        10.0,
        _positive(float),
        "with a PostgreSQL store: seconds a node's hold on its running turns outlives its last heartbeat "
        "(sent every TTL/5); past it, the node stops its own turns and another node ends them as "
        "interrupted (within TTL + 5 s)",
    ),
    Option(
        "cluster_secret_file",
        "",
        str,
        "with a PostgreSQL store: file holding the secret the nodes share (mode 0600: a file its group or "
        "others may open is refused; the same on every node; at least 16 bytes); it authenticates "
        "node-to-node WebSockets (the relay of a turn running on another node). Required with a PostgreSQL "
        "store, unless NAVI_CLUSTER_SECRET holds the secret (not both)",
    ),
    Option(
        "log_format",
        "auto",
        str,
        "log lines as 'console' (readable) or 'json' (one object per line); "
        "auto = console on a terminal, json otherwise",
        choices=("auto", "console", "json"),
    ),
    Option(
        "idle_timeout",
        120.0,
        _positive(float),
        "seconds an actor with no running turn lives before it exits "
        "(so, at most, how long a client can resume the turn that ended last with ?after=)",
    ),
    Option(
        "heartbeat_interval",
        20.0,
        _positive(float),
        "seconds without an event during a turn before clients get a heartbeat",
    ),
    Option("stop_grace", 2.0, _positive(float), "seconds a stopped agent has to finish before its task is cancelled"),
    Option(
        "stop_term_after",
        5.0,
        _positive(float),
        "seconds after a stop before the actor's process group gets SIGTERM",
    ),
    Option("stop_kill_after", 2.0, _positive(float), "seconds after SIGTERM before SIGKILL"),
    Option(
        "replay_max_bytes",
        16 * 1024 * 1024,
        _positive(int),
        "byte bound of a turn's replay buffer (deltas are merged, so this is about text size); "
        "an idle actor keeps at most this much of its last turn, for late resumes",
    ),
    Option(
        "client_max_pending_bytes",
        8 * 1024 * 1024,
        _positive(int),
        "bytes queued for one slow WebSocket client before it is closed (code 4008) to resume",
    ),
    Option("turn_timeout", 1800.0, _positive(float), "seconds a turn may run before it is stopped (wall time)"),
    Option(
        "actor_max_rss",
        1024,
        _positive(int),
        "MiB of resident memory an actor (with its children) may use before it is killed",
    ),
    Option("max_actors", 256, _positive(int), "most actor processes at once; idle ones are evicted first"),
    Option(
        "actor_nice",
        10,
        _nice,
        "nice increment of actor processes (0..19), so that agents busy on the CPU cannot starve the "
        "front that serves every session (0: same priority as the front)",
    ),
    Option(
        "warm_actors",
        2,
        _non_negative(int),
        "actors forked ahead of need, so a new session's first turn does not wait for a fork (0: none)",
    ),
    Option(
        "no_prebind",
        False,
        _switch,
        "do not give a session a warm actor as soon as a client connects to it (by default a ready warm "
        "actor is handed over then, so the session's first turn does not wait for the handover; it "
        "exits when the last client leaves before a turn)",
        switch=True,
    ),
    Option(
        "turn_poll_ms",
        3.0,
        _poll_ms,
        "milliseconds an idle actor polls for a turn whose message the front is saving, instead of "
        "sleeping until it is sent (a sleeping process takes 0.1-0.25 ms to wake on a VM); it costs up to "
        "this much CPU per new turn, and is done only while no other turn's message is being saved. 0: off",
    ),
    Option(
        "no_zygote",
        False,
        _switch,
        "fork actors from the supervisor itself instead of from an idle zygote process (the zygote keeps "
        "the pages actors share with it untouched, so each actor uses less memory and starts faster)",
        switch=True,
    ),
    Option(
        "ws_compress",
        False,
        _switch,
        "offer per-message deflate on WebSockets (off: it costs 35-50 %% of throughput on small frames, "
        "and frames can no longer be written in batches)",
        switch=True,
    ),
    Option(
        "drain_timeout",
        30.0,
        _positive(float),
        "on shutdown, seconds running turns have to finish before they are stopped",
    ),
    # ── security (see SECURITY.md) ──
    Option(
        "tokens_file",
        "",
        str,
        "file of bearer tokens, one 'TOKEN USER [ROLE]' per line, ROLE user or admin, mode 0600 "
        "(make one with: navi-actor token --user NAME); NAVI_TOKENS may hold the same lines instead; "
        "empty with no NAVI_TOKENS: authentication off",
    ),
    Option(
        "insecure_no_auth",
        False,
        _switch,
        "serve a non-loopback address without authentication (only behind a proxy that authenticates); "
        "logged as a warning at every start",
        switch=True,
    ),
    Option(
        "allowed_origins",
        "",
        _origins,
        "comma-separated origins (scheme://host[:port]) whose pages may open WebSockets and send "
        "POST/DELETE requests, besides the server's own origin",
    ),
    Option("ws_ticket_ttl", 30.0, _positive(float), "seconds a WebSocket ticket from POST /ws-ticket stays valid"),
    Option(
        "rate_limit",
        120,
        _non_negative(int),
        "WebSocket messages a connection may send per minute (token bucket, bursts up to the same number); 0: no limit",
    ),
    Option(
        "if_busy",
        "reject",
        str,
        "what a message sent while its session's turn runs does, unless it or its session says "
        "otherwise: reject (already_running), enqueue (runs after the turns before it), interrupt "
        "(stops the running turn, then runs)",
        choices=("reject", "enqueue", "interrupt"),
    ),
    Option(
        "max_queued",
        10,
        _non_negative(int),
        "messages that may wait in one session's queue (if_busy enqueue); past it: queue_full; 0: no queue",
    ),
    Option(
        "upload_max_bytes",
        20 * 1024 * 1024,
        _positive(int),
        "largest upload (POST /sessions/ID/files), in bytes, all files of one request together",
    ),
    Option(
        "actor_env_allow",
        "NAVI_OPENAI_API_KEY",
        _env_names,
        "comma-separated environment variables actors keep although their names look secret "
        "(*TOKEN*, *SECRET*, *PASSWORD*, *KEY*, …); replaces the default",
    ),
    Option(
        "actor_rlimits",
        "",
        _rlimits,
        "resource limits of each actor process, e.g. nofile=1024,nproc=64,as=2G (nproc counts all "
        "processes of the server's user); empty: inherited",
    ),
    # ── the sandbox around each actor (see SECURITY.md) ──
    Option(
        "sandbox",
        "auto",
        str,
        "confine each actor to its own session (Landlock, seccomp, no capabilities): auto applies what "
        "the kernel supports and logs what it lacks, strict refuses to start unless every part can be "
        "enforced, off applies none (a warning at every start)",
        choices=("auto", "strict", "off"),
    ),
    Option(
        "sandbox_read",
        (),
        _existing_path,
        "a file or folder agents may also read and execute (repeat the option for more; env: paths "
        "separated by ':'); it must exist and must not contain the data folder",
        repeat=True,
    ),
    Option(
        "sandbox_write",
        (),
        _existing_path,
        "a file or folder agents may also write (repeatable, like --sandbox-read)",
        repeat=True,
    ),
    Option(
        "sandbox_net_connect",
        "",
        _ports,
        "comma-separated TCP ports agents may connect to, e.g. 443,11434; empty: every port "
        "(UDP is not confined)",
    ),
    Option(
        "sandbox_net_bind",
        "",
        _ports,
        "comma-separated TCP ports agents may bind (listen on); empty: none",
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    agent: str = "demo"
    data_dir: str = "./var"
    store: str = ""
    node_id: str = ""
    advertise_url: str = ""
    lease_ttl: float = 10.0
    cluster_secret_file: str = ""
    log_format: str = "auto"
    idle_timeout: float = 120.0
    heartbeat_interval: float = 20.0
    stop_grace: float = 2.0
    stop_term_after: float = 5.0
    stop_kill_after: float = 2.0
    replay_max_bytes: int = 16 * 1024 * 1024
    client_max_pending_bytes: int = 8 * 1024 * 1024
    turn_timeout: float = 1800.0
    actor_max_rss: int = 1024
    max_actors: int = 256
    actor_nice: int = 10
    warm_actors: int = 2
    no_prebind: bool = False
    turn_poll_ms: float = 3.0
    no_zygote: bool = False
    ws_compress: bool = False
    drain_timeout: float = 30.0
    tokens_file: str = ""
    insecure_no_auth: bool = False
    allowed_origins: str = ""
    ws_ticket_ttl: float = 30.0
    rate_limit: int = 120
    if_busy: str = "reject"
    max_queued: int = 10
    upload_max_bytes: int = 20 * 1024 * 1024
    actor_env_allow: str = "NAVI_OPENAI_API_KEY"
    actor_rlimits: str = ""
    sandbox: str = "auto"
    sandbox_read: tuple[str, ...] = ()
    sandbox_write: tuple[str, ...] = ()
    sandbox_net_connect: str = ""
    sandbox_net_bind: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def shared_store(self) -> bool:
        """Whether the store is one several nodes may share (PostgreSQL): a cluster secret is required."""
        return self.store.lower().startswith(("postgresql://", "postgres://"))


def _shown(default: Any) -> str:
    """A default as ``--help`` shows it: ``(none)`` for an empty one."""
    return "(none)" if default is None or default == "" or default == () else str(default)


def add_arguments(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    """Add every option to ``parser``, its default taken from the environment."""
    env = os.environ if environ is None else environ
    for opt in OPTIONS:
        default = opt.default
        raw = env.get(opt.env)
        if raw is not None and raw != "" and opt.repeat:
            try:
                default = tuple(opt.parse(part) for part in raw.split(os.pathsep) if part)
            except ValueError as exc:
                parser.error(f"environment variable {opt.env}={raw!r} is invalid: {exc}")
        elif raw is not None and raw != "":
            try:
                default = opt.parse(raw)
            except ValueError as exc:
                parser.error(f"environment variable {opt.env}={raw!r} is invalid: {exc}")
            if opt.choices and default not in opt.choices:
                parser.error(f"environment variable {opt.env}={raw!r}: choose from {', '.join(opt.choices)}")

        def typed(text: str, _opt: Option = opt) -> Any:
            try:
                return _opt.parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        typed.__name__ = opt.name.replace("_", "-")
        if opt.repeat:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                type=typed,
                action="append",
                default=None,
                metavar="PATH",
                help=f"{opt.help} [env {opt.env}; default (none)]",
            )
            parser.set_defaults(**{f"_env_{opt.name}": default})
            continue
        if opt.switch:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                action="store_true",
                default=default,
                help=f"{opt.help} [env {opt.env}; default {_shown(opt.default)}]",
            )
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            type=typed,
            default=default,
            choices=opt.choices,
            metavar=None if opt.choices else opt.name.upper(),
            help=f"{opt.help} [env {opt.env}; default {_shown(opt.default)}]",
        )


def from_namespace(ns: argparse.Namespace) -> Config:
    values = {}
    for opt in OPTIONS:
        value = getattr(ns, opt.name)
        if opt.repeat:  # flags given replace the environment's list
            value = tuple(value) if value else tuple(getattr(ns, f"_env_{opt.name}", ()) or ())
        values[opt.name] = value
    return Config(**values)
