"""What the supervisor runs: the runtime hands it these callables and settings; it knows nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass(slots=True)
class Hooks:
    """What the supervisor runs; it knows nothing else of the runtime."""

    front_main: Callable[[int], int]  # (fd of the supervisor channel) -> exit code
    front_fds: tuple[int, ...]  # descriptors the front inherits (the listening socket)
    actor_main: Callable[[str, str, int, int], int]  # (actor id, session id, channel fd, lifeline fd)
    on_give_up: Callable[[], None]  # the front cannot be kept up: actors are gone, record their turns
    shutdown_grace: float  # seconds the front gets to drain and stop its runs
    actor_max_rss: int = 0  # bytes; an actor (with its children) above it is killed; 0 = no limit
    stop_term_after: float = 5.0  # the operator's stop ladder: seconds to SIGTERM
    stop_kill_after: float = 2.0  # … and from SIGTERM to SIGKILL
    control_path: Path | None = None  # where to serve the control socket
    on_reload: Callable[[], str | None] | None = None  # SIGHUP: load new agent code; None or why it failed
    warm_actors: int = 0  # actors forked ahead of need, ready for the next new session
    use_zygote: bool = True  # fork actors from an idle zygote (supervisor/zygote.py), not from the supervisor
    preload_front: Callable[[], None] | None = None  # imports only the front needs: after the zygote's fork
    actor_fds: tuple[int, ...] = ()  # descriptors every actor (and the zygote) inherits: the sandbox's rules
    sandbox: dict[str, Any] | None = None  # what the actors' sandbox enforces, for status and ps
