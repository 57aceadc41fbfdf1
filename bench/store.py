"""What a PostgreSQL store costs: navi-actor with ``--store postgresql://…`` against itself on SQLite.

The same run, the same clients: each repetition starts both servers, one
after the other (the order alternates), and measures on each the first
event of a new session (p50: its user message is committed before
``stream_start``), one session flooding one client, and a sparse stream.
PostgreSQL runs from Debian's package (tests/pgserver.py) with its own,
durable settings (fsync on), its data on the same disk as SQLite's file; each
repetition gets a fresh database.

In this table the "baseline" column is navi-actor on SQLite (the default store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.servers import NaviServer, cluster_postgres

if TYPE_CHECKING:
    from bench.runner import Bench, Row


def store_rows(bench: Bench) -> list[Row]:
    from bench.runner import STOP_TIMEOUT, Row, log, run_client
    from bench.stats import summary

    pg, secret = cluster_postgres(bench.workdir, "to measure against")
    note = "baseline: the same navi-actor on SQLite (the default store), in the same run"
    ttfe = Row("store_ttfe_p50", "store", "first event, new session, warm pool: p50, PostgreSQL", "ms",
               "≤ baseline + 1 ms", lambda n, b: b is not None and n <= b + 1.0, note=note)
    flood = Row("store_flood_rate", "store", "one session flood → one client, PostgreSQL", "events/s",
                "≥ 0.9× baseline", lambda n, b: b is not None and n >= 0.9 * b, note=note)
    sparse = Row("store_sparse_p50", "store", "sparse stream 1k events/s, end-to-end: p50, PostgreSQL", "µs",
                 "≤ 1.1× baseline", lambda n, b: b is not None and n <= 1.1 * b, note=note)
    cfg = bench.cfg
    try:
        for r in range(bench.repeat):
            for side in ("navi", "baseline") if r % 2 == 0 else ("baseline", "navi"):
                store = ["--store", pg.create_database(f"bench{r + 1}"), "--cluster-secret-file", str(secret)] \
                    if side == "navi" else []
                label = f"store-{'postgres' if side == 'navi' else 'sqlite'}-{r + 1}"
                args = ["--idle-timeout", "600", *bench.warm_args(2), *store]
                log(f"starting navi-actor ({label}) {' '.join(args)}")
                server = NaviServer(bench.workdir, label, args)
                try:
                    server.start()
                    if bench.has_warm:
                        server.wait_actors(2, 10.0)
                    first = summary(run_client({"kind": "ttfe", "samples": cfg.ttfe_samples, "gap": cfg.ttfe_gap,
                                                "url": server.url}, 60 + cfg.ttfe_samples * 2)["ms"])["p50"]
                    rate = run_client({"kind": "flood", "url": server.url, "events": cfg.flood_events}, 180)["rate"]
                    us = run_client({"kind": "sparse", "url": server.url, "events": cfg.sparse_events,
                                     "rate": cfg.sparse_rate}, 60 + cfg.sparse_events / cfg.sparse_rate * 3)["us"]
                finally:
                    server.stop(timeout=STOP_TIMEOUT)
                getattr(ttfe, side + "_repeats").append(first)
                getattr(flood, side + "_repeats").append(rate)
                getattr(sparse, side + "_repeats").append(us["p50"])
                log(f"{label}: first event p50 {first:.2f} ms, flood {rate:,.0f} events/s, "
                    f"sparse p50 {us['p50']:.0f} µs")
    finally:
        pg.destroy()
    flood.extra["events_per_repeat"] = cfg.flood_events
    sparse.extra["events_per_repeat"] = cfg.sparse_events
    ttfe.extra["samples_per_repeat"] = cfg.ttfe_samples
    return [ttfe, flood, sparse]
