"""Tests for navi_actor.front.resume.check (pure): what the front accepts as an actor's ended turn."""

import pytest

from navi_actor.front.resume import check

START = {"type": "stream_start", "seq": 5, "run_id": "r1"}


def answer(events, **extra):
    return {"op": "replay_ended", "viewer": 1, "run_id": "r1", "start": START, "last_seq": 9,
            "truncated": False, "first_seq": 6, "events": events, **extra}


TAIL = [{"type": "stream_delta", "delta": "a b ", "seq": 8}, {"type": "stream_end", "seq": 9, "content": "a b "}]


@pytest.mark.parametrize(("events", "after"), [
    (TAIL, 6),
    (TAIL[1:], 8),
    ([], 9),
    ([{"type": "tool_call", "seq": 6}, *TAIL], 4),
])
def test_a_well_formed_answer_is_accepted(events, after):
    """The events after the cursor, in order, ending with the terminal event at last_seq, pass."""
    assert check(answer(events), after) is None


@pytest.mark.parametrize(("msg", "after", "why"), [
    (answer(TAIL, start={**START, "type": "stream_delta"}), 6, "start is not"),
    (answer(TAIL, start={**START, "run_id": "other"}), 6, "start is not"),
    (answer(TAIL), 3, "cursor is not in the turn"),
    (answer(TAIL), 10, "cursor is not in the turn"),
    (answer(TAIL, last_seq="9"), 6, "cursor is not in the turn"),
    (answer(TAIL), 8, "not in order"),
    (answer(TAIL[::-1]), 6, "not in order"),
    (answer(TAIL[:1]), 6, "do not end at last_seq"),
    (answer([{"type": "stream_delta", "delta": "x", "seq": 9}]), 6, "not the turn's terminal event"),
    (answer([{"type": "session_sync", "seq": 8}, TAIL[1]]), 6, "only the runtime sends"),
    (answer(TAIL, truncated="yes"), 6, "truncated"),
])
def test_a_malformed_answer_is_refused_with_the_reason(msg, after, why):
    """An answer that does not fit the cursor or the turn is refused, saying why (the actor is then killed)."""
    reason = check(msg, after)
    assert reason is not None and why in reason, reason
