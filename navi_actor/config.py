"""Server settings: one table drives the defaults, the environment and ``--help``.

Every option of ``navi-actor serve`` is also read from an environment variable
(``--idle-timeout`` ↔ ``NAVI_IDLE_TIMEOUT``); a command-line flag wins over the
environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    name: str  # attribute and --flag (underscores become dashes)
    default: Any
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None

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


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"a port is 0..65535, got {text!r}")
    return value


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
        "log_format",
        "auto",
        str,
        "log lines as 'console' (readable) or 'json' (one object per line); "
        "auto = console on a terminal, json otherwise",
        choices=("auto", "console", "json"),
    ),
    Option("idle_timeout", 120.0, _positive(float), "seconds an actor with no running turn lives before it exits"),
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
        "byte bound of a turn's replay buffer (deltas are merged, so this is about text size)",
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
        "warm_actors",
        2,
        _non_negative(int),
        "actors forked ahead of need, so a new session's first turn does not wait for a fork (0: none)",
    ),
    Option(
        "drain_timeout",
        30.0,
        _positive(float),
        "on shutdown, seconds running turns have to finish before they are stopped",
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    agent: str = "demo"
    data_dir: str = "./var"
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
    warm_actors: int = 2
    drain_timeout: float = 30.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


def add_arguments(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    """Add every option to ``parser``, its default taken from the environment."""
    env = os.environ if environ is None else environ
    for opt in OPTIONS:
        default = opt.default
        raw = env.get(opt.env)
        if raw is not None and raw != "":
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
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            type=typed,
            default=default,
            choices=opt.choices,
            metavar=None if opt.choices else opt.name.upper(),
            help=f"{opt.help} [env {opt.env}; default {opt.default}]",
        )


def from_namespace(ns: argparse.Namespace) -> Config:
    return Config(**{opt.name: getattr(ns, opt.name) for opt in OPTIONS})
