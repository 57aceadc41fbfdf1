"""structlog set up the same way in every process, tagged with role and pid.

Each line is written with a single ``write`` of the whole line, so lines from
several processes sharing stderr do not interleave mid-line.

A line that cannot be written (the log's disk is full, its pipe is closed)
is dropped and counted (:func:`dropped_lines`); logging never raises into
the code that logs, so a full disk cannot take a process down through its
logs. After a dropped line, a process starts its next line with a newline,
so that a line cut short by the full disk (its own or another process's)
does not swallow it; this may leave a blank line.

``role`` and ``pid`` (and, in an actor, ``actor_id`` and ``session_id``) are
the process's, not a context variable's: a context variable does not reach a
thread (the actor's lifeline reader) nor a callback it schedules with
``call_soon_threadsafe``, and each asyncio task holds a copy of the context
it was created in, so a value bound later would not reach it. They are kept
in one dict that every line reads (:func:`bind_process`), whatever thread or
task logs it. A value given to the call itself wins, then the process's, then
context variables (a turn's ``run_id``). ``pid`` is refreshed in every forked
child, however it was forked.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, MutableMapping, TextIO

import structlog

_dropped = 0  # lines this process could not write


def dropped_lines() -> int:
    """Log lines this process dropped because they could not be written."""
    return _dropped


class _LineSink:
    """What structlog writes to: one ``os.write`` per line on a real file, errors swallowed and counted.

    Python's own buffering is bypassed where there is a descriptor: a buffer
    that failed to flush would keep its bytes and fail again with every line.
    """

    def __init__(self, file: TextIO) -> None:
        self.file = file
        try:
            self.fd: int | None = file.fileno()
        except (AttributeError, OSError, ValueError):  # io.StringIO, pytest's capture
            self.fd = None
        else:
            try:
                file.flush()  # what Python buffered before goes first
            except (OSError, ValueError):
                pass
        self._cut = False  # a line was dropped: start the next one on a fresh line

    def write(self, text: str) -> None:
        global _dropped
        if self.fd is None:
            try:
                self.file.write(text)
                self.file.flush()
            except (OSError, ValueError):
                _dropped += 1
            return
        data = memoryview(("\n" + text if self._cut else text).encode("utf-8", "replace"))
        self._cut = False
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError:
            _dropped += 1
            self._cut = True  # this line, or another process's, may have been cut short

    def flush(self) -> None:
        pass
_process: dict[str, Any] = {}


def _add_process_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _process.items():
        if key not in event_dict:
            event_dict[key] = value
    return event_dict


def _after_fork() -> None:
    if _process:
        _process["pid"] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def configure(role: str, log_format: str = "auto", file: TextIO | None = None) -> None:
    """(Re)configure logging for this process; call again in each child. ``file``: stderr by default."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.reset_defaults()
    structlog.configure(
        processors=[
            _add_process_fields,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(
            file=_LineSink(sys.stderr if file is None else file)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    rebind(role)


def get(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


def rebind(role: str, **fields: Any) -> None:
    """In a forked child of a configured process: same output, new role and pid (and ``fields``).

    Cheaper than :func:`configure` (no new processor objects), which matters
    for actors: everything a child allocates is memory of its own.
    """
    structlog.contextvars.clear_contextvars()
    _process.clear()
    _process.update(role=role, pid=os.getpid())
    bind_process(**fields)


def bind_process(**fields: Any) -> None:
    """Tag every later line of this process, from any thread or task; a value of None removes the tag."""
    for key, value in fields.items():
        if value is None:
            _process.pop(key, None)
        else:
            _process[key] = value


def process_fields() -> dict[str, Any]:
    """What :func:`bind_process` holds now (a copy)."""
    return dict(_process)
