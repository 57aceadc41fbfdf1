"""What the relay costs: a viewer served through a node that does not run the turn, against one served
by the node that does.

Two nodes share one PostgreSQL (tests/pgserver.py) and a cluster secret. A
turn starts on node 1 and waits 0.3 s (``hold``); its starter leaves, and one
viewer joins before its first delta, through node 1 (the baseline) or through
node 2 (relayed from node 1 over a node-to-node WebSocket). Each repetition
measures both, in alternating order, on the same two nodes: the rate of a flood
seen by the viewer, and the end-to-end delay of a sparse stream's deltas.

In this table the "baseline" column is the same viewer served by the node that runs the turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.servers import NaviServer, cluster_postgres

if TYPE_CHECKING:
    from bench.runner import Bench, Row


def relay_rows(bench: Bench) -> list[Row]:
    from bench.runner import STOP_TIMEOUT, Row, log, run_client

    pg, secret = cluster_postgres(bench.workdir, "to run two nodes on")
    note = "baseline: the same viewer served by the node that runs the turn, in the same run"
    flood = Row("relay_flood_rate", "relay", "one session flood → a viewer relayed by another node", "events/s",
                "≥ 0.5× baseline", lambda n, b: b is not None and n >= 0.5 * b, note=note)
    sparse = Row("relay_sparse_p50", "relay", "sparse stream 1k events/s, relayed by another node: p50", "µs",
                 "≤ baseline + 500 µs", lambda n, b: b is not None and n <= b + 500, note=note)
    cfg = bench.cfg
    nodes: list[NaviServer] = []
    try:
        url = pg.create_database("relay")
        for i in (1, 2):
            args = ["--idle-timeout", "600", *bench.warm_args(2), "--store", url, "--node-id", f"n{i}",
                    "--cluster-secret-file", str(secret)]
            log(f"starting navi-actor node {i} {' '.join(args)}")
            nodes.append(NaviServer(bench.workdir, f"relay-n{i}", args).start())
        owner, other = nodes[0].url, nodes[1].url
        for r in range(bench.repeat):
            for side in ("navi", "baseline") if r % 2 == 0 else ("baseline", "navi"):
                via = other if side == "navi" else owner
                rate = run_client({"kind": "joined", "mode": "flood", "owner": owner, "url": via,
                                   "events": cfg.flood_events}, 180)["rate"]
                us = run_client({"kind": "joined", "mode": "sparse", "owner": owner, "url": via,
                                 "events": cfg.sparse_events, "rate": cfg.sparse_rate},
                                60 + cfg.sparse_events / cfg.sparse_rate * 3)["us"]
                getattr(flood, side + "_repeats").append(rate)
                getattr(sparse, side + "_repeats").append(us["p50"])
                log(f"relay {r + 1} {'relayed' if side == 'navi' else 'direct'}: flood {rate:,.0f} events/s, "
                    f"sparse p50 {us['p50']:.0f} µs")
    finally:
        for node in nodes:
            node.stop(timeout=STOP_TIMEOUT)
        pg.destroy()
    flood.extra["events_per_repeat"] = cfg.flood_events
    sparse.extra["events_per_repeat"] = cfg.sparse_events
    return [flood, sparse]
