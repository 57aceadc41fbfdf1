"""A slow client's outbox: ordered, merged when backed up, bounded."""

from __future__ import annotations

import orjson

from navi_actor.front.outbox import Outbox


def delta(i: int) -> tuple[bytes, int, str]:
    text = f"w{i} "
    return orjson.dumps({"type": "stream_delta", "delta": text, "seq": i}), i, text


def test_frames_come_out_in_order_with_the_last_seq():
    """Below the merge threshold every frame goes out as it came, in order."""
    box = Outbox(max_bytes=1 << 20, coalesce_at=1 << 20)
    frames = [delta(i) for i in range(1, 6)]
    for data, seq, text in frames:
        assert box.push(data, seq, text)
    box.push(b'{"type":"tool_started"}', 6)
    out, last = box.take_all()
    assert out == [f[0] for f in frames] + [b'{"type":"tool_started"}'] and last == 6
    assert len(box) == 0 and box.bytes == 0


def test_backed_up_text_is_merged_into_one_delta_with_the_later_seq():
    """Past the threshold, consecutive deltas merge: the joined text, the last seq, and far fewer bytes."""
    box = Outbox(max_bytes=1 << 20, coalesce_at=100)
    for i in range(1, 1001):
        box.push(*delta(i))
    out, last = box.take_all()
    assert last == 1000 and len(out) < 10
    events = [orjson.loads(f) for f in out]
    assert "".join(e["delta"] for e in events) == "".join(f"w{i} " for i in range(1, 1001))
    assert events[-1]["seq"] == 1000 and box.merged > 990


def test_other_events_are_never_merged_across():
    """A non-delta event stays between the texts around it."""
    box = Outbox(max_bytes=1 << 20, coalesce_at=0)
    box.push(*delta(1))
    box.push(*delta(2))
    box.push(b'{"type":"tool_call","seq":3}', 3)
    box.push(*delta(4))
    box.push(*delta(5))
    out, _ = box.take_all()
    assert [orjson.loads(f)["seq"] for f in out] == [2, 3, 5]
    assert [orjson.loads(f).get("delta") for f in out] == ["w1 w2 ", None, "w4 w5 "]


def test_the_byte_bound_is_reported():
    """push() returns False once more than max_bytes wait."""
    box = Outbox(max_bytes=100, coalesce_at=1 << 20)
    assert box.push(b"x" * 60)
    assert not box.push(b"y" * 60)


def test_pop_takes_the_oldest_and_updates_the_accounting():
    """pop() returns frames one at a time and lowers the byte count."""
    box = Outbox(max_bytes=1 << 20, coalesce_at=1 << 20)
    box.push(b"abc", 1)
    box.push(b"defg", 2)
    assert box.pop() == (b"abc", 1) and box.bytes == 4
    assert box.pop() == (b"defg", 2) and box.bytes == 0
