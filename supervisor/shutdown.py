"""How the supervisor stops: the front drains, then the actors go, each step with a deadline.

Stages: ``running`` → ``draining`` (the front was asked to finish its turns
and stop) → ``stopping_actors`` (SIGTERM to every actor's process group, then
SIGKILL) → exit, once no child is left. A second SIGTERM or Ctrl-C skips the
drain; a third kills the front. The supervisor also comes here when it gives
up (a front that cannot be kept up): actors are killed at once, and it exits 1.
"""

from __future__ import annotations

import signal
import time

import structlog

from supervisor.actors import killpg
from supervisor.front import Front
from supervisor.hooks import Hooks
from supervisor.notify import sd_notify
from supervisor.spawner import Spawner

log = structlog.get_logger("navi.supervisor")

STOP_ACTORS_GRACE = 2.0  # seconds from SIGTERM to SIGKILL for actors at shutdown
DRAIN_MARGIN = 5.0  # seconds the front gets past its own drain budget before it is killed


class Shutdown:
    """The shutdown's stage, its next deadline, and the exit code once it is over."""

    def __init__(self, hooks: Hooks, front: Front, spawner: Spawner) -> None:
        self.hooks = hooks
        self.front = front
        self.spawner = spawner
        self.stage = "running"  # running → draining → stopping_actors
        self.deadline: float | None = None
        self.exit_code: int | None = None  # set when the supervisor may exit
        self._requests = 0
        self._final_code = 0

    @property
    def running(self) -> bool:
        return self.stage == "running"

    def request(self, why: str) -> None:
        """SIGTERM or SIGINT: the first drains, the second skips the drain, the third kills the front."""
        self._requests += 1
        n = self._requests
        log.info("supervisor.shutdown_requested", signal=why, count=n)
        if self.stage == "stopping_actors":
            self._kill_actors()
            return
        if self.front.pid is None:
            self.stop_actors()
            return
        if n == 1:
            sd_notify("STOPPING=1")
            self.stage = "draining"
            self.deadline = time.monotonic() + self.hooks.shutdown_grace + DRAIN_MARGIN
            self.front.send({"op": "shutdown", "drain": True})
        elif n == 2:
            log.info("supervisor.skip_drain")
            self.front.send({"op": "shutdown", "drain": False})
        else:
            self.front.kill()

    def stop_actors(self) -> None:
        """The front is gone (or was never there): SIGTERM every actor's group, SIGKILL after the grace."""
        self.stage = "stopping_actors"
        self.spawner.retire_zygote()
        self.front.restart_at = None
        self.deadline = time.monotonic() + STOP_ACTORS_GRACE
        for actor in list(self.spawner.actors.values()):
            killpg(actor.pid, signal.SIGTERM)

    def give_up(self, reason: str) -> None:
        """The front cannot be kept up: kill every actor, let the runtime record their turns, exit 1."""
        log.error("supervisor.giving_up", reason=reason)
        self._kill_actors()
        try:
            self.hooks.on_give_up()
        except Exception:
            log.exception("supervisor.give_up_hook_failed")
        self.stage = "stopping_actors"
        self.deadline = time.monotonic() + STOP_ACTORS_GRACE
        self._final_code = 1

    def tick(self, now: float) -> None:
        """Past a deadline, take the next step; with every child reaped, set the exit code."""
        if self.stage == "draining" and self.deadline is not None and now >= self.deadline:
            if self.front.pid is not None:
                log.warning("supervisor.front_kill", reason="front did not finish shutting down in time")
                self.front.kill()
            self.deadline = now + 2.0
        if self.stage == "stopping_actors":
            if not self.spawner.actors and self.front.pid is None:
                self.exit_code = self._final_code
            elif self.deadline is not None and now >= self.deadline:
                self._kill_actors()
                self.front.kill()
                self.deadline = now + 1.0

    def _kill_actors(self) -> None:
        for actor in list(self.spawner.actors.values()):
            killpg(actor.pid, signal.SIGKILL)
