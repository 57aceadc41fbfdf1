"""What the sandbox costs: navi-actor with ``--sandbox auto`` against itself with ``--sandbox off``.

The same run, the same sessions: each repetition starts both servers, one
after the other (the order alternates), and measures

* CPU per actor start: the time each idle actor process has run
  (``/proc/PID/schedstat``), from its clone to the end of its first turn (a short turn, the same on both);
  the difference between the two is what the sandbox costs an actor;
* idle USS of those actors after a GC;
* the first event of a new session (p50), warm pool.

In this table the "baseline" column is navi-actor with the sandbox off.
"""

from __future__ import annotations

from statistics import median
from typing import TYPE_CHECKING

import psutil

from bench.servers import BenchError, NaviServer

if TYPE_CHECKING:
    from bench.runner import Bench, Row


def _cpu_ms(pid: int) -> float:
    """CPU time a process has run, in ms, from the scheduler's nanosecond count (psutil's has 10 ms ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def sandbox_rows(bench: Bench) -> list[Row]:
    from bench.runner import STOP_TIMEOUT, Row, log, run_client
    from bench.stats import summary

    note = "baseline: the same navi-actor with --sandbox off, in the same run"
    cpu = Row("sandbox_start_cpu", "sandbox", "CPU per actor start (clone to end of first turn)", "ms",
              "≤ +0.5 ms", lambda n, b: b is not None and n - b <= 0.5, note=note)
    uss = Row("sandbox_idle_uss", "sandbox", "idle actor USS after a GC, sandboxed", "MiB", "≤ 4 MiB",
              lambda n, b: n <= 4.0, note=note)
    ttfe = Row("sandbox_ttfe_p50", "sandbox", "first event, new session, warm pool: p50, sandboxed", "ms",
               "within noise (≤ 1.15×)", lambda n, b: b is not None and n <= b * 1.15, note=note)
    n = bench.cfg.memory_sessions
    samples = max(10, bench.cfg.ttfe_samples // 2)
    for r in range(bench.repeat):
        for side in ("navi", "baseline") if r % 2 == 0 else ("baseline", "navi"):
            args = ["--idle-timeout", "600", *bench.warm_args(2), *([] if side == "navi" else ["--sandbox", "off"])]
            label = f"sandbox-{'on' if side == 'navi' else 'off'}-{r + 1}"
            log(f"starting navi-actor ({label}) {' '.join(args)}")
            server = NaviServer(bench.workdir, label, args)
            try:
                server.start()
                if bench.has_warm:
                    server.wait_actors(2, 10.0)
                sids = set(run_client({"kind": "memory", "url": server.url, "sessions": n}, 120)["session_ids"])
                pids = [a["pid"] for a in server.ps() if a.get("session_id") in sids and a.get("pid")]
                if len(pids) != n:
                    raise BenchError(f"navi-actor ps lists {len(pids)} actors for the {n} sessions")
                procs = [psutil.Process(p) for p in pids]
                cpu_ms = [_cpu_ms(p.pid) for p in procs]
                uss_mib = [p.memory_full_info().uss / 2**20 for p in procs]
                res = run_client({"kind": "ttfe", "samples": samples, "gap": bench.cfg.ttfe_gap,
                                  "url": server.url}, 60 + samples * 2)
                first = summary(res["ms"])["p50"]
            finally:
                server.stop(timeout=STOP_TIMEOUT)
            getattr(cpu, side + "_repeats").append(median(cpu_ms))
            getattr(uss, side + "_repeats").append(median(uss_mib))
            getattr(ttfe, side + "_repeats").append(first)
            log(f"{label}: actor CPU p50 {median(cpu_ms):.2f} ms, idle USS p50 {median(uss_mib):.3f} MiB, "
                f"first event p50 {first:.2f} ms")
    for row in (cpu, uss, ttfe):
        row.extra["sessions_per_repeat"] = n
    return [cpu, uss, ttfe]
