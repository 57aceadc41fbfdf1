"""structlog set up the same way in every process, tagged with role and pid.

Each line is written with a single ``write`` of the whole line, so lines from
several processes sharing stderr do not interleave mid-line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog


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
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr if file is None else file),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role=role, pid=os.getpid())


def get(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


def rebind(role: str) -> None:
    """In a forked child of a configured process: same output, new role and pid.

    Cheaper than :func:`configure` (no new processor objects), which matters
    for actors: everything a child allocates is memory of its own.
    """
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role=role, pid=os.getpid())
