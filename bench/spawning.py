"""Actors alive at once and the actor start rate: the first turns of many new sessions, as fast as they go.

Both rows come from one run per side: 2,000 sessions and WebSockets opened
first (untimed), then each one's first turn, ``spawn_concurrency`` at a
time, against a deadline. The rate counts first turns per second; alive
counts our sessions that have a live actor process (``navi-actor ps``
checked against psutil).
"""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Any

from bench.servers import BenchError, NaviServer, Server

if TYPE_CHECKING:
    from bench.runner import Bench, Row

ALIVE_TARGET = 2000
SPAWN_TARGET = 500.0


def spawning_rows(bench: Bench, want: set[str]) -> list[Row]:
    """The ``alive`` and ``spawn_rate`` rows (those in ``want``), from one run of first turns per side."""
    from bench.runner import Row, log, run_client

    cfg = bench.cfg
    n = cfg.spawn_sessions
    full = n >= ALIVE_TARGET
    alive = Row("alive", "alive", "idle actors alive at once", "actors", f"≥ {ALIVE_TARGET:,}",
                lambda v, b: v >= ALIVE_TARGET, baseline_applicable=False,
                note="baseline: no actors (agents are tasks in the web process)"
                + ("" if full else f"; quick run tried {n}, target not checked"))
    rate = Row("spawn_rate", "spawn_rate", "actor start rate, pool refilling: first turns", "/s",
               f"≥ {SPAWN_TARGET:,.0f}/s", lambda v, b: v >= SPAWN_TARGET,
               note=f"{n} new sessions' first turns, {cfg.spawn_concurrency} at a time; "
                    "baseline: the same first turns in-process")

    def measure(side: str, server: Server, r: int) -> bool:
        res = run_client({"kind": "spawn", "url": server.url, "sessions": n, "concurrency": cfg.spawn_concurrency,
                          "deadline": cfg.spawn_deadline, "setup_concurrency": cfg.setup_concurrency},
                         240 + cfg.spawn_deadline)
        getattr(rate, side + "_repeats").append(res["rate"])
        rate.extra.setdefault(side + "_errors", []).append(res["errors"])
        rate.extra.setdefault(side + "_completed", []).append(res["completed"])
        if res["errors"]:
            rate.extra.setdefault(side + "_first_errors", []).extend(res["first_errors"])
        msg = (f"spawn {side} #{r + 1}: {res['completed']} of {n} first turns in {res['seconds']:.1f} s "
               f"({res['rate']:.0f}/s), {res['errors']} errors")
        if res["timed_out"]:
            msg += f"; stopped at the {cfg.spawn_deadline:.0f} s deadline"
            rate.extra.setdefault(side + "_timed_out", []).append(
                f"{side}: only {res['completed']} of {n} first turns finished within {cfg.spawn_deadline:.0f} s")
        if isinstance(server, NaviServer):
            msg += _count_actors(bench, server, res, alive, rate)
        log(msg)
        return bool(res["timed_out"])

    bench.each("spawn", ["--max-actors", str(max(2500, n + 100)), *bench.warm_args(2)], measure,
              warm=2 if bench.has_warm else 0)
    for side in ("navi", "baseline"):
        if rate.extra.get(side + "_timed_out"):
            rate.note += "; " + rate.extra[side + "_timed_out"][0]
    rows = []
    if "alive" in want:
        alive.finish(evaluate=full)
        rows.append(alive)
    if "spawn_rate" in want:
        rows.append(rate)
    return rows

def _count_actors(bench: Bench, navi: NaviServer, res: dict[str, Any], alive: Row, rate: Row) -> str:
    """Count the sessions of the spawn run that have a live actor; the supervisor's own fork rate."""
    live_pids = set(navi.actor_pids())
    live = len(live_pids)
    alive.extra.setdefault("live_actor_processes", []).append(live)
    try:
        rows = navi.ps()
    except BenchError as exc:  # a supervisor too busy to answer is itself a finding
        alive.extra.setdefault("ps_failed", []).append(str(exc))
        count = max(live - (2 if bench.has_warm else 0), 0)
        if "did not answer" not in alive.note:
            alive.note += f"; `navi-actor ps` did not answer ({exc}), counted with psutil"
    else:
        # a row may be an actor still starting: count only those whose process lives
        count = len({row.get("session_id") for row in rows if row.get("pid") in live_pids}
                    & set(res["session_ids"]))
        alive.extra.setdefault("ps_rows", []).append(len(rows))
    alive.navi_repeats.append(float(count))
    if res["errors"] or res["timed_out"]:
        alive.failed = (f"{res['errors']} first turns failed" if res["errors"] else
                        f"the first turns did not all finish within {bench.cfg.spawn_deadline:.0f} s")
    spawned = [row for row in navi.log_events("supervisor.actor_spawned")
               if res["wall_start"] <= _ts(row) <= res["wall_end"]]
    forks = None
    if len(spawned) > 1:
        span = _ts(spawned[-1]) - _ts(spawned[0])
        forks = (len(spawned) - 1) / span if span > 0 else None
    rate.extra.setdefault("navi_log_spawns_per_s", []).append(forks)
    return (f"; {count} of our sessions have a live actor ({live} actor processes); supervisor log: "
            f"{len(spawned)} actors spawned in the window" + (f", {forks:.0f}/s" if forks else ""))


def _ts(row: dict[str, Any]) -> float:
    try:
        return datetime.datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return math.nan
