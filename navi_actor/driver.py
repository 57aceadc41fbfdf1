"""The turn driver: one turn of the agent, from ``turn`` to ``turn_done``, and its stop.

:class:`TurnDriver` starts the agent's task for a turn (:meth:`~TurnDriver._start_turn`),
reads what the agent yields (:meth:`~TurnDriver._drive`), gives each event its
``seq``, keeps it in the turn's replay buffer and queues its JSON on the
channel (:meth:`~TurnDriver._emit_text`, :meth:`~TurnDriver._emit`: the hot path
of every event), and ends the turn with its final event and result in one
``turn_done`` (:meth:`~TurnDriver._end_turn`). A stop sets the agent's stop
event, and after ``--stop-grace`` cancels its task (:meth:`~TurnDriver._stop`,
:meth:`~TurnDriver._cancel`); the supervisor's ladder goes on from there.

It is a base class of :class:`navi_actor.actor.Actor`, not an object of its own:
the hot path reads the actor's current channel (a new front may replace it
mid-turn) with no hop more than it had when all of this was in one class.
What it needs from the actor is declared at the top of the class.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import orjson
import structlog

from navi_actor import framing, logs, protocol
from navi_actor.channel import Channel
from navi_actor.config import Config
from navi_actor.events import FINISH_REASONS, AgentError, StreamEnd, TextDelta, event_to_wire
from navi_actor.framing import dumps
from navi_actor.replay import EndedTurn, ReplayBuffer
from navi_actor.turn import Turn, current_stop_event

_dumps = orjson.dumps  # a text delta needs no fallback: str, str, int

log = logs.get("navi.actor")


def _finish_reason(reason: Any) -> str | None:
    """The agent's finish reason as ``stream_end`` carries it: one of FINISH_REASONS, or null."""
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "unknown"


class Run:
    """The running (or finished, not yet persisted) turn: its events' state and its task."""

    __slots__ = (
        "run_id", "seq", "start", "buffer", "stop_event", "task", "text", "thinking",
        "tool_calls", "end", "t0", "cancelled", "grace_timer", "done", "done_frame", "stop_reason",
        "start_logged", "expected", "polled",
    )

    def __init__(self, run_id: str, start: dict[str, Any], max_bytes: int) -> None:
        self.run_id = run_id
        self.start = start
        self.seq: int = start["seq"]
        self.buffer = ReplayBuffer(max_bytes)
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.end: StreamEnd | None = None
        self.t0 = time.monotonic()
        self.cancelled = False
        self.grace_timer: asyncio.TimerHandle | None = None
        self.done = False
        self.done_frame: bytes | None = None  # turn_done, kept until the front says persisted
        self.stop_reason: dict[str, str] | None = None  # why the runtime stopped it, if not the user
        self.start_logged = False
        self.expected = False  # the front said it was coming (expect) while the actor was idle
        self.polled = False  # ... and the actor read it while it polled for it


class TurnDriver:
    """Run one turn at a time: the agent's task, its events, its end, its stop."""

    # What the actor provides (navi_actor.actor.Actor):
    config: Config
    loop: asyncio.AbstractEventLoop
    channel: Channel | None
    runner: Callable[[Turn], AsyncIterator[Any]] | None
    run: Run | None
    ended: EndedTurn | None  # the last persisted turn; a new turn drops it
    _closing: bool  # the actor exits once this turn is persisted
    _expected: bool  # the front said a turn is coming (expect): the next turn's Run.expected
    _send: Callable[[bytes], None]  # a framed control message, after the events queued before it
    _title: Callable[[str], None]  # the process title's state
    _agent_raised: Callable[[BaseException], None]  # a BaseException left the agent: the process ends

    def _start_turn(self, msg: dict[str, Any]) -> None:
        """Start the turn ``msg`` describes (the actor is confined), or reject it if one is running."""
        run_id = msg["run_id"]
        if self.run is not None:
            self._send(framing.control({"op": "rejected", "run_id": run_id, "code": protocol.ALREADY_RUNNING}))
            return
        self.ended = None  # a new turn: the last one can no longer be resumed here
        t = msg["turn"]
        run = Run(run_id, msg["start"], self.config.replay_max_bytes)
        run.expected, self._expected = self._expected, False
        turn = Turn(
            session_id=t["session_id"],
            run_id=run_id,
            content=t["content"],
            display_content=t["display_content"],
            images=t.get("images") or [],
            files=t.get("files") or [],
            history=t.get("history") or [],
            stop_event=run.stop_event,
            upload_dir=t.get("upload_dir") or "",
        )
        self.run = run
        run.task = self.loop.create_task(self._drive(run, turn))
        # After the agent's first step (the task's, scheduled first), which writes its first
        # event: the line and the title cost a fresh actor 0.1-0.2 ms (first-touch page faults).
        self.loop.call_soon(self._turn_started, run)

    def _turn_started(self, run: Run) -> None:
        self._log_start(run)
        if self.run is run and not run.done and not run.stop_event.is_set():
            self._title("running")

    @staticmethod
    def _log_start(run: Run) -> None:
        """``actor.turn_start``, once, and before the turn's end (which its first step may reach)."""
        if not run.start_logged:
            run.start_logged = True
            log.info("actor.turn_start", run_id=run.run_id, expected=run.expected, polled=run.polled)

    async def _drive(self, run: Run, turn: Turn) -> None:
        assert self.runner is not None
        current_stop_event.set(run.stop_event)
        structlog.contextvars.bind_contextvars(session_id=turn.session_id, run_id=run.run_id)
        error: BaseException | None = None
        agen = self.runner(turn)
        try:
            async for ev in agen:
                if type(ev) is TextDelta:
                    self._emit_text(run, ev.delta)
                elif type(ev) is StreamEnd:
                    run.end = ev
                    continue
                else:
                    self._emit(run, event_to_wire(ev))
                if not self.channel.writable.is_set():
                    await self.channel.writable.wait()
        except asyncio.CancelledError:
            if not run.cancelled:
                raise
        except Exception as exc:
            error = exc
            log.exception("actor.agent_error")
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, or the agent's own kind
            log.exception("actor.agent_base_exception")
            self._agent_raised(exc)
            return
        finally:
            if run.cancelled or error is not None:
                try:
                    await asyncio.wait_for(agen.aclose(), 1.0)
                except BaseException:
                    pass
        self._end_turn(run, error)

    def _emit_text(self, run: Run, delta: str) -> None:
        """The common event, without the general path's dict copy and checks."""
        if type(delta) is not str:
            return self._emit(run, event_to_wire(TextDelta(delta)))
        run.seq = seq = run.seq + 1
        run.text.append(delta)
        run.buffer.append_delta("stream_delta", seq, delta)
        self.channel.send_event(_dumps({"type": "stream_delta", "delta": delta, "seq": seq}))

    def _emit(self, run: Run, wire: dict[str, Any]) -> None:
        run.seq += 1
        seq = wire["seq"] = run.seq
        kind = wire["type"]
        if kind == "stream_delta":
            delta = wire.get("delta")
            if type(delta) is str:
                run.text.append(delta)
        elif kind == "thinking_delta":
            delta = wire.get("delta")
            if type(delta) is str:
                run.thinking.append(delta)
        elif kind == "turn_thinking":
            thinking = wire.get("thinking")
            if type(thinking) is str:
                run.thinking.append(thinking)
        elif kind == "tool_call":
            run.tool_calls.append(
                {
                    "tool": wire.get("tool"),
                    "args": wire.get("args"),
                    "result": wire.get("result"),
                    "success": wire.get("success"),
                    "is_subagent": wire.get("is_subagent", False),
                    "metadata": wire.get("metadata"),
                }
            )
        data = dumps(wire)
        if ReplayBuffer.is_plain_delta(wire):
            run.buffer.append_delta(kind, seq, wire["delta"])
        else:
            run.buffer.append(seq, data)
        self.channel.send_event(data)

    def _end_turn(self, run: Run, error: BaseException | None) -> None:
        if run.grace_timer is not None:
            run.grace_timer.cancel()
        end = run.end or StreamEnd()
        content = end.full_content if end.full_content is not None else "".join(run.text)
        elapsed = round(time.monotonic() - run.t0, 3)
        tool_count = end.tool_call_count if end.tool_call_count is not None else len(run.tool_calls)
        token_count = end.token_count if end.token_count is not None else len(run.text)
        stats = {
            "elapsed_seconds": end.elapsed_seconds if end.elapsed_seconds is not None else elapsed,
            "tool_call_count": tool_count,
            "token_count": token_count,
            "context_tokens": end.context_tokens,
            "max_context_tokens": end.max_context_tokens,
            "finish_reason": _finish_reason(end.finish_reason),
        }
        run.seq += 1
        err_text = err_code = None
        if error is not None:
            status = "failed"
            if isinstance(error, AgentError):
                err_text, err_code = error.message, error.code
            else:
                err_text, err_code = f"Internal error: {error}", protocol.AGENT_ERROR
            final = protocol.error_event(err_text, err_code, run.seq, run_id=run.run_id)
        elif run.stop_event.is_set():
            status = "stopped"
            step = "cancel" if run.cancelled else "event"
            stats["stop_step"] = step
            final = protocol.stream_stopped(run.seq, run.run_id, step, content, run.stop_reason)
            if run.stop_reason:
                err_text, err_code = run.stop_reason["message"], run.stop_reason["code"]
        else:
            status = "done"
            final = {"type": "stream_end", "seq": run.seq, "run_id": run.run_id, "content": content, **stats}
        result = {
            "status": status,
            "content": content,
            "thinking": "".join(run.thinking),
            "tool_calls": run.tool_calls,
            "last_seq": run.seq,
            "stats": stats,
            "error": err_text,
            "error_code": err_code,
        }
        run.done = True
        self._log_start(run)
        self._title("exiting" if self._closing else "idle")
        log.info(
            "actor.turn_end", run_id=run.run_id, status=status, events=len(run.buffer),
            elapsed=elapsed,
        )
        msg = {"op": "turn_done", "run_id": run.run_id, "final": final, "result": result}
        run.done_frame = framing.frame(dumps(msg))
        self._send(run.done_frame)

    def _stop(self, run_id: Any, reason: dict[str, str] | None = None) -> None:
        """Stop step one: set the agent's stop event; step two, after the grace: :meth:`_cancel`."""
        run = self.run
        if run is None or run.run_id != run_id or run.done:
            return
        if reason and run.stop_reason is None:
            run.stop_reason = reason
        if not run.stop_event.is_set():
            log.info("actor.stop", run_id=run_id)
            self._title("stopping")
            run.stop_event.set()
            run.grace_timer = self.loop.call_later(self.config.stop_grace, self._cancel, run)

    def _cancel(self, run: Run) -> None:
        if run.task is not None and not run.task.done() and not run.done:
            log.info("actor.stop_cancel", run_id=run.run_id)
            run.cancelled = True
            run.task.cancel()
