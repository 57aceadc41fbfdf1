"""The measurements: the same client scenarios against navi-actor and the baseline, made into rows.

Each side of each repetition gets a server of its own, alone on the machine
(as far as this benchmark goes). Sides take turns going first, one
repetition after another, so that load from elsewhere falls on all alike; a row holds the median over
repetitions of each repetition's figure, and the figures themselves. A
target is checked on the medians, as printed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from bench.servers import ROOT, BaselineServer, BenchError, NaviServer, Server, child_env, die_with_parent
from bench.stats import median, summary


@dataclasses.dataclass(frozen=True)
class Config:
    ttfe_samples: int
    ttfe_gap: float
    cold_samples: int
    flood_events: int
    sparse_events: int
    sparse_rate: int
    many_sessions: int
    many_events: int
    many_rate: int
    memory_sessions: int
    spawn_sessions: int
    spawn_concurrency: int
    spawn_deadline: float
    setup_concurrency: int
    many_setup_deadline: float
    loaded_idle: int  # ttfe_loaded: idle actors alive before the timed first events
    carry_start: int  # carry: the first N probed, then doubled (or halved) to the first failure
    carry_cap: int  # carry: the most sessions probed
    carry_floor: int  # carry: the fewest
    carry_round: int  # carry: bisection steps are multiples of this
    carry_resolution: float  # carry: bisection stops when failing N ≤ this × passing N
    carry_seconds: float  # carry: each probe's phase of streaming


FULL = Config(ttfe_samples=100, ttfe_gap=0.04, cold_samples=60, flood_events=300_000, sparse_events=5000,
              sparse_rate=1000, many_sessions=1000, many_events=160, many_rate=20, memory_sessions=20,
              spawn_sessions=2000, spawn_concurrency=100, spawn_deadline=30.0, setup_concurrency=100,
              many_setup_deadline=45.0, loaded_idle=250, carry_start=250, carry_cap=3000, carry_floor=25,
              carry_round=25, carry_resolution=1.2, carry_seconds=4.0)
QUICK = Config(ttfe_samples=10, ttfe_gap=0.05, cold_samples=10, flood_events=20_000, sparse_events=200,
               sparse_rate=1000, many_sessions=40, many_events=20, many_rate=20, memory_sessions=3,
               spawn_sessions=60, spawn_concurrency=20, spawn_deadline=20.0, setup_concurrency=20,
               many_setup_deadline=20.0, loaded_idle=8, carry_start=10, carry_cap=20, carry_floor=5,
               carry_round=5, carry_resolution=1.5, carry_seconds=1.0)

STOP_TIMEOUT = 15.0  # seconds from SIGTERM to SIGKILL; a slower shutdown is logged and noted in the JSON

METRICS = ("ttfe_warm", "ttfe_cold", "ttfe_loaded", "flood", "sparse", "many", "carry", "memory", "alive", "spawn_rate",
           "sandbox", "store", "relay")


@dataclasses.dataclass
class Row:
    id: str
    metric: str
    label: str
    unit: str
    target: str
    check: Callable[[float, float | None], bool] | None = None  # (navi, baseline) → met?
    navi: float | None = None
    baseline: float | None = None
    navi_repeats: list[float | None] = dataclasses.field(default_factory=list)
    baseline_repeats: list[float | None] = dataclasses.field(default_factory=list)
    baseline_applicable: bool = True
    comparable: bool = True  # False: the two columns measure different things, so no ratio
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    passed: bool | None = None
    error: str | None = None
    failed: str | None = None  # the scenario itself could not be run to the end: a miss, with why
    done: bool = False

    @property
    def ratio(self) -> float | None:
        if self.navi is None or not self.baseline or not self.comparable:
            return None
        return self.navi / self.baseline

    def finish(self, evaluate: bool = True) -> Row:
        self.done = True
        self.navi = median(self.navi_repeats)
        self.baseline = median(self.baseline_repeats) if self.baseline_applicable else None
        if self.failed:
            self.passed = False
            self.note = f"{self.failed}; {self.note}" if self.note else self.failed
        elif evaluate and self.check is not None and self.navi is not None and self.error is None:
            if self.baseline_applicable and self.baseline is None:
                self.passed = None
            else:
                self.passed = bool(self.check(self.navi, self.baseline))
        return self

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("check", "done", "failed")}
        d["ratio"] = self.ratio
        d["pass"] = d.pop("passed")
        return d


def _nan_to_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_client(scenario: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one scenario in a client process of its own; its JSON result, or BenchError."""
    scenario = {**scenario, "timeout": timeout}
    proc = subprocess.Popen([sys.executable, "-m", "bench.clients"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=child_env(),
                            start_new_session=True, preexec_fn=die_with_parent)
    try:
        out, err = proc.communicate(json.dumps(scenario).encode(), timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"client {scenario['kind']} did not finish within {timeout + 15:.0f} s") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    try:
        result = json.loads(out)
    except ValueError:
        raise BenchError(f"client {scenario['kind']} exited {proc.returncode}: "
                         f"{err.decode(errors='replace')[-1500:]}") from None
    if proc.returncode != 0 or "error" in result:
        raise BenchError(f"client {result.get('error') or err.decode(errors='replace')[-1500:]}")
    return result


class Bench:
    """The measurements. Each side runs alone: its server is started for it and stopped after it.

    An idle navi-actor is not free (its supervisor samples every actor's
    memory twice a second), so the server not being measured is not left
    running beside the one that is.
    """

    def __init__(self, cfg: Config, repeat: int, workdir: Path, quick: bool) -> None:
        self.cfg = cfg
        self.repeat = repeat
        self.workdir = workdir
        self.quick = quick
        self.has_warm = False
        self.errors: list[str] = []
        self.shutdowns: dict[str, float] = {}  # navi-actor server → seconds from SIGTERM to gone

    def warm_args(self, n: int | None) -> list[str]:
        return ["--warm-actors", str(n)] if self.has_warm and n is not None else []

    def each(self, name: str, navi_args: list[str], measure: Callable[[str, Server, int], bool | None],
             repeats: int | None = None, warm: int = 0, sides: tuple[str, ...] = ("navi", "baseline")) -> None:
        """``measure(side, server, r)`` for each repetition and side, on a server of its own.

        Sides take turns going first (rotated each repetition). A side is
        ``navi``, ``baseline`` or ``durable`` (the baseline with its SQLite
        store). ``measure`` returning True ends the repetitions (it hit a
        deadline, and the next would too).
        """
        for r in range(repeats or self.repeat):
            stop_early = False
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                label = f"{name}-{side}-{r + 1}"
                server: Server
                if side == "navi":
                    log(f"starting navi-actor ({label}) {' '.join(navi_args)}")
                    server = NaviServer(self.workdir, label, ["--idle-timeout", "600", *navi_args])
                else:
                    server = BaselineServer(self.workdir, label, durable=side == "durable")
                try:
                    server.start()
                    if warm and isinstance(server, NaviServer):
                        server.wait_actors(warm, 10.0)
                    stop_early = bool(measure(side, server, r)) or stop_early
                finally:
                    t0 = time.monotonic()
                    server.stop(timeout=STOP_TIMEOUT)
                    if side == "navi":
                        self.shutdowns[label] = round(time.monotonic() - t0, 2)
                        log(f"{label} stopped in {self.shutdowns[label]:.1f} s")
            if stop_early and r + 1 < (repeats or self.repeat):
                log(f"{name}: repetition {r + 1} hit its deadline; the others are skipped (they would too)")
                return

    # ── time to first event ───────────────────────────────────────────────
    def ttfe_warm(self) -> list[Row]:
        note = "" if self.has_warm else "this navi-actor has no --warm-actors: every first turn forks"
        p50 = Row("ttfe_warm_p50", "ttfe_warm", "first event, new session, warm pool: p50", "ms", "≤ 2 ms",
                  lambda n, b: n <= 2.0, note=note)
        p99 = Row("ttfe_warm_p99", "ttfe_warm", "first event, new session, warm pool: p99", "ms", "≤ 10 ms",
                  lambda n, b: n <= 10.0, note=note)
        durable = "baseline: in-process with its SQLite store, the message committed (fsynced) before stream_start"
        d50 = Row("ttfe_warm_durable_p50", "ttfe_warm", "first event, new session, warm pool: p50, durable baseline",
                  "ms", "≤ baseline + 0.5 ms", lambda n, b: b is not None and n <= b + 0.5, note=durable)
        d99 = Row("ttfe_warm_durable_p99", "ttfe_warm", "first event, new session, warm pool: p99, durable baseline",
                  "ms", "≤ baseline + 2 ms", lambda n, b: b is not None and n <= b + 2.0, note=durable)
        self._ttfe([p50, p99], "ttfe-warm", self.warm_args(2), self.cfg.ttfe_samples, 2 if self.has_warm else 0,
                   durable=[d50, d99])
        for row in (d50, d99):  # the same navi-actor figures, against the other baseline
            row.navi_repeats = (p50 if row is d50 else p99).navi_repeats
        return [p50, p99, d50, d99]

    def ttfe_cold(self) -> list[Row]:
        p50 = Row("ttfe_cold_p50", "ttfe_cold", "first event, new session, pool empty: p50", "ms", "-")
        p99 = Row("ttfe_cold_p99", "ttfe_cold", "first event, new session, pool empty: p99", "ms", "≤ 30 ms",
                  lambda n, b: n <= 30.0)
        if not self.has_warm:
            for row in (p50, p99):
                row.note = "n/a: `navi-actor serve --help` lists no --warm-actors, so the pool cannot be emptied"
                row.baseline_applicable = False
            return [p50, p99]
        self._ttfe([p50, p99], "ttfe-cold", ["--warm-actors", "0"], self.cfg.cold_samples, 0)
        return [p50, p99]

    def _ttfe(self, rows: list[Row], name: str, args: list[str], samples: int, warm: int,
              durable: list[Row] | None = None) -> None:
        """Fill ``rows`` (p50, p99) from navi-actor and the baseline; ``durable`` from the durable baseline too."""
        sc = {"kind": "ttfe", "samples": samples, "gap": self.cfg.ttfe_gap}

        def measure(side: str, server: Server, r: int) -> None:
            res = run_client({**sc, "url": server.url}, 60 + samples * 2)
            s, st = summary(res["ms"]), summary(res["to_stream_start_ms"])
            p50, p99 = durable if side == "durable" and durable else rows
            col = "navi" if side == "navi" else "baseline"
            getattr(p50, col + "_repeats").append(s["p50"])
            getattr(p99, col + "_repeats").append(s["p99"])
            p50.extra.setdefault(col + "_to_stream_start_p50_ms", []).append(st["p50"])
            p99.extra.setdefault(col + "_max_ms", []).append(s["max"])
            log(f"{name} {side} #{r + 1}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} "
                f"(stream_start p50 {st['p50']:.2f} ms)")

        self.each(name, args, measure, warm=warm,
                  sides=("navi", "baseline", "durable") if durable else ("navi", "baseline"))
        for row in rows + (durable or []):
            row.extra["samples_per_repeat"] = samples

    # ── one session, flood ────────────────────────────────────────────────
    def flood(self) -> list[Row]:
        rate = Row("flood_rate", "flood", "one session flood → one client", "events/s",
                   "≥ 250,000/s and ≥ 1.5× baseline", lambda n, b: n >= 250_000 and b is not None and n >= 1.5 * b)
        per = Row("flood_messages_per_event", "flood", "one session flood: WS messages", "msg/event",
                  "= 1", lambda n, b: abs(n - 1.0) < 1e-9)

        def measure(side: str, server: Server, r: int) -> None:
            res = run_client({"kind": "flood", "url": server.url, "events": self.cfg.flood_events}, 180)
            getattr(rate, side + "_repeats").append(res["rate"])
            getattr(per, side + "_repeats").append(res["messages_per_event"])
            log(f"flood {side} #{r + 1}: {res['rate']:,.0f} events/s, "
                f"{res['delta_frames']} delta frames for {res['events']} events")

        self.each("flood", self.warm_args(2), measure)
        rate.extra["events_per_repeat"] = self.cfg.flood_events
        return [rate, per]

    # ── sparse stream ─────────────────────────────────────────────────────
    def sparse(self) -> list[Row]:
        cfg = self.cfg
        p50 = Row("sparse_p50", "sparse", "sparse stream 1k events/s, end-to-end: p50", "µs",
                  "≤ baseline + 100 µs", lambda n, b: b is not None and n <= b + 100)
        p99 = Row("sparse_p99", "sparse", "sparse stream 1k events/s, end-to-end: p99", "µs", "≤ 1,000 µs",
                  lambda n, b: n <= 1000)

        def measure(side: str, server: Server, r: int) -> None:
            res = run_client({"kind": "sparse", "url": server.url, "events": cfg.sparse_events,
                              "rate": cfg.sparse_rate}, 60 + cfg.sparse_events / cfg.sparse_rate * 3)
            us = res["us"]
            getattr(p50, side + "_repeats").append(us["p50"])
            getattr(p99, side + "_repeats").append(us["p99"])
            p99.extra.setdefault(side + "_max_us", []).append(us["max"])
            log(f"sparse {side} #{r + 1}: p50 {us['p50']:.0f} µs, p99 {us['p99']:.0f} µs, max {us['max']:.0f} µs")

        self.each("sparse", self.warm_args(2), measure)
        p50.extra["events_per_repeat"] = cfg.sparse_events
        return [p50, p99]

    # ── many sessions ─────────────────────────────────────────────────────
    def many(self) -> list[Row]:
        cfg = self.cfg
        what = f"{cfg.many_sessions} sessions × {cfg.many_rate}/s"
        p99 = Row("many_p99", "many", f"{what}: delivery p99", "ms", "≤ 50 ms", lambda n, b: n <= 50,
                  note=f"every delta of the {cfg.many_sessions} streams, started together; extra.*_phases also "
                       "has the window when all were streaming at once")
        p50 = Row("many_p50", "many", f"{what}: delivery p50", "ms", "-")
        rate = Row("many_rate", "many", f"{what}: delivered", "events/s", "-",
                   note=f"{cfg.many_sessions * cfg.many_rate:,} offered; less means the streams took longer "
                        "than the agents' pace")
        front = Row("many_front_cpu", "many", f"{what}: front CPU", "µs/event", "-",
                    note="baseline: its one process, agents included")
        tree = Row("many_total_cpu", "many", f"{what}: CPU, all server processes", "µs/event", "-",
                   note="navi-actor: supervisor + front + actors")
        rows = [p99, p50, rate, front, tree]

        def measure(side: str, server: Server, r: int) -> None:
            cpu = [server.front_pid] if isinstance(server, NaviServer) else [server.pid]
            res = run_client({"kind": "many", "url": server.url, "sessions": cfg.many_sessions,
                              "events": cfg.many_events, "rate": cfg.many_rate, "phases": self.repeat,
                              "concurrency": cfg.setup_concurrency, "cpu_pids": cpu, "tree_root": server.pid,
                              "setup_deadline": cfg.many_setup_deadline},
                             120 + cfg.many_setup_deadline + self.repeat * (cfg.many_events / cfg.many_rate + 30))
            if "setup_incomplete" in res:
                inc = res["setup_incomplete"]
                why = (f"{side}: only {inc['ready']} of {inc['sessions']} sessions had finished a first turn "
                       f"after {inc['seconds']:.0f} s, so the {cfg.many_sessions} sessions never streamed at once")
                log(f"many {why}")
                p99.extra[side + "_setup_incomplete"] = inc
                if side == "navi":
                    p99.failed = why
                else:
                    p99.error = why
                return
            for i, ph in enumerate(res["phases"]):
                getattr(p99, side + "_repeats").append(_nan_to_none(ph["all_ms"]["p99"]))
                getattr(p50, side + "_repeats").append(_nan_to_none(ph["all_ms"]["p50"]))
                getattr(rate, side + "_repeats").append(ph["events_per_s"])
                getattr(front, side + "_repeats").append(ph["front_cpu_us_per_event"])
                getattr(tree, side + "_repeats").append(ph["tree_cpu_us_per_event"])
                p99.extra.setdefault(side + "_phases", []).append(
                    {k: ph[k] for k in ("events", "seconds", "steady_window_s", "steady_ms", "all_ms",
                                        "events_per_s")})
                log(f"many {side} #{i + 1}: p99 {ph['all_ms']['p99']:.1f} ms, p50 {ph['all_ms']['p50']:.1f} ms; "
                    f"all streaming at once for {ph['steady_window_s']:.1f} s: p99 {ph['steady_ms']['p99']:.1f} ms; "
                    f"front {ph['front_cpu_us_per_event']:.1f} µs/event, {ph['events_per_s']:,.0f} events/s")

        # one set-up per side (1,000 sessions, connections, actors), then --repeat phases on it
        self.each("many", ["--max-actors", str(cfg.many_sessions + 200), *self.warm_args(2)], measure, repeats=1,
                  warm=2 if self.has_warm else 0)
        return rows

    # ── idle memory ───────────────────────────────────────────────────────
    def memory(self) -> list[Row]:
        row = Row("memory_idle_uss", "memory", "idle actor USS after a GC", "MiB", "≤ 4 MiB",
                  lambda n, b: n <= 4.0, comparable=False,
                  note="baseline: USS growth of its process per idle session (after the same GC turn)")
        n = self.cfg.memory_sessions

        def measure(side: str, server: Server, r: int) -> None:
            if isinstance(server, NaviServer):
                sids = set(run_client({"kind": "memory", "url": server.url, "sessions": n}, 120)["session_ids"])
                pids = [a["pid"] for a in server.ps() if a.get("session_id") in sids and a.get("pid")]
                if len(pids) != n:
                    raise BenchError(f"navi-actor ps lists {len(pids)} actors for the {n} sessions")
                uss = sorted(psutil.Process(p).memory_full_info().uss / 2**20 for p in pids)
                value = median(uss)
                row.extra.setdefault("navi_uss_mib", []).append(uss)
            else:
                run_client({"kind": "memory", "url": server.url, "sessions": 1}, 60)  # warm the code paths
                before = psutil.Process(server.pid).memory_full_info().uss
                run_client({"kind": "memory", "url": server.url, "sessions": n}, 120)
                after = psutil.Process(server.pid).memory_full_info().uss
                value = (after - before) / n / 2**20
            getattr(row, side + "_repeats").append(value)
            log(f"memory {side} #{r + 1}: {value:.3f} MiB")

        self.each("memory", self.warm_args(2), measure)
        row.extra["sessions_per_repeat"] = n
        return [row]

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    import platform

    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg(), "git": _git()}


def _git() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified_files": len(status.splitlines()) if status else 0}


def run_all(bench: Bench, only: list[str]) -> list[Row]:
    rows: list[Row] = []
    plan: list[tuple[str, Callable[[], list[Row]]]] = []
    for m in ("ttfe_warm", "ttfe_cold", "ttfe_loaded", "flood", "sparse", "many", "carry", "memory"):
        if m not in only:
            continue
        if m == "ttfe_loaded":
            from bench.loaded import loaded_rows

            plan.append((m, lambda: loaded_rows(bench)))
        elif m == "carry":
            from bench.carry import carry_rows

            plan.append((m, lambda: carry_rows(bench)))
        else:
            plan.append((m, getattr(bench, m)))
    want = {m for m in ("alive", "spawn_rate") if m in only}
    if want:
        from bench.spawning import spawning_rows

        plan.append(("alive,spawn_rate", lambda: spawning_rows(bench, want)))
    if "sandbox" in only:
        from bench.sandbox import sandbox_rows

        plan.append(("sandbox", lambda: sandbox_rows(bench)))
    if "store" in only:
        from bench.store import store_rows

        plan.append(("store", lambda: store_rows(bench)))
    if "relay" in only:
        from bench.relay import relay_rows

        plan.append(("relay", lambda: relay_rows(bench)))
    for name, fn in plan:
        t0 = time.monotonic()
        try:
            got = fn()
        except Exception as exc:  # one broken measurement must not stop the others
            text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {text}")
            bench.errors.append(f"{name}: {text}")
            got = [Row(f"{m}_error", m, m, "-", "-", error=text) for m in name.split(",")]
        for row in got:
            if not row.error and not row.done:
                row.finish()
            rows.append(row)
        log(f"{name} done in {time.monotonic() - t0:.1f} s")
    return rows
