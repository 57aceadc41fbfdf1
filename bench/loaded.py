"""First event with many actors alive: navi-actor with idle actors against itself fresh, in the same run.

Three servers per repetition, one after the other (the order rotates):

* ``fresh``: nothing but the warm pool; each sample's session is deleted
  after its turn, as in ``ttfe_warm``, so the server stays fresh;
* ``idle``: ``loaded_idle`` idle actors first (sessions that ran one short
  turn each, untimed), with ``--max-actors`` far above what the run needs;
* ``full``: the same idle actors with ``--max-actors`` equal to their
  number, so the server is at capacity before the first timed turn.

The timed sessions of ``idle`` and ``full`` are kept (not deleted) with their
actors. The warm pool is on top of ``--max-actors`` and the front counts
only the actors it has handed to sessions, so in ``full`` each timed session's
actor takes the place of the longest-idle one, which the front evicts (on the
turn's path, or ahead of it once the last slot is taken: the benchmark does
not assume which); keeping the timed sessions keeps the count at the limit
(deleting one would free its slot, and the next session would need no
eviction). The benchmark checks it: it counts the ``front.actor_evicted``
lines in the server's log (at least one per timed session in ``full``, none
in ``idle``).

In this table the "baseline" column is the fresh server.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.servers import BenchError, NaviServer

if TYPE_CHECKING:
    from bench.runner import Bench, Row

KINDS = ("fresh", "idle", "full")


def loaded_rows(bench: Bench) -> list[Row]:
    from bench.runner import Row

    cfg = bench.cfg
    k = cfg.loaded_idle
    fresh_note = "the navi-actor server with only its warm pool, in the same run as the two below"
    note = "baseline: the same navi-actor, fresh, in the same run"
    rows = {
        ("fresh", "p50"): Row("ttfe_loaded_fresh_p50", "ttfe_loaded", "first event, fresh server: p50", "ms", "-",
                              baseline_applicable=False, note=fresh_note),
        ("fresh", "p99"): Row("ttfe_loaded_fresh_p99", "ttfe_loaded", "first event, fresh server: p99", "ms", "-",
                              baseline_applicable=False),
        ("idle", "p50"): Row("ttfe_loaded_idle_p50", "ttfe_loaded", f"first event, {k} idle actors, free slots: p50",
                             "ms", "≤ 1.2× fresh", lambda n, b: b is not None and n <= 1.2 * b, note=note),
        ("idle", "p99"): Row("ttfe_loaded_idle_p99", "ttfe_loaded", f"first event, {k} idle actors, free slots: p99",
                             "ms", "-", note=note),
        ("full", "p50"): Row("ttfe_loaded_full_p50", "ttfe_loaded",
                             f"first event, {k} idle actors, --max-actors {k} (each new session evicts): p50", "ms",
                             "≤ 1.2× fresh", lambda n, b: b is not None and n <= 1.2 * b, note=note),
        ("full", "p99"): Row("ttfe_loaded_full_p99", "ttfe_loaded",
                             f"first event, {k} idle actors, --max-actors {k} (each new session evicts): p99", "ms", "-",
                             note=note),
    }
    evictions: dict[str, list[int]] = {"idle": [], "full": []}
    for r in range(bench.repeat):
        order = KINDS[r % 3:] + KINDS[:r % 3]
        for kind in order:
            p50, p99, evicted = _measure(bench, kind, r)
            if kind != "fresh":
                evictions[kind].append(evicted)
            for q, value in (("p50", p50), ("p99", p99)):
                if kind == "fresh":
                    rows[("fresh", q)].navi_repeats.append(value)
                    rows[("idle", q)].baseline_repeats.append(value)
                    rows[("full", q)].baseline_repeats.append(value)
                else:
                    rows[(kind, q)].navi_repeats.append(value)
    out = list(rows.values())
    for row in out:
        row.extra["samples_per_repeat"] = cfg.ttfe_samples
        row.extra["idle_actors"] = k
    rows[("full", "p50")].extra["evictions_per_repeat"] = evictions["full"]
    rows[("idle", "p50")].extra["evictions_per_repeat"] = evictions["idle"]
    if any(e < cfg.ttfe_samples for e in evictions["full"]):
        rows[("full", "p50")].failed = (f"not every timed session evicted an actor: {evictions['full']} evictions "
                                        f"for {cfg.ttfe_samples} sessions per repetition")
    if any(e for e in evictions["idle"]):
        rows[("idle", "p50")].failed = f"actors were evicted with free slots: {evictions['idle']}"
    return out


def _measure(bench: Bench, kind: str, r: int) -> tuple[float, float, int]:
    """One server of the kind: its idle actors, then the timed first events; (p50 ms, p99 ms, evictions)."""
    from bench.runner import STOP_TIMEOUT, log, run_client
    from bench.stats import summary

    cfg = bench.cfg
    k, samples = cfg.loaded_idle, cfg.ttfe_samples
    warm = 2 if bench.has_warm else 0
    max_actors = k if kind == "full" else k + samples + 100
    args = ["--idle-timeout", "600", "--max-actors", str(max_actors), *bench.warm_args(2)]
    label = f"ttfe-loaded-{kind}-{r + 1}"
    log(f"starting navi-actor ({label}) {' '.join(args)}")
    server = NaviServer(bench.workdir, label, args)
    try:
        server.start()
        if warm:
            server.wait_actors(warm, 10.0)
        if kind != "fresh":
            made = run_client({"kind": "idle", "url": server.url, "sessions": k,
                               "concurrency": min(25, cfg.setup_concurrency)}, 60 + k)
            # at --max-actors the front may already have retired one, ahead of the next session's need
            least = k - 1 if kind == "full" else k
            alive = _settled_actors(server, least + warm, 30.0)
            if alive < least + warm:
                raise BenchError(f"{label}: {alive} actors after the set-up of {k} idle ones ({warm} warm)")
            log(f"{label}: {k} sessions made idle in {made['seconds']:.1f} s; {alive} actors alive")
        before = len(server.log_events("front.actor_evicted"))
        res = run_client({"kind": "ttfe", "samples": samples, "gap": cfg.ttfe_gap, "url": server.url,
                          "keep": kind != "fresh"}, 60 + samples * 2)
        evicted = _evictions(server, before, samples if kind == "full" else 0)
    finally:
        server.stop(timeout=STOP_TIMEOUT)
    s = summary(res["ms"])
    log(f"{label}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms; {evicted} evictions")
    return s["p50"], s["p99"], evicted


def _settled_actors(server: NaviServer, least: int, timeout: float) -> int:
    """Live actor processes once there are at least ``least`` and their number has held for 0.5 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        n = len(server.actor_pids())
        now = time.monotonic()
        if n != last:
            last, since = n, now
        if (n >= least and now - since >= 0.5) or now > deadline:
            return n
        time.sleep(0.05)


def _evictions(server: NaviServer, before: int, expect: int) -> int:
    """Evictions logged since ``before``, once ``expect`` of them are (or 2 s have passed: log lines lag)."""
    deadline = time.monotonic() + 2.0
    while True:
        n = len(server.log_events("front.actor_evicted")) - before
        if n >= expect or time.monotonic() > deadline:
            return n
        time.sleep(0.05)
