"""An actor's lifeline to the supervisor: new fronts, operator stops, its session; EOF is the end.

The supervisor holds the other end of a socketpair per actor. When it closes
(the supervisor died), the actor kills its whole process group, the agent's
own children included. A warm actor reads the lifeline on its event loop,
which runs no agent code yet and must stay single-threaded until it is
confined to its session; then a thread reads it, so that an agent blocking
the loop cannot keep its process group alive after the supervisor is gone.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import signal
import socket
from collections import deque
from typing import Any, Callable

import orjson

from navi_actor import framing


class Lifeline:
    """The lifeline's messages: new fronts, operator stops, the session of a warm actor; EOF.

    A warm actor reads it on its loop (it runs no agent code yet, and must stay
    single-threaded until it is confined); once it has its session, a thread
    reads it, so that an agent blocking the loop cannot keep its process group
    alive after the supervisor is gone.
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.decoder = framing.FrameDecoder(1024 * 1024)
        self.fds: deque[int] = deque()

    def feed(self, data: bytes, got: list[int], call: Callable[..., Any]) -> None:
        """Handle what was read; ``call(fn, *args)`` runs ``fn`` on the loop."""
        actor = self.actor
        if not data:
            os.killpg(0, signal.SIGKILL)  # the supervisor is gone: take every process of ours along
            return
        self.fds.extend(got)
        for body in self.decoder.feed(data):
            msg = orjson.loads(body)
            op = msg.get("op")
            if op == "front" and self.fds:
                call(actor.attach_front, self.fds.popleft())
            elif op == "stop":
                call(actor.operator_stop, msg.get("reason"))
            elif op == "assign":
                call(actor.assign, str(msg.get("actor_id")), str(msg.get("session_id")))


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    try:
        data, got, _flags, _addr = socket.recv_fds(sock, 65536, 16)
    except BlockingIOError:
        raise
    except OSError:
        data, got = b"", []
    return data, got


def _watch_lifeline(lifeline: Lifeline, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Thread: read the lifeline until the supervisor closes it (or the loop is gone)."""
    while True:
        data, got = _receive(sock)
        try:
            lifeline.feed(data, got, loop.call_soon_threadsafe)
        except RuntimeError:  # the loop is closed: this actor is on its way out
            return
        if not data:
            return


def read_on_loop(actor: Any, loop: asyncio.AbstractEventLoop) -> None:
    """A warm actor: read the lifeline from the loop until :func:`start_thread`."""
    sock = actor.lifeline
    assert sock is not None
    sock.setblocking(False)
    lifeline = actor.lifeline_reader = Lifeline(actor)

    def readable() -> None:
        while actor.lifeline_reader is lifeline and not actor.confined:
            try:
                data, got = _receive(sock)
            except BlockingIOError:
                return
            lifeline.feed(data, got, lambda fn, *args: fn(*args))
            if not data:
                loop.remove_reader(sock.fileno())
                return

    loop.add_reader(sock.fileno(), readable)


def start_thread(actor: Any, loop: asyncio.AbstractEventLoop) -> None:
    sock = actor.lifeline
    assert sock is not None
    lifeline = actor.lifeline_reader  # a warm actor's, read on the loop until now
    if lifeline is not None:
        loop.remove_reader(sock.fileno())
    else:
        lifeline = actor.lifeline_reader = Lifeline(actor)
    sock.setblocking(True)
    # _thread, not threading.Thread: start() waits for the new thread to run, a context switch
    # that cost a warm actor about 0.3 ms on its first turn's path (it starts this thread then).
    _thread.start_new_thread(_watch_lifeline, (lifeline, loop, sock))
