"""The batched WebSocket frame encoder."""

from __future__ import annotations

import struct

import pytest

from navi_actor.front.wsframes import encode_text_frames


def decode(data: bytes) -> list[bytes]:
    """A strict RFC 6455 reader of unmasked final text frames."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 == 0x81, "FIN + text opcode"
        assert not b1 & 0x80, "server frames are unmasked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        out.append(data[pos:pos + n])
        pos += n
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_each_length_encoding_round_trips(size):
    """Payloads at every length boundary (7-bit, 16-bit, 64-bit) decode back exactly."""
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert decode(encode_text_frames([payload])) == [payload]


def test_many_frames_in_one_buffer_keep_order():
    """A batch is the frames one after another, in order."""
    payloads = [b'{"seq":%d}' % i for i in range(1000)] + [b"x" * 300]
    assert decode(encode_text_frames(payloads)) == payloads


def test_empty_batch_is_empty():
    """No payloads, no bytes."""
    assert encode_text_frames([]) == b""
