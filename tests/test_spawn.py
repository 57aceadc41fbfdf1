"""supervisor.spawn: what a forked child keeps (real forks)."""

import json
import os

from supervisor import spawn


def test_a_child_keeps_only_the_descriptors_it_was_given():
    """Every inherited descriptor but stdio and ``keep_fds`` is closed, whichever numbers they have."""
    spare = [os.pipe() for _ in range(40)]  # descriptors below and above the kept one
    report_r, report_w = os.pipe()
    high = os.dup2(spare[0][0], 500)  # a kept one far above the others
    above = os.dup2(spare[0][0], 901)  # and one not kept above it
    try:
        def main() -> int:
            fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
            os.write(report_w, json.dumps(fds).encode())
            return 0

        pid = spawn.fork_child(main, (report_w, high), new_group=False)
        os.close(report_w)
        seen = json.loads(os.read(report_r, 65536))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the listing's own descriptor (from os.listdir) is the only other one
        assert {0, 1, 2, report_w, high} <= set(seen) and len(seen) <= 6
        assert not {above, *(fd for pair in spare for fd in pair)} & set(seen)
    finally:
        for r, w in spare:
            os.close(r)
            os.close(w)
        os.close(report_r)
        os.close(high)
        os.close(above)
