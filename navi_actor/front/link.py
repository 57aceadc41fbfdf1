"""The front's end of its channel to the supervisor, driven by the event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import orjson

from navi_actor import logs
from supervisor.fdchannel import ChannelClosed, FdChannel

log = logs.get("navi.front.link")


class SupervisorLink:
    """Send requests to the supervisor; hand each message it sends to ``on_message``.

    ``on_message(msg, channel)`` may take a passed descriptor with
    ``channel.take_fd()`` (the ``spawned`` message carries one).
    """

    def __init__(self, fd: int, on_message: Callable[[dict[str, Any], FdChannel], None],
                 on_lost: Callable[[], None]) -> None:
        self.chan = FdChannel(socket.socket(fileno=fd))
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_lost = on_lost
        self.closed = False
        self.loop.add_reader(self.chan.fileno(), self._readable)

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.chan.send(orjson.dumps(msg))
        except ChannelClosed:
            self._lost()
            return
        if self.chan.wants_write:
            self.loop.add_writer(self.chan.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            done = self.chan.flush()
        except ChannelClosed:
            self._lost()
            return
        if done:
            self.loop.remove_writer(self.chan.fileno())

    def _readable(self) -> None:
        try:
            bodies = self.chan.receive()
        except ChannelClosed:
            self._lost()
            return
        for body in bodies:
            self.on_message(orjson.loads(body), self.chan)

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        log.error("front.supervisor_lost")
        self.on_lost()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.chan.fileno())
        self.loop.remove_writer(self.chan.fileno())
        self.chan.close()
