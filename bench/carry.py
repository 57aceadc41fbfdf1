"""Sessions carried: the most sessions at an LLM's pace whose delivery p99 stays within 50 ms, each side.

One server per side, navi-actor first, then the in-process baseline (the
no-store one, as in ``many``): a client process of its own runs the ``carry``
scenario (``bench/paced.py``) against it, which finds N by doubling then
bisection, each probe a short phase of N sessions × 20 deltas/s. The
baseline also runs one probe at navi-actor's N, so that the CPU per event of
every server process is compared at the same load. The search is itself a
series of phases, so the metric runs once per side whatever ``--repeat`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.servers import ZYGOTE_NAME, BaselineServer, NaviServer, Server

if TYPE_CHECKING:
    from bench.runner import Bench, Row

RATE = 20  # deltas per second per session
LIMIT_MS = 50.0  # the p99 delivery a carried session gets
RATIO_TARGET = 0.7
KINDS = (("front", "front", "its one process"), ("supervisor", "supervisor", None), ("zygote", "zygote", None),
         ("actors", "actors, summed", None))


def carry_rows(bench: Bench) -> list[Row]:
    from bench.runner import Row

    cfg = bench.cfg
    how = (f"N by doubling from {cfg.carry_start} (or halving, down to {cfg.carry_floor}), capped at "
           f"{cfg.carry_cap:,}, then bisection until the failing N ≤ {cfg.carry_resolution}× the passing one, in "
           f"steps of {cfg.carry_round}; each probe {cfg.carry_seconds:g} s of N × {RATE} deltas/s")
    sessions = Row("carry_sessions", "carry", f"sessions carried at {RATE}/s with delivery p99 ≤ {LIMIT_MS:g} ms",
                   "sessions", f"≥ {RATIO_TARGET}× baseline", lambda n, b: b is not None and n >= RATIO_TARGET * b,
                   note=how)
    cpu = {}
    for key, what, base in KINDS:
        cpu[key] = Row(f"carry_cpu_{key}", "carry", f"carried at navi-actor's N: CPU, {what}", "µs/event", "-",
                       baseline_applicable=base is not None, note=f"baseline: {base}" if base else "")
    cpu["total"] = Row("carry_cpu_total", "carry", "carried at navi-actor's N: CPU, all server processes",
                       "µs/event", "-",
                       note="navi-actor: supervisor + front + zygote + actors; baseline: its one process")
    results: dict[str, dict[str, Any]] = {}
    for side in ("navi", "baseline"):
        results[side] = _search(bench, side, results.get("navi", {}).get("sessions", 0))
    navi_n = results["navi"]["sessions"]
    for side, res in results.items():
        getattr(sessions, side + "_repeats").append(float(res["sessions"]))
        sessions.extra[side + "_probes"] = res["probes"]
        sessions.extra[side + "_failed_at"] = res["failed_at"]
        at = [p for p in res["probes"] if p["sessions"] == navi_n and "cpu_us_per_event" in p]
        if not navi_n or not at:
            continue
        per = at[-1]["cpu_us_per_event"]
        if side == "navi":
            for key in ("front", "supervisor", "zygote", "actors"):
                cpu[key].navi_repeats.append(per.get(key, 0.0))
        else:
            cpu["front"].baseline_repeats.append(per.get("server", 0.0))
        getattr(cpu["total"], side + "_repeats").append(sum(per.values()))
        cpu["total"].extra[side + "_p99_ms_at_navi_n"] = at[-1].get("p99_ms")
    bounds = "; ".join(f"{side}: {_bound(res, cfg.carry_cap)}" for side, res in results.items())
    sessions.note = f"{bounds}; {how}"
    for row in cpu.values():
        row.extra["sessions"] = navi_n
    return [sessions, *cpu.values()]


def _bound(res: dict[str, Any], cap: int) -> str:
    if res["failed_at"] is None:
        return f"≥ {res['sessions']:,} (passed at the cap of {cap:,})"
    if not res["sessions"]:
        return f"< {res['failed_at']:,} (failed at the floor)"
    return f"{res['sessions']:,} passed, {res['failed_at']:,} failed"


def _search(bench: Bench, side: str, navi_n: int) -> dict[str, Any]:
    from bench.runner import STOP_TIMEOUT, log, run_client

    cfg = bench.cfg
    label = f"carry-{side}-1"
    server: Server
    if side == "navi":
        args = ["--idle-timeout", "600", "--max-actors", str(cfg.carry_cap + 200), *bench.warm_args(2)]
        log(f"starting navi-actor ({label}) {' '.join(args)}")
        server = NaviServer(bench.workdir, label, args)
    else:
        server = BaselineServer(bench.workdir, label)
    sc: dict[str, Any] = {
        "kind": "carry", "rate": RATE, "limit_ms": LIMIT_MS, "seconds": cfg.carry_seconds, "start": cfg.carry_start,
        "cap": cfg.carry_cap, "floor": cfg.carry_floor, "round_to": cfg.carry_round,
        "resolution": cfg.carry_resolution, "concurrency": cfg.setup_concurrency,
        "setup_deadline": cfg.many_setup_deadline, "also": [navi_n] if side == "baseline" else [],
    }
    try:
        server.start()
        if isinstance(server, NaviServer):
            if bench.has_warm:
                server.wait_actors(2, 10.0)
            sc.update(front_pid=server.front_pid, zygote_name=ZYGOTE_NAME)
        res = run_client({**sc, "url": server.url, "tree_root": server.pid}, 900)
    finally:
        server.stop(timeout=STOP_TIMEOUT)
    for p in res["probes"]:
        got = (f"p99 {p['p99_ms']:.1f} ms, p50 {p['p50_ms']:.1f} ms, {p['events_per_s']:,.0f} events/s, "
               f"CPU {sum(p['cpu_us_per_event'].values()):.1f} µs/event (client {p['client_cpu_us_per_event']:.1f})"
               if "p99_ms" in p else p.get("why", ""))
        log(f"carry {side}: {p['sessions']} sessions {'pass' if p['passed'] else 'FAIL'}"
            f"{'' if p['searched'] else ' (at the other side’s N)'}: {got}")
    log(f"carry {side}: {_bound(res, cfg.carry_cap)}")
    return res
