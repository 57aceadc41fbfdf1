"""navi_actor.channel on a real socketpair and a real uvloop: frames leave while the loop is blocked,
in order, once each, and bursts still go out in few writes."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from typing import Any

import orjson
import uvloop

from navi_actor import framing
from navi_actor.channel import Channel

DEADLINE = 5.0


class Reader(threading.Thread):
    """The front's end: decodes frames into ``bodies``; ``pace`` seconds between reads (a slow front)."""

    def __init__(self, sock: socket.socket, pace: float = 0.0, read_size: int = 65536) -> None:
        super().__init__(daemon=True)
        self.sock, self.pace, self.read_size = sock, pace, read_size
        self.bodies: list[bytes] = []
        self.reads = 0
        self.sends: Any = lambda: 0  # the writer's count of sends (set by run_on_uvloop)
        self.changed = threading.Condition()

    def run(self) -> None:
        decoder = framing.FrameDecoder(framing.MAX_ACTOR_FRAME)
        while True:
            data = self.sock.recv(self.read_size)
            if not data:
                return
            self.reads += 1
            with self.changed:
                self.bodies.extend(decoder.feed(data))
                self.changed.notify_all()
            if self.pace:
                time.sleep(self.pace)

    def wait_for(self, count: int, timeout: float = DEADLINE) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.bodies) >= count, timeout)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(b[1:]) for b in self.bodies if b[:1] == b"E"]


class CountingSocket(socket.socket):
    """The actor's end, counting the sends that the kernel took bytes from."""

    sends = 0

    def send(self, data: Any, flags: int = 0) -> int:
        n = super().send(data, flags)
        self.sends += 1
        return n


def event(i: int, size: int = 0) -> bytes:
    return orjson.dumps({"type": "stream_delta", "delta": "x" * size, "seq": i})


def run_on_uvloop(body: Any, pace: float = 0.0) -> Reader:
    """Run ``body(channel)`` (a coroutine function) on uvloop with a Channel to a Reader."""
    pair, theirs = socket.socketpair()
    ours = CountingSocket(fileno=pair.detach())
    reader = Reader(theirs, pace)
    reader.sends = lambda: ours.sends
    reader.start()

    async def main() -> None:
        channel = Channel(asyncio.get_running_loop(), ours, lambda msg: None, lambda ch: None)
        try:
            await body(channel, reader)
        finally:
            channel.close(linger=DEADLINE)

    uvloop.run(main())
    reader.join(DEADLINE)
    theirs.close()
    return reader


def block_until(cond: Any, timeout: float = DEADLINE) -> bool:
    """Block the calling thread (the event loop's, in these tests) until ``cond()``: an agent in time.sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_frame_yielded_before_the_loop_blocks_is_written_while_it_blocks() -> None:
    async def body(channel: Channel, reader: Reader) -> None:
        channel.send_event(event(1))
        assert block_until(lambda: len(reader.bodies) >= 1), "the first frame of a loop turn goes out at once"

    assert [e["seq"] for e in run_on_uvloop(body).events()] == [1]


def test_the_rest_of_a_burst_is_written_by_the_flusher_while_the_loop_blocks() -> None:
    async def body(channel: Channel, reader: Reader) -> None:
        for i in range(1, 51):
            channel.send_event(event(i))
        assert block_until(lambda: len(reader.bodies) >= 50), "the queued tail of the burst must leave"

    reader = run_on_uvloop(body)
    assert [e["seq"] for e in reader.events()] == list(range(1, 51))
    assert reader.sends() < 10, "one write for the first frame, one for the rest (not one each)"


def test_a_burst_larger_than_the_socket_buffer_drains_while_the_loop_blocks() -> None:
    """4 MB queued behind a slow reader: only the flusher can write it, as the reader makes room."""
    n = 2000

    async def body(channel: Channel, reader: Reader) -> None:
        for i in range(1, n + 1):
            channel.send_event(event(i, 2000))
        assert not channel.writable.is_set(), "past the high-water mark the agent is paused"
        assert block_until(lambda: len(reader.bodies) >= n, 30)
        await asyncio.wait_for(channel.writable.wait(), DEADLINE)

    assert [e["seq"] for e in run_on_uvloop(body, pace=0.001).events()] == list(range(1, n + 1))


def test_frames_keep_their_order_and_are_written_once_whatever_the_loop_does() -> None:
    """Bursts, awaits, blocking spells and control frames, random, behind a slow reader: the stream is whole."""
    rng = random.Random(13)
    expected: list[int] = []

    async def body(channel: Channel, reader: Reader) -> None:
        seq = 0
        for _ in range(300):
            for _ in range(rng.choice((1, 1, 2, 5, 50, 400))):
                seq += 1
                channel.send_event(event(seq, rng.choice((0, 10, 300, 5000))))
                expected.append(seq)
                if not channel.writable.is_set():
                    await asyncio.wait_for(channel.writable.wait(), 30)
            if rng.random() < 0.1:
                seq += 1
                channel.send(framing.control({"op": "marker", "seq": seq}))
                expected.append(seq)
            what = rng.random()
            if what < 0.3:
                time.sleep(rng.choice((0.001, 0.008, 0.02)))  # the agent blocks the loop
            elif what < 0.8:
                await asyncio.sleep(0)
        assert block_until(lambda: len(reader.bodies) >= len(expected), 30)

    reader = run_on_uvloop(body, pace=0.0005)
    got = [orjson.loads(b[1:] if b[:1] == b"E" else b)["seq"] for b in reader.bodies]
    assert got == expected


def test_a_flood_goes_out_in_few_writes() -> None:
    """10,000 frames yielded without awaiting: written in 64 KiB batches, not one write each."""

    async def body(channel: Channel, reader: Reader) -> None:
        for i in range(1, 10_001):
            channel.send_event(event(i))
        await asyncio.sleep(0)
        assert block_until(lambda: len(reader.bodies) >= 10_000)

    reader = run_on_uvloop(body)
    assert [e["seq"] for e in reader.events()] == list(range(1, 10_001))
    assert reader.sends() < 1000, "450 kB in 64 KiB writes, not one write per frame"


def test_before_the_actor_is_confined_no_thread_starts_and_the_loop_drains() -> None:
    """A warm actor is not confined yet (the sandbox confines one thread): the loop does the flusher's work."""
    n = 2000

    async def body(channel: Channel, reader: Reader) -> None:
        channel.allow_thread = False
        before = threading.active_count()
        for i in range(1, n + 1):
            channel.send_event(event(i, 2000))
        await asyncio.wait_for(channel.writable.wait(), 30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(reader.bodies) < n and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert threading.active_count() == before, "no flusher thread before confinement"

    assert [e["seq"] for e in run_on_uvloop(body, pace=0.001).events()] == list(range(1, n + 1))


def _spin_pair(on_message: Any) -> tuple[Channel, socket.socket, Any]:
    loop = uvloop.new_event_loop()
    ours, theirs = socket.socketpair()
    return Channel(loop, ours, on_message, lambda ch: None), theirs, loop


def test_spin_read_takes_a_frame_that_lands_while_it_polls_without_the_loop() -> None:
    """An idle actor told a turn is coming polls for it (``expect``): the frame is read and handled
    inside spin_read, before the event loop runs again."""
    got: list[dict[str, Any]] = []
    channel, theirs, loop = _spin_pair(got.append)
    polling = threading.Event()
    frame = framing.control({"op": "turn", "run_id": "r1"})
    writer = threading.Thread(target=lambda: (polling.wait(DEADLINE), theirs.sendall(frame)))
    writer.start()
    try:
        t0 = time.monotonic()
        polling.set()  # the writer sends now: before the first poll or during the polling
        assert channel.spin_read(DEADLINE) is True
        assert got == [{"op": "turn", "run_id": "r1"}]
        assert time.monotonic() - t0 < DEADLINE / 2
    finally:
        writer.join(DEADLINE)
        channel.close()
        theirs.close()
        loop.close()


def test_spin_read_gives_up_after_its_time_and_the_loop_reads_what_comes_later() -> None:
    got: list[dict[str, Any]] = []
    channel, theirs, loop = _spin_pair(got.append)
    try:
        t0 = time.monotonic()
        assert channel.spin_read(0.005) is False
        assert 0.005 <= time.monotonic() - t0 < DEADLINE
        assert got == []
        theirs.sendall(framing.control({"op": "stop", "run_id": "r1"}))

        async def until_read() -> None:
            while not got:
                await asyncio.sleep(0.001)

        loop.run_until_complete(asyncio.wait_for(until_read(), DEADLINE))
        assert got == [{"op": "stop", "run_id": "r1"}]
    finally:
        channel.close()
        theirs.close()
        loop.close()


def test_spin_read_of_a_closed_channel_returns_at_once() -> None:
    channel, theirs, loop = _spin_pair(lambda msg: None)
    try:
        channel.close()
        t0 = time.monotonic()
        assert channel.spin_read(DEADLINE) is False
        assert time.monotonic() - t0 < DEADLINE / 2
    finally:
        theirs.close()
        loop.close()
