"""How a turn whose actor died ends (navi_actor.front.deaths): the event and the saved result."""

from navi_actor import protocol
from navi_actor.front.actors import ActorHandle
from navi_actor.front.deaths import death_code, outcome
from navi_actor.front.runs import Run


def _run_and_actor() -> tuple[Run, ActorHandle]:
    run = Run("r1", "s1")
    run.text = ["hel", "lo"]
    actor = ActorHandle("a1", "s1", owner=None)  # type: ignore[arg-type]  # no frames are read here
    run.actor, actor.run = actor, run
    return run, actor


def test_a_turn_being_stopped_ends_stopped_at_the_last_signal_the_front_sent():
    run, actor = _run_and_actor()
    run.stop_requested_at = 1.0
    run.stop_step = "sigkill"
    actor.exit = {"code": "killed", "message": "killed by SIGKILL"}
    final, result = outcome(run, actor, 7, 2.5)
    assert final == protocol.stream_stopped(7, "r1", "sigkill", "hello")
    assert result["status"] == "stopped" and result["content"] == "hello"
    assert result["stats"] == {"elapsed_seconds": 2.5, "stop_step": "sigkill"}
    assert result["error"] is None and result["error_code"] is None


def test_a_turn_stopped_by_a_limit_names_the_limit_and_sigterm_when_the_front_sent_no_signal():
    run, actor = _run_and_actor()
    run.stop_requested_at = 1.0
    run.stop_reason = {"code": protocol.TURN_TIMEOUT, "message": "too long"}
    final, result = outcome(run, actor, 3, 0.1)
    assert final["stop_step"] == "sigterm" and final["reason"] == protocol.TURN_TIMEOUT
    assert (result["error"], result["error_code"]) == ("too long", protocol.TURN_TIMEOUT)


def test_an_actor_that_broke_the_protocol_fails_its_turn_even_while_stopping():
    run, actor = _run_and_actor()
    run.stop_requested_at = 1.0
    actor.violation = "seq 9 does not follow 3"
    final, result = outcome(run, actor, 4, 0.1)
    assert final["type"] == "error" and final["code"] == protocol.ACTOR_PROTOCOL_VIOLATION
    assert "broke the pipe protocol (seq 9 does not follow 3)" in final["message"]
    assert result["status"] == "failed" and result["content"] == "hello"


def test_the_cause_comes_from_the_actors_last_word_then_the_exit_notice():
    run, actor = _run_and_actor()
    assert death_code(actor) == protocol.ACTOR_DIED
    actor.exit = {"code": "memory_limit", "message": "over its memory limit"}
    assert death_code(actor) == "memory_limit"
    final, result = outcome(run, actor, 2, 0.0)
    assert (final["code"], final["message"]) == ("memory_limit", "over its memory limit")
    actor.fatal = {"code": protocol.SANDBOX_FAILED, "message": "landlock refused"}
    final, result = outcome(run, actor, 2, 0.0)
    assert (final["code"], result["error"]) == (protocol.SANDBOX_FAILED, "landlock refused")


def test_the_tool_that_was_running_is_saved_unfinished():
    run, actor = _run_and_actor()
    run.tool_events = [{"type": "tool_started", "seq": 2, "tool": "shell", "args": {}}]
    _, result = outcome(run, actor, 3, 0.0)
    assert [(c["tool"], c["success"]) for c in result["tool_calls"]] == [("shell", False)]
