"""What operators can ask of the supervisor: list, stop, kill, status — and its counters.

Requests come from the control socket (``navi-actor ps`` / ``kill``) or from
the front (``GET /runs``, ``POST /runs/{id}/kill``, ``/metrics``, ``/healthz``);
both reach :meth:`Operations.request`. What only the front knows of each
actor (state, run, events, viewers) is asked of it for each ``list``, so the
rows are as of the moment of asking; the supervisor adds what only it knows
(pid, memory, CPU). The front also reports every second, so ``list`` works
while the front is down or slow (STATUS_WAIT): each row's ``state_age`` says
how old its state is (0 when the front answered).

What the counts count, the same in ``status``, ``/healthz``, ``/metrics`` and
``navi-actor ps``: ``actors`` is every actor process alive (forked and not yet
reaped), warm ones included; ``warm`` those of them with no session yet; the
others have a session and are in one of the states ``starting`` (no hello to
the front yet), ``idle``, ``running`` or ``stopping``.

An operator's stop goes to the actor over its lifeline (no front needed),
then climbs the same ladder as a user's stop: SIGTERM to the actor's process
group after ``term_after``, SIGKILL ``kill_after`` later. The actor exits when
its turn has ended. ``force`` is SIGKILL now.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any, Callable, Protocol

import orjson
import psutil
import structlog

from supervisor.actors import Actor
from supervisor.control import ControlServer
from supervisor.fdchannel import ChannelClosed
from supervisor.front import Front
from supervisor.hooks import Hooks
from supervisor.pool import WarmPool
from supervisor.spawner import Spawner

log = structlog.get_logger("navi.supervisor.ops")

KILLED_BY_OPERATOR = "killed_by_operator"
STATUS_WAIT = 0.5  # seconds a list waits for the front's answer before it uses the last report
STATES = ("starting", "idle", "running", "stopping")


class SupervisorView(Protocol):
    """What operations read of the supervisor (supervisor/supervisor.py), which imports this module."""

    hooks: Hooks
    started: float
    front: Front
    spawner: Spawner
    pool: WarmPool
    control: ControlServer | None

    @property
    def stage(self) -> str: ...

    @property
    def actors(self) -> dict[int, Actor]: ...


class Operations:
    def __init__(self, sup: SupervisorView, term_after: float, kill_after: float) -> None:
        self.sup = sup
        self.term_after = term_after
        self.kill_after = kill_after
        self.status: dict[str, dict[str, Any]] = {}  # actor id → the front's last report
        self.spawns = 0
        self.deaths: Counter[str] = Counter()  # cause kind → count
        self.ladder: Counter[str] = Counter()  # step the supervisor took → count
        self._procs: dict[int, psutil.Process] = {}
        self._ladders: dict[int, tuple[float, float]] = {}  # pid → (SIGTERM at, SIGKILL at)
        self.status_at = 0.0  # wall time of the front's last report
        self._waiting: list[Callable[[dict[str, Any]], None]] = []  # lists waiting for the front's report
        self._asked_at: float | None = None  # monotonic time the front was asked, while lists wait

    # ── requests ─────────────────────────────────────────────────────────
    def request(self, req: dict[str, Any], respond: Callable[[dict[str, Any]], None]) -> None:
        """Answer ``req`` through ``respond``: at once, or (``list``) once the front said how its actors are."""
        sup = self.sup
        if req.get("op") != "list" or sup.front.chan is None:
            respond(self.handle(req))
            return
        self._waiting.append(respond)
        if self._asked_at is None:
            self._asked_at = time.monotonic()
            sup.front.send({"op": "status_request"})

    def _answer_lists(self) -> None:
        waiting, self._waiting, self._asked_at = self._waiting, [], None
        if waiting:
            reply = self.handle({"op": "list"})
            for respond in waiting:
                respond(reply)

    def front_gone(self) -> None:
        """The front's channel closed: waiting lists get the last report."""
        self._answer_lists()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "list":  # rows of actors with a session; warm ones are only counted
            return {"ok": True, "actors": self.rows(), "warm": len(self.sup.pool),
                    "agent_start": self.sup.pool.start_state()}
        if op == "status":
            return {"ok": True, **self.state()}
        if op in ("stop", "kill"):
            return self._act(req, force=op == "kill" or bool(req.get("force")))
        return {"ok": False, "error": f"unknown op {op!r}; try list, status, stop or kill"}

    def state(self) -> dict[str, Any]:
        sup = self.sup
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - sup.started, 1),
            "front_pid": sup.front.pid,
            "front_restarts": sup.front.restarts,
            "stage": sup.stage,
            "actors": len(sup.actors),  # warm ones included: see the module's docstring
            "warm": len(sup.pool),
            "warm_target": sup.pool.size,
            "agent_start": sup.pool.start_state(),  # whether new actors start their agent; paused pool
            "zygote": sup.spawner.zygote_state(),
            "sandbox": sup.hooks.sandbox,
            "limits": {"actor_max_rss": sup.hooks.actor_max_rss, "term_after": self.term_after,
                       "kill_after": self.kill_after},
            "spawns": self.spawns,
            "deaths": dict(self.deaths),
            "ladder": dict(self.ladder),
            "control_refused": sup.control.refused if sup.control is not None else 0,
        }

    def rows(self) -> list[dict[str, Any]]:
        now = time.time()
        age = round(max(0.0, now - self.status_at), 1) if self.status_at else None
        out = []
        for actor in list(self.sup.actors.values()):
            if self.sup.pool.holds(actor.pid):
                continue  # warm: no session yet (counted in status)
            st = self.status.get(actor.actor_id, {})
            proc = self._proc(actor.pid)
            rss, cpu = 0, 0.0
            if proc is not None:
                try:
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_percent(None)
                except psutil.Error:
                    pass
            started = st.get("turn_started")
            state = st.get("state", "starting")
            if state not in STATES:
                state = "starting"
            if actor.pid in self._ladders and state != "idle":
                state = "stopping"
            out.append({
                "session_id": actor.session_id,
                "actor_id": actor.actor_id,
                "pid": actor.pid,
                "state": state,
                "state_age": age if st else None,  # seconds since the front said so (None: it has not)
                "run_id": st.get("run_id"),
                "turn_age": round(now - started, 1) if started else None,
                "idle_for": round(now - st["idle_since"], 1) if st.get("idle_since") and not started else None,
                "events": st.get("events", 0),
                "viewers": st.get("viewers", 0),
                "queued": st.get("queued", 0),  # messages waiting in its session's queue
                "owner": st.get("owner"),
                "rss": rss,
                "cpu_percent": cpu,
                "sandbox": self.sup.hooks.sandbox,
            })
        return out

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first reading only starts the measurement
            except psutil.Error:
                return None
        return proc

    def _act(self, req: dict[str, Any], force: bool) -> dict[str, Any]:
        sessions = set(req.get("session_ids") or [])
        pids = set(req.get("pids") or [])
        results = []
        for actor in list(self.sup.actors.values()):
            if self.sup.pool.holds(actor.pid):
                continue
            if actor.session_id in sessions or actor.pid in pids:
                results.append(self.stop_actor(actor, force))
                sessions.discard(actor.session_id)
                pids.discard(actor.pid)
        for sid in sessions:
            results.append({"session_id": sid, "pid": None, "outcome": "not found"})
        for pid in pids:
            results.append({"session_id": None, "pid": pid, "outcome": "not found"})
        return {"ok": True, "results": results}

    # ── the operator's ladder ────────────────────────────────────────────
    def stop_actor(self, actor: Actor, force: bool) -> dict[str, Any]:
        row = {"session_id": actor.session_id, "pid": actor.pid}
        if force:
            actor.killed_for = "agent process was killed by an operator (SIGKILL)"
            actor.kill_code, actor.kill_kind = KILLED_BY_OPERATOR, "operator"
            self._signal(actor, signal.SIGKILL, "sigkill")
            return {**row, "outcome": "killed"}
        if actor.pid in self._ladders:
            return {**row, "outcome": "already stopping"}
        reason = {"code": KILLED_BY_OPERATOR, "message": "The turn was stopped by an operator."}
        # The front times every stop from its request (navi_stop_seconds): tell it first.
        self.sup.front.send({"op": "operator_stop", "actor_id": actor.actor_id})
        try:
            actor.lifeline.send(orjson.dumps({"op": "stop", "reason": reason}))
        except ChannelClosed:
            return {**row, "outcome": "already ended"}
        now = time.monotonic()
        self._ladders[actor.pid] = (now + self.term_after, now + self.term_after + self.kill_after)
        self.ladder["stop_message"] += 1
        log.info("supervisor.operator_stop", actor_pid=actor.pid, session_id=actor.session_id)
        return {**row, "outcome": "stopping"}

    def _signal(self, actor: Actor, sig: int, step: str) -> None:
        self.ladder[step] += 1
        log.warning("supervisor.ladder_step", actor_pid=actor.pid, session_id=actor.session_id, step=step)
        try:
            os.killpg(actor.pid, sig)
        except ProcessLookupError:
            pass

    def tick(self, now: float) -> None:
        """Take the operator ladders' next steps that are due; answer lists the front left waiting."""
        if self._asked_at is not None and now - self._asked_at >= STATUS_WAIT:
            log.warning("supervisor.front_status_late", waited=round(now - self._asked_at, 2),
                        note="listing with the front's last report")
            self._answer_lists()
        for pid, (term_at, kill_at) in list(self._ladders.items()):
            actor = self.sup.actors.get(pid)
            if actor is None:
                del self._ladders[pid]
                continue
            if now >= kill_at:
                actor.killed_for = "agent process was stopped by an operator and did not exit (SIGKILL)"
                actor.kill_code, actor.kill_kind = KILLED_BY_OPERATOR, "operator"
                self._signal(actor, signal.SIGKILL, "sigkill")
                del self._ladders[pid]
            elif now >= term_at and actor.killed_for is None:
                actor.killed_for = "agent process was stopped by an operator (SIGTERM)"
                actor.kill_code, actor.kill_kind = KILLED_BY_OPERATOR, "operator"
                self._signal(actor, signal.SIGTERM, "sigterm")

    # ── bookkeeping ──────────────────────────────────────────────────────
    def on_front_status(self, actors: dict[str, dict[str, Any]]) -> None:
        self.status = actors
        self.status_at = time.time()
        self._answer_lists()

    def on_spawn(self) -> None:
        self.spawns += 1

    def on_exit(self, actor: Actor, kind: str) -> None:
        self.deaths[kind] += 1
        self._ladders.pop(actor.pid, None)
        self._procs.pop(actor.pid, None)
        self.status.pop(actor.actor_id, None)
