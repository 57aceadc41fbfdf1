"""Prometheus metrics of the whole server, served by the front at ``GET /metrics``.

Per-event numbers are plain integers on the runtime (no lock on the hot
path) read at scrape time; per-turn numbers are prometheus-client histograms
and counters. The supervisor's numbers (spawns, deaths by cause, its ladder
steps, front restarts, actors by state) are fetched from it for each scrape,
so they are included even though they live in another process.
"""

from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping, Protocol, Sized

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from navi_actor import logs
from navi_actor.front.storekeeper import StoreKeeper
from navi_actor.front.storeq import StoreQueue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counted(Protocol):
    """What a scrape reads of the runtime (:class:`navi_actor.front.runtime.Runtime`)."""

    events_forwarded: int
    bytes_forwarded: int
    replays_served: int
    sandbox_failures: int
    viewers: Mapping[str, Collection[object]]  # session id → its connected viewers
    runs: Sized  # the turns running now
    store_queue: StoreQueue
    store_keeper: StoreKeeper
    queue_lengths: Mapping[str, int]  # session id → messages waiting in its queue


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter("navi_turns", "Turns ended, by outcome", ["outcome"], registry=r)
        self.stops = Counter("navi_stops", "Stopped turns, by the ladder step that ended them", ["step"], registry=r)
        self.actor_start = Histogram(
            "navi_actor_start_seconds", "From asking for an actor to its hello", buckets=_LATENCY, registry=r
        )
        self.first_event = Histogram(
            "navi_time_to_first_event_seconds", "From a message to its turn's first agent event",
            buckets=_LATENCY, registry=r,
        )
        self.stop_latency = Histogram(
            "navi_stop_seconds", "From a stop request to the end of the turn", buckets=_LATENCY, registry=r
        )
        self.supervisor: dict[str, Any] = {}
        self.actor_rows: list[dict[str, Any]] = []
        self.warm = 0
        self._runtime: Counted | None = None
        r.register(_Live(self))

    def bind(self, runtime: Counted) -> None:
        self._runtime = runtime

    def render(self, supervisor: dict[str, Any], listing: dict[str, Any]) -> bytes:
        """``supervisor``: its ``status``; ``listing``: its ``list`` (rows of actors with a session, and ``warm``)."""
        self.supervisor, self.actor_rows = supervisor, listing.get("actors", [])
        self.warm = int(listing.get("warm", supervisor.get("warm", 0)))
        return generate_latest(self.registry)


class _Live(Collector):
    """Numbers read at scrape time: the runtime's counters and the supervisor's."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rt = self.m._runtime
        if rt is not None:
            yield from _runtime_metrics(rt)
        yield _actors_by_state(self.m)
        if self.m.supervisor:
            yield from _supervisor_metrics(self.m.supervisor, rt)


def _runtime_metrics(rt: Counted) -> Iterator[Metric]:
    """The front's own numbers: events, clients, runs, the store."""
    yield CounterMetricFamily("navi_events_forwarded", "Events received from actors and forwarded",
                              value=rt.events_forwarded)
    yield CounterMetricFamily("navi_bytes_forwarded", "Bytes of events queued to WebSocket clients",
                              value=rt.bytes_forwarded)
    yield CounterMetricFamily("navi_replays_served", "Replays sent to reconnecting clients",
                              value=rt.replays_served)
    yield GaugeMetricFamily("navi_websocket_clients", "Connected WebSocket clients",
                            value=sum(len(v) for v in rt.viewers.values()))
    yield GaugeMetricFamily("navi_runs", "Turns running now", value=len(rt.runs))
    yield GaugeMetricFamily("navi_queued_messages", "Messages waiting in sessions' queues (if_busy enqueue "
                            "or interrupt) for their turn", value=sum(rt.queue_lengths.values()))
    yield GaugeMetricFamily("navi_queued_sessions", "Sessions with messages waiting in their queue",
                            value=len(rt.queue_lengths))
    sq = rt.store_queue
    yield CounterMetricFamily("navi_store_batches", "Batches of store calls sent to the store thread "
                              "(one transaction each, unless a failed one is retried call by call)",
                              value=sq.batches)
    yield CounterMetricFamily("navi_store_calls", "Store calls, grouped into those batches",
                              value=sq.calls)
    failures = CounterMetricFamily("navi_store_failures", "Store calls that failed in the database "
                                   "(disk full, I/O error), by store method", labels=["op"])
    for op, n in sorted(sq.failures.items()):
        failures.add_metric([op], n)
    yield failures
    keeper = rt.store_keeper
    health = keeper.health()
    yield GaugeMetricFamily("navi_store_up", "1 when the session store writes, 0 while it fails or "
                            "answers wait to be saved", value=1 if health["ok"] else 0)
    yield GaugeMetricFamily("navi_store_unsaved_results", "Turn results kept by the front until "
                            "the store can write them", value=health["unsaved_results"])
    yield GaugeMetricFamily("navi_store_unsaved_bytes", "Text of those results, in bytes "
                            f"(at most {keeper.unsaved.max_bytes})", value=health["unsaved_bytes"])
    yield CounterMetricFamily("navi_store_unsaved_reduced", "Kept results whose text was dropped to "
                              "stay within that bound", value=keeper.unsaved.reduced_total)
    yield CounterMetricFamily("navi_store_refused_turns", "Turns refused (store_error) because the "
                              "store could not write", value=keeper.refused)
    yield CounterMetricFamily("navi_log_lines_dropped", "Log lines the front could not write "
                              "(its log's disk full, say)", value=logs.dropped_lines())


def _actors_by_state(m: Metrics) -> Metric:
    by_state = GaugeMetricFamily(
        "navi_actors", "Actor processes alive, by state: warm (no session yet), then starting, idle, running "
        "and stopping; their sum is /healthz's actors", labels=["state"])
    counts: dict[str, int] = {s: 0 for s in ("starting", "running", "idle", "stopping")}
    for row in m.actor_rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    counts["warm"] = m.warm
    for state, n in counts.items():
        by_state.add_metric([state], n)
    return by_state


def _supervisor_metrics(sup: dict[str, Any], rt: Counted | None) -> Iterator[Metric]:
    """The supervisor's numbers (its ``status``), and the sandbox's."""
    yield CounterMetricFamily("navi_actor_spawns", "Actor processes started", value=sup.get("spawns", 0))
    deaths = CounterMetricFamily("navi_actor_exits", "Actor processes ended, by cause", labels=["cause"])
    for cause, n in sorted(sup.get("deaths", {}).items()):
        deaths.add_metric([cause], n)
    yield deaths
    ladder = CounterMetricFamily(
        "navi_supervisor_ladder_steps", "Stop-ladder steps taken by the supervisor", labels=["step"]
    )
    for step, n in sorted(sup.get("ladder", {}).items()):
        ladder.add_metric([step], n)
    yield ladder
    yield CounterMetricFamily("navi_control_refused", "Connections to the control socket refused because "
                              "they came from a process the server started (an agent, say)",
                              value=sup.get("control_refused", 0))
    yield CounterMetricFamily("navi_front_restarts", "Front processes restarted", value=sup.get("front_restarts", 0))
    zygote = sup.get("zygote") or {}
    yield GaugeMetricFamily("navi_zygote_up", "1 when actors are cloned from the zygote, 0 when the "
                            "supervisor forks them itself (--no-zygote, unsupported, or failed 3 times)",
                            value=0 if zygote.get("off") else 1)
    yield CounterMetricFamily("navi_zygote_failures", "Zygote processes that died or failed to answer",
                              value=zygote.get("failures", 0))
    sandbox = sup.get("sandbox") or {}
    enforced = GaugeMetricFamily("navi_sandbox_enforced", "1 for each part of the actors' sandbox in force "
                                 "(files, tcp_bind, tcp_connect, signals, abstract_unix, seccomp, "
                                 "capabilities), 0 for those that are not", labels=["part"])
    for part in ("files", "tcp_bind", "tcp_connect", "signals", "abstract_unix", "seccomp", "capabilities"):
        enforced.add_metric([part], 1 if part in sandbox.get("enforced", ()) else 0)
    yield enforced
    info = GaugeMetricFamily("navi_sandbox_info", "The sandbox's mode (auto, strict, off) and the Landlock "
                             "ABI it uses (0: none)", labels=["mode", "landlock_abi"])
    info.add_metric([str(sandbox.get("mode", "off")), str(sandbox.get("landlock_abi", 0))], 1)
    yield info
    if rt is not None:
        yield CounterMetricFamily("navi_sandbox_failures", "Actors that could not confine themselves to "
                                  "their session (their turn ended with sandbox_failed)",
                                  value=rt.sandbox_failures)
    yield GaugeMetricFamily("navi_supervisor_uptime_seconds", "Seconds since the server started",
                            value=sup.get("uptime", 0))
