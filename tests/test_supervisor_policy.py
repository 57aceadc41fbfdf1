"""Tests for supervisor.restart (restart intensity) and supervisor.causes (why a child ended)."""

import faulthandler
import os
import resource
import signal

import pytest

from supervisor.causes import EXIT_CANNOT_START, ExitCause, describe, describe_status
from supervisor.restart import RestartPolicy

# ── RestartPolicy ──────────────────────────────────────────────────────────


@pytest.mark.parametrize("kwargs", [{"limit": -1}, {"period": 0}, {"period": -1.0}])
def test_policy_refuses_bad_settings(kwargs):
    """A negative limit or a non-positive period raises ValueError."""
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)


def test_policy_allows_limit_restarts_then_refuses():
    """limit deaths within period are each allowed a restart; the next one is refused."""
    policy = RestartPolicy(limit=3, period=10.0)
    assert [policy.record(t) for t in (100.0, 101.0, 102.0)] == [True, True, True]
    assert policy.record(103.0) is False
    assert policy.record(109.0) is False
    assert "3/3" in repr(policy)


def test_policy_allows_again_after_the_window_slides():
    """Once the oldest allowed restart is more than period ago, a restart is allowed again."""
    policy = RestartPolicy(limit=2, period=10.0)
    assert policy.record(0.0) and policy.record(5.0)
    assert policy.record(10.0) is False  # 0.0 is exactly period ago: still inside the window
    assert policy.record(10.5) is True  # 0.0 has left the window
    assert policy.record(14.0) is False  # 5.0 and 10.5 are inside
    assert policy.record(15.5) is True  # 5.0 has left
    assert policy.record(100.0) is True  # everything has left
    assert policy.record(100.0) is True
    assert policy.record(100.0) is False


def test_refused_deaths_do_not_extend_the_window():
    """Deaths that were refused a restart are not counted against later ones."""
    policy = RestartPolicy(limit=1, period=10.0)
    assert policy.record(0.0) is True
    for t in (1.0, 5.0, 9.0):
        assert policy.record(t) is False
    assert policy.record(10.1) is True


def test_policy_with_limit_zero_never_restarts():
    """A limit of 0 refuses every restart."""
    policy = RestartPolicy(limit=0, period=1.0)
    assert policy.record(0.0) is False
    assert policy.record(1000.0) is False


def test_delay_doubles_with_recent_restarts_and_is_capped():
    """The delay is backoff, then doubles with each recent restart, never more than 2 s."""
    policy = RestartPolicy(limit=100, period=1000.0, backoff=0.1)
    assert policy.delay() == pytest.approx(0.1)
    delays = []
    for t in range(8):
        assert policy.record(float(t))
        delays.append(policy.delay())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_delay_falls_back_once_old_restarts_leave_the_window():
    """After the window slides past earlier restarts, the delay is short again."""
    policy = RestartPolicy(limit=10, period=10.0, backoff=0.25)
    for t in (0.0, 1.0, 2.0, 3.0):
        policy.record(t)
    assert policy.delay() == pytest.approx(2.0)
    policy.record(50.0)
    assert policy.delay() == pytest.approx(0.25)


def test_default_policy():
    """The default policy allows 5 restarts a minute with a 0.1 s initial delay."""
    policy = RestartPolicy()
    assert (policy.limit, policy.period, policy.backoff) == (5, 60.0, 0.1)
    assert all(policy.record(float(t)) for t in range(5))
    assert policy.record(5.0) is False


# ── causes ─────────────────────────────────────────────────────────────────


def _status_of_child(exit_code=None, signum=None) -> int:
    """Fork a child that exits with ``exit_code`` or kills itself with ``signum``; return its wait status."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            if signum is not None:
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                faulthandler.disable()
                if signum not in (signal.SIGKILL, signal.SIGSTOP):
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
                os.kill(os.getpid(), signum)
            else:
                os._exit(exit_code)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return status


def test_exit_code_is_described():
    """A child that exits with code 3 is "agent process exited with code 3"."""
    status = _status_of_child(exit_code=3)
    assert os.WIFEXITED(status)
    cause = describe_status(status)
    assert cause == ExitCause(3, None, "agent process exited with code 3")
    assert cause.signal_name is None


def test_clean_exit_and_cannot_start_code():
    """Exit code 0 and the cannot-start code 2 are reported as exit codes."""
    assert describe_status(_status_of_child(exit_code=0)).message == "agent process exited with code 0"
    cause = describe_status(_status_of_child(exit_code=EXIT_CANNOT_START), "front process")
    assert cause.exitcode == 2
    assert cause.message == "front process exited with code 2"


def test_sigsegv_is_a_crash():
    """A child killed by SIGSEGV "crashed (signal SIGSEGV)"."""
    status = _status_of_child(signum=signal.SIGSEGV)
    assert os.WIFSIGNALED(status)
    cause = describe_status(status)
    assert cause.message == "agent process crashed (signal SIGSEGV)"
    assert cause.exitcode is None
    assert cause.signal == signal.SIGSEGV
    assert cause.signal_name == "SIGSEGV"


def test_sigkill_mentions_out_of_memory():
    """A child killed by SIGKILL was killed, perhaps out of memory."""
    cause = describe_status(_status_of_child(signum=signal.SIGKILL))
    assert cause.signal == signal.SIGKILL
    assert cause.message == "agent process was killed (SIGKILL; perhaps out of memory?)"
    assert "out of memory" in cause.message


def test_sigterm_is_terminated():
    """A child ended by SIGTERM "was terminated (SIGTERM)"."""
    cause = describe_status(_status_of_child(signum=signal.SIGTERM), "front process")
    assert cause.message == "front process was terminated (SIGTERM)"
    assert cause.signal_name == "SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_interrupt_and_hangup_are_terminated(sig):
    """SIGINT and SIGHUP are reported as terminated, like SIGTERM."""
    assert describe(None, sig).message == f"agent process was terminated ({sig.name})"


def test_unnamed_signal_is_named_once_by_number():
    """A child killed by a signal with no name (a real-time one) "crashed (signal N)", the word signal said once."""
    signum = int(signal.SIGRTMIN) + 6
    status = _status_of_child(signum=signum)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum
    cause = describe_status(status)
    assert cause.signal == signum
    assert cause.signal_name == str(signum)
    assert cause.message == f"agent process crashed (signal {signum})"


def test_signal_wins_over_exit_code():
    """describe() reports the signal when both a signal and an exit code are given."""
    assert describe(1, signal.SIGTERM).message == "agent process was terminated (SIGTERM)"


def test_no_code_and_no_signal_reads_as_code_0():
    """describe(None, None) reports exit code 0."""
    assert describe(None, None) == ExitCause(0, None, "agent process exited with code 0")
