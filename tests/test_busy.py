"""The busy policy's decision (navi_actor.busy): pure, every case."""

from __future__ import annotations

import pytest

from navi_actor import busy


@pytest.mark.parametrize("policy", ["reject", "enqueue", "interrupt"])
def test_an_idle_session_starts_whatever_the_policy(policy):
    """Nothing runs and nothing waits: the message starts its turn now."""
    assert busy.decide(policy, running=False, queued=0, max_queued=10) == busy.START
    assert busy.decide(policy, running=False, queued=0, max_queued=0) == busy.START


@pytest.mark.parametrize("running, queued", [(True, 0), (True, 3), (False, 2)])
def test_reject_refuses_while_busy(running, queued):
    """reject: refused while a turn runs, or while queued messages are about to run."""
    assert busy.decide("reject", running, queued, 10) == busy.REJECT


def test_enqueue_until_the_bound():
    """enqueue: queued while under --max-queued, queue_full at it; 0 means no queue."""
    assert busy.decide("enqueue", True, 0, 10) == busy.ENQUEUE
    assert busy.decide("enqueue", True, 9, 10) == busy.ENQUEUE
    assert busy.decide("enqueue", True, 10, 10) == busy.QUEUE_FULL
    assert busy.decide("enqueue", True, 0, 0) == busy.QUEUE_FULL
    assert busy.decide("enqueue", False, 3, 10) == busy.ENQUEUE, "behind a queue that is starting"


def test_interrupt_takes_one_place_past_the_bound():
    """interrupt: at the head, even with --max-queued 0; refused only past bound + 1."""
    assert busy.decide("interrupt", True, 0, 0) == busy.INTERRUPT
    assert busy.decide("interrupt", True, 10, 10) == busy.INTERRUPT
    assert busy.decide("interrupt", True, 11, 10) == busy.QUEUE_FULL
    assert busy.limit_for(busy.INTERRUPT, 10) == 11 and busy.limit_for(busy.ENQUEUE, 10) == 10


def test_unknown_policy_is_a_bug():
    with pytest.raises(ValueError, match="unknown if_busy policy 'later'"):
        busy.decide("later", True, 0, 10)


def test_effective_policy_message_then_session_then_server():
    assert busy.effective("interrupt", "enqueue", "reject") == "interrupt"
    assert busy.effective(None, "enqueue", "reject") == "enqueue"
    assert busy.effective(None, None, "reject") == "reject"
