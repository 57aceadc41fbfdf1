"""supervisor.fdchannel: framed messages and descriptors over a real socketpair."""

from __future__ import annotations

import os
import socket

import pytest

from navi_actor.framing import HEADER
from supervisor.fdchannel import ChannelClosed, FdChannel


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def test_frames_and_descriptors_arrive_in_order():
    ours, theirs = socket.socketpair()
    chan = FdChannel(ours)
    peer = FdChannel(theirs)
    r, w = os.pipe()
    try:
        peer.send(b'{"op": "one"}', [r])  # the channel owns r now, and closes it once sent
        peer.send(b'{"op": "two"}')
        assert chan.receive() == [b'{"op": "one"}', b'{"op": "two"}']
        got = chan.take_fd()
        os.write(w, b"x")
        assert os.read(got, 1) == b"x"  # the same pipe, through the received descriptor
        os.close(got)
        with pytest.raises(RuntimeError):
            chan.take_fd()
    finally:
        os.close(w)
        chan.close()
        peer.close()


def test_a_peer_that_closes_with_our_message_unread_still_leaves_its_last_word():
    """Its close resets the connection; what it wrote before is returned, not lost."""
    ours, theirs = socket.socketpair()
    chan = FdChannel(ours)
    theirs.sendall(_frame(b'{"op": "fatal", "message": "factory exploded"}'))
    chan.send(b'{"op": "assign"}')  # arrives after the peer stopped reading
    theirs.close()  # with "assign" unread: the kernel resets our end
    try:
        assert chan.receive() == [b'{"op": "fatal", "message": "factory exploded"}']
        with pytest.raises(ChannelClosed):
            chan.receive()
    finally:
        chan.close()


def test_a_peer_that_closes_cleanly_is_end_of_file():
    ours, theirs = socket.socketpair()
    chan = FdChannel(ours)
    theirs.close()
    try:
        with pytest.raises(ChannelClosed):
            chan.receive()
    finally:
        chan.close()
