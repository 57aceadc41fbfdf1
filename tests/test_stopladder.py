"""The stop ladder's decisions (navi_actor.stopladder), without processes or clocks."""

import pytest

from navi_actor import stopladder
from navi_actor.config import Config
from navi_actor.stopladder import CANCEL, EVENT, SIGKILL, SIGTERM, STEPS, Step


def test_the_ladder_goes_event_cancel_sigterm_sigkill_at_the_configured_times():
    """Each step at its time from the stop request: grace, then term_after, then kill_after more."""
    assert stopladder.ladder(2.0, 5.0, 2.0) == (
        Step(EVENT, 0.0, None),
        Step(CANCEL, 2.0, None),
        Step(SIGTERM, 5.0, "TERM"),
        Step(SIGKILL, 7.0, "KILL"),
    )
    assert [s.name for s in stopladder.ladder(0.1, 0.2, 0.3)] == list(STEPS)


def test_the_front_takes_the_signal_steps_only():
    """The front times SIGTERM at term_after and SIGKILL kill_after later; event and cancel are the actor's."""
    steps = stopladder.signals(0.5, 0.25)
    assert [(s.name, s.after, s.signal) for s in steps] == [(SIGTERM, 0.5, "TERM"), (SIGKILL, 0.75, "KILL")]


def test_the_defaults_match_the_configuration():
    cfg = Config()
    steps = stopladder.ladder(cfg.stop_grace, cfg.stop_term_after, cfg.stop_kill_after)
    assert [s.after for s in steps] == [0.0, 2.0, 5.0, 7.0]


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, -1), (1, float("nan"), 1), (1, "5", 1)])
def test_a_setting_that_is_not_a_positive_number_of_seconds_is_refused(args):
    with pytest.raises(ValueError, match="must be a positive number of seconds"):
        stopladder.ladder(*args)


def test_each_step_has_a_next_one_until_the_last():
    assert stopladder.next_step(None) == EVENT
    assert stopladder.next_step(EVENT) == CANCEL
    assert stopladder.next_step(CANCEL) == SIGTERM
    assert stopladder.next_step(SIGTERM) == SIGKILL
    assert stopladder.next_step(SIGKILL) is None
    with pytest.raises(ValueError, match="unknown stop step 'sigint'"):
        stopladder.next_step("sigint")


@pytest.mark.parametrize(
    "finishing, ended, has_actor, due",
    [
        (False, False, True, True),
        (True, False, True, False),  # the result arrived: the turn ends on its own
        (False, True, True, False),
        (False, False, False, False),  # no actor yet (still starting): nothing to signal
    ],
)
def test_a_signal_step_is_taken_only_while_the_turn_runs_on_an_actor(finishing, ended, has_actor, due):
    assert stopladder.is_due(finishing=finishing, ended=ended, has_actor=has_actor) is due


def test_a_stopped_turn_whose_actor_died_names_the_last_signal_sent():
    assert stopladder.step_at_death(SIGKILL) == SIGKILL
    assert stopladder.step_at_death(SIGTERM) == SIGTERM
    assert stopladder.step_at_death(None) == SIGTERM  # something other than the front ended it


def test_a_stop_is_counted_under_its_step_or_event():
    assert stopladder.counted_step(CANCEL) == CANCEL
    assert stopladder.counted_step(None) == EVENT
