"""Tests for navi_actor.replay (pure: the compact, byte-bounded replay buffer)."""

import gc
import tracemalloc

import orjson
import pytest

from navi_actor.replay import EndedTurn, ReplayBuffer, ReplaySlice, ReplayStats

BIG = 1 << 30


def _ev(seq, kind="tool_call", **fields):
    return orjson.dumps({"type": kind, **fields, "seq": seq})


def _decoded(slice_: ReplaySlice):
    return [orjson.loads(e) for e in slice_.events]


# ── construction and basics ────────────────────────────────────────────────


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_max_bytes_must_be_positive(max_bytes):
    """A buffer with a non-positive byte bound is refused with ValueError."""
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        ReplayBuffer(max_bytes)


def test_empty_buffer():
    """An empty buffer replays nothing, is not truncated and has no first seq."""
    buf = ReplayBuffer(BIG)
    s = buf.after(None)
    assert s == ReplaySlice([], False, None)
    assert len(buf) == 0
    assert buf.last_seq == 0
    assert buf.statistics() == ReplayStats(0, 0, 0, 0, BIG)
    assert "ReplayBuffer" in repr(buf)


# ── merging ────────────────────────────────────────────────────────────────


def test_consecutive_plain_deltas_merge_into_one_entry():
    """Consecutive stream_delta events become one entry whose replay carries the run's text and last seq."""
    buf = ReplayBuffer(BIG)
    for seq, d in enumerate(["Hel", "lo", ", ", "world"], start=1):
        buf.append_delta("stream_delta", seq, d)
    stats = buf.statistics()
    assert stats.events == 4
    assert stats.entries == 1
    assert len(buf) == 4
    assert buf.last_seq == 4
    s = buf.after(None)
    assert s.events == [orjson.dumps({"type": "stream_delta", "delta": "Hello, world", "seq": 4})]
    assert s.truncated is False
    assert s.first_seq == 1


def test_after_zero_equals_after_none():
    """after(0) returns everything, like after(None), since seqs start at 1."""
    buf = ReplayBuffer(BIG)
    buf.append(1, _ev(1, "stream_start"))
    buf.append_delta("stream_delta", 2, "a")
    buf.append_delta("stream_delta", 3, "b")
    assert buf.after(0) == buf.after(None)


def test_after_k_inside_merged_run_for_every_k():
    """For each k in a 1,000-delta run, after(k) returns exactly the text streamed after seq k."""
    buf = ReplayBuffer(BIG)
    for seq in range(1, 11):  # a few other events first, so the run does not start at seq 1
        buf.append(seq, _ev(seq, "tool_started", tool="t"))
    first = 11
    deltas = [f"{i}{'é' if i % 7 == 0 else ''} " for i in range(1000)]
    for i, d in enumerate(deltas):
        buf.append_delta("stream_delta", first + i, d)
    last = first + len(deltas) - 1
    whole = "".join(deltas)
    assert buf.statistics().entries == 11

    (merged,) = _decoded(buf.after(first - 1))
    assert merged == {"type": "stream_delta", "delta": whole, "seq": last}

    for i in range(len(deltas) - 1):
        k = first + i
        events = _decoded(buf.after(k))
        assert len(events) == 1, k
        ev = events[0]
        assert ev["type"] == "stream_delta"
        assert ev["seq"] == last
        before = "".join(deltas[: i + 1])
        assert ev["delta"] == "".join(deltas[i + 1 :])
        assert before + ev["delta"] == whole, k
    assert buf.after(last).events == []
    assert buf.after(last + 5).events == []


def test_mixed_events_keep_order_and_do_not_merge_across_types():
    """Stream, thinking and other events replay in seq order; only same-type neighbours merge."""
    buf = ReplayBuffer(BIG)
    start = _ev(1, "stream_start", run_id="r")
    tool = _ev(6, "tool_call", tool="search", args={"q": 1}, result="ok", success=True)
    buf.append(1, start)
    buf.append_delta("thinking_delta", 2, "let me ")
    buf.append_delta("thinking_delta", 3, "think")
    buf.append_delta("stream_delta", 4, "A")
    buf.append_delta("stream_delta", 5, "B")
    buf.append(6, tool)
    buf.append_delta("stream_delta", 7, "C")
    buf.append_delta("thinking_delta", 8, "hmm")
    buf.append_delta("stream_delta", 9, "D")
    buf.append_delta("stream_delta", 10, "E")

    assert buf.statistics().entries == 7
    assert buf.statistics().events == 10
    s = buf.after(None)
    assert s.events[0] == start
    assert s.events[3] == tool
    assert _decoded(s) == [
        {"type": "stream_start", "run_id": "r", "seq": 1},
        {"type": "thinking_delta", "delta": "let me think", "seq": 3},
        {"type": "stream_delta", "delta": "AB", "seq": 5},
        orjson.loads(tool),
        {"type": "stream_delta", "delta": "C", "seq": 7},
        {"type": "thinking_delta", "delta": "hmm", "seq": 8},
        {"type": "stream_delta", "delta": "DE", "seq": 10},
    ]
    assert _decoded(buf.after(2)) == [
        {"type": "thinking_delta", "delta": "think", "seq": 3},
        {"type": "stream_delta", "delta": "AB", "seq": 5},
        orjson.loads(tool),
        {"type": "stream_delta", "delta": "C", "seq": 7},
        {"type": "thinking_delta", "delta": "hmm", "seq": 8},
        {"type": "stream_delta", "delta": "DE", "seq": 10},
    ]
    assert buf.after(5).events[0] == tool
    assert _decoded(buf.after(9)) == [{"type": "stream_delta", "delta": "E", "seq": 10}]


def test_deltas_with_a_seq_gap_do_not_merge():
    """Deltas of one type whose seqs are not consecutive stay separate entries."""
    buf = ReplayBuffer(BIG)
    buf.append_delta("stream_delta", 1, "a")
    buf.append_delta("stream_delta", 3, "b")
    assert buf.statistics().entries == 2
    assert _decoded(buf.after(None)) == [
        {"type": "stream_delta", "delta": "a", "seq": 1},
        {"type": "stream_delta", "delta": "b", "seq": 3},
    ]
    assert _decoded(buf.after(2)) == [{"type": "stream_delta", "delta": "b", "seq": 3}]


def test_other_events_replay_as_their_exact_bytes():
    """A non-delta event is replayed as the very bytes it was appended with."""
    buf = ReplayBuffer(BIG)
    raw = b'{"type":"custom","z":1,"a":[1,2],"seq":1}'
    buf.append(1, raw)
    assert buf.after(None).events == [raw]


# ── seq ordering ────────────────────────────────────────────────────────────


def test_seq_must_strictly_grow():
    """An event whose seq does not exceed the last one raises ValueError and changes nothing."""
    buf = ReplayBuffer(BIG)
    with pytest.raises(ValueError):
        buf.append_delta("stream_delta", 0, "x")
    buf.append_delta("stream_delta", 5, "x")
    before = buf.statistics()
    with pytest.raises(ValueError, match="seq 5 does not follow 5"):
        buf.append_delta("stream_delta", 5, "y")
    with pytest.raises(ValueError):
        buf.append(5, _ev(5))
    with pytest.raises(ValueError):
        buf.append(4, _ev(4))
    with pytest.raises(ValueError):
        buf.append_delta("thinking_delta", -1, "z")
    assert buf.statistics() == before
    assert buf.last_seq == 5
    assert _decoded(buf.after(None)) == [{"type": "stream_delta", "delta": "x", "seq": 5}]


# ── the byte bound ──────────────────────────────────────────────────────────


def test_byte_bound_drops_oldest_entries_and_reports_truncation():
    """Past max_bytes the oldest entries go; truncated is True only for a resume point before the oldest kept seq."""
    payloads = [_ev(seq, "tool_call", pad="x" * 10) for seq in range(1, 11)]
    size = len(payloads[0]) + 64  # bookkeeping per entry in the buffer's accounting
    buf = ReplayBuffer(size * 3 + 10)  # room for three entries
    for seq, p in enumerate(payloads, start=1):
        buf.append(seq, p)
        assert buf.statistics().bytes <= buf.max_bytes

    stats = buf.statistics()
    assert stats.entries == 3
    assert stats.events == 10
    assert stats.dropped_events == 7
    assert len(buf) == 10

    full = buf.after(None)
    assert full.events == payloads[7:]
    assert full.truncated is True
    assert full.first_seq == 8

    assert buf.after(0).truncated is True
    assert buf.after(6).truncated is True
    resumed = buf.after(7)  # the client saw everything up to 7: nothing it needs is gone
    assert resumed.truncated is False
    assert resumed.events == payloads[7:]
    assert buf.after(9) == ReplaySlice(payloads[9:], False, 8)


def test_byte_bound_drops_a_merged_run_as_a_whole_and_counts_its_events():
    """A dropped merged run counts every delta it held in dropped_events, and the byte count stays consistent."""
    buf = ReplayBuffer(600)
    for seq in range(1, 101):  # 100 one-char deltas: 1 + 64 + 99 * 5 = 560 bytes
        buf.append_delta("stream_delta", seq, "a")
    assert buf.statistics().bytes == 560
    assert buf.statistics().dropped_events == 0
    tail = _ev(101, "tool_call", pad="y" * 20)
    buf.append(101, tail)  # over the bound: the run goes

    stats = buf.statistics()
    assert stats.dropped_events == 100
    assert stats.entries == 1
    assert stats.bytes == len(tail) + 64
    s = buf.after(None)
    assert s.events == [tail]
    assert s.truncated is True
    assert s.first_seq == 101
    assert buf.after(100).truncated is False


def test_byte_accounting_after_drops_matches_a_fresh_buffer_of_the_kept_entries():
    """After drops, statistics().bytes equals what a fresh buffer holding only the kept entries reports."""
    script = []
    seq = 0
    for round_ in range(30):
        for _ in range(round_ % 5 + 1):
            seq += 1
            script.append(("delta", seq, "stream_delta" if round_ % 2 else "thinking_delta", f"w{seq} "))
        seq += 1
        script.append(("event", seq, _ev(seq, "tool_call", n=round_)))

    def fill(buf, steps):
        for step in steps:
            if step[0] == "delta":
                buf.append_delta(step[2], step[1], step[3])
            else:
                buf.append(step[1], step[2])

    bounded = ReplayBuffer(700)
    fill(bounded, script)
    first = bounded.after(None).first_seq
    assert bounded.statistics().dropped_events > 0
    kept = [s for s in script if s[1] >= first]
    fresh = ReplayBuffer(BIG)
    fill(fresh, kept)
    assert bounded.statistics().bytes == fresh.statistics().bytes
    assert bounded.statistics().entries == fresh.statistics().entries
    assert bounded.statistics().dropped_events == len(script) - len(kept)
    assert bounded.after(None).events == fresh.after(None).events


def test_single_entry_larger_than_bound_is_kept_until_another_arrives():
    """The newest entry is never dropped, even when it alone exceeds max_bytes."""
    buf = ReplayBuffer(10)
    big = _ev(1, "tool_call", result="r" * 100)
    buf.append(1, big)
    assert buf.after(None) == ReplaySlice([big], False, 1)
    assert buf.statistics().dropped_events == 0
    nxt = _ev(2, "tool_call")
    buf.append(2, nxt)
    assert buf.after(None) == ReplaySlice([nxt], True, 2)
    assert buf.statistics().dropped_events == 1


# ── the ended turn, kept for late resumes ───────────────────────────────────


def _finished(max_bytes, deltas=5):
    buf = ReplayBuffer(max_bytes)
    for i in range(deltas):
        buf.append_delta("stream_delta", 2 + i, f"w{i} ")
    return buf


def test_end_adds_the_final_event_within_the_bound():
    """end() keeps the final event last, dropping the oldest entries so the whole stays within max_bytes."""
    buf = _finished(800)  # the delta run: about 100 bytes
    buf.append(7, _ev(7, "tool_call", result="r" * 500))  # about 600: 700 in all
    final = _ev(8, "stream_end", content="w0 w1 w2 w3 w4 ")  # about 130: the delta run must go
    assert buf.end(8, final) is True
    assert [orjson.loads(e)["type"] for e in buf.after(None).events] == ["tool_call", "stream_end"]
    assert buf.after(7).events == [final]
    assert buf.statistics().bytes <= buf.max_bytes
    assert buf.after(1).truncated and buf.last_seq == 8


def test_end_refuses_a_final_event_over_the_bound_and_adds_nothing():
    """A final event that alone exceeds max_bytes is not kept, and the buffer is left as it was."""
    buf = _finished(300)
    before = buf.after(None)
    assert buf.end(7, _ev(7, "stream_end", content="x" * 400)) is False
    assert buf.after(None) == before and buf.last_seq == 6


def test_ended_turn_covers_cursors_from_just_before_its_start_to_its_end():
    """A kept turn (stream_start seq 1, final seq 7) answers cursors 0..7, not older, newer or none."""
    start = {"type": "stream_start", "seq": 1, "run_id": "r"}
    ended = EndedTurn.keep("r", start, _finished(BIG), 7, _ev(7, "stream_end"))
    assert ended is not None and ended.last_seq == 7
    assert [a for a in range(-2, 10) if ended.covers(a)] == list(range(0, 8))
    assert not ended.covers(None)
    assert _decoded(ended.buffer.after(6)) == [{"type": "stream_end", "seq": 7}]
    assert _decoded(ended.buffer.after(3))[0] == {"type": "stream_delta", "delta": "w2 w3 w4 ", "seq": 6}


def test_ended_turn_is_not_kept_when_its_final_is_too_big_or_out_of_order():
    """keep() gives None (nothing kept) for a final over the bound, or one whose seq does not follow."""
    start = {"type": "stream_start", "seq": 1, "run_id": "r"}
    assert EndedTurn.keep("r", start, _finished(300), 7, _ev(7, "stream_end", content="x" * 400)) is None
    assert EndedTurn.keep("r", start, _finished(BIG), 6, _ev(6, "stream_end")) is None
    assert EndedTurn.keep("r", start, _finished(BIG), None, _ev(7, "stream_end")) is None


# ── compactness ─────────────────────────────────────────────────────────────

N_WORDS = 100_000
WORDS = [f"w{i} " for i in range(N_WORDS)]
TEXT_LEN = sum(map(len, WORDS))


def test_hundred_thousand_deltas_stay_compact():
    """100,000 one-word deltas cost about their text plus 4 bytes each in the buffer's accounting, in one entry."""
    buf = ReplayBuffer(BIG)
    for seq, w in enumerate(WORDS, start=1):
        buf.append_delta("stream_delta", seq, w)
    stats = buf.statistics()
    assert stats.events == N_WORDS
    assert stats.entries == 1
    assert stats.dropped_events == 0
    assert stats.bytes <= TEXT_LEN + 4 * N_WORDS + 1024
    whole = "".join(WORDS)
    assert _decoded(buf.after(None)) == [{"type": "stream_delta", "delta": whole, "seq": N_WORDS}]
    half = _decoded(buf.after(N_WORDS // 2))[0]["delta"]
    assert "".join(WORDS[: N_WORDS // 2]) + half == whole


def test_hundred_thousand_deltas_real_memory_matches_the_accounting():
    """The memory actually allocated for 100,000 one-word deltas is about their text plus 4 bytes each, as documented."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        buf = ReplayBuffer(BIG)
        for seq, w in enumerate(WORDS, start=1):
            buf.append_delta("stream_delta", seq, w)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    accounted = buf.statistics().bytes
    assert accounted <= TEXT_LEN + 4 * N_WORDS + 1024
    # Allow 64 KiB for list/str headers and array over-allocation.
    assert used <= TEXT_LEN + 4 * N_WORDS + 64 * 1024, (used, accounted)


# ── is_plain_delta ──────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "event, expected",
    [
        ({"type": "stream_delta", "delta": "x", "seq": 1}, True),
        ({"type": "thinking_delta", "delta": "", "seq": 2}, True),
        ({"type": "stream_delta", "delta": "x", "seq": 1, "is_subagent": True}, False),
        ({"type": "stream_delta", "delta": "x"}, False),
        ({"type": "stream_delta", "delta": "x", "other": 1}, False),
        ({"type": "stream_delta", "delta": 5, "seq": 1}, False),
        ({"type": "stream_delta", "delta": None, "seq": 1}, False),
        ({"type": "tool_call", "delta": "x", "seq": 1}, False),
        ({"type": "thinking_end", "seq": 1}, False),
        ({"delta": "x", "seq": 1}, False),
    ],
)
def test_is_plain_delta(event, expected):
    """Only a stream/thinking delta with a string delta and no field but type, delta and seq is plain."""
    assert ReplayBuffer.is_plain_delta(event) is expected
