"""Many sessions at an LLM's pace: the ``many`` and ``carry`` client scenarios.

Each session has one client and streams ``llm EVENTS RATE`` (deltas stamped
by the agent with ``time.monotonic()``); the delivery delay of a delta is its
receive time minus its stamp.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import psutil

from bench.stats import summary
from bench.wsclient import (FINAL, ClientError, connect, delete_session, gather_limited, http_client, message,
                            new_session, turn)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _tree(root: int) -> list[int]:
    try:
        p = psutil.Process(root)
        return [root] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class SetupIncomplete(Exception):
    """Not every session had finished its first turn by the set-up deadline."""

    def __init__(self, sessions: int, ready: int, seconds: float, sids: list[str]) -> None:
        super().__init__(f"only {ready} of {sessions} sessions had finished a first turn after {seconds:.0f} s")
        self.info = {"sessions": sessions, "ready": ready, "seconds": seconds}
        self.sids = sids  # the sessions made (their sockets are closed)


async def open_ready(http: aiohttp.ClientSession, url: str, n: int, limit: int,
                     deadline: float) -> tuple[list[str], list[aiohttp.ClientWebSocketResponse]]:
    """``n`` new sessions, their WebSockets, and a first turn in each (so each has its actor); untimed.

    Raises :class:`SetupIncomplete` (the sockets closed) when the first turns
    take more than ``deadline`` seconds.
    """
    sids = await gather_limited(n, limit, lambda i: new_session(http, url))
    sockets = await gather_limited(n, limit, lambda i: connect(http, url, sids[i]))
    ready = 0

    async def first_turn(i: int) -> None:
        nonlocal ready
        await turn(sockets[i], "one")
        ready += 1

    t0 = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            await gather_limited(n, limit, first_turn)
    except TimeoutError:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        raise SetupIncomplete(n, ready, time.monotonic() - t0, sids) from None
    return sids, sockets


async def phase(sockets: list[aiohttp.ClientWebSocketResponse], content: str) -> dict[str, Any]:
    """Every socket sends ``content`` at once and reads its stream to ``stream_end``.

    Returns the delivery delays (ms) of every delta (``all_ms``) and of those
    in the steady window (``steady_ms``: from the moment every session has
    received a delta to the moment the first one ends, when all stream at
    once), the events received and the seconds it took. A turn that ends
    otherwise raises :class:`ClientError`.
    """
    n = len(sockets)
    first_at: list[float] = [0.0] * n
    end_at: list[float] = [0.0] * n
    samples: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    counts = [0] * n

    async def stream(i: int) -> None:
        ws = sockets[i]
        await ws.send_str(message(content))
        mine = samples[i]
        while True:
            msg = await ws.receive()
            now = time.monotonic()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ClientError(f"session {i}: got {msg.type.name} {msg.data!r} {msg.extra!r}")
            counts[i] += 1
            ev = orjson.loads(msg.data)
            if ev["type"] == "stream_delta":
                stamp = float(ev["delta"])
                mine.append((stamp, now))
                if not first_at[i]:
                    first_at[i] = now
            elif ev["type"] in FINAL:
                end_at[i] = now
                if ev["type"] != "stream_end":
                    raise ClientError(f"session {i}: turn ended with {ev}")
                return

    t0 = time.monotonic()
    await asyncio.gather(*(stream(i) for i in range(n)))
    seconds = time.monotonic() - t0
    lo, hi = max(first_at), min(end_at)
    all_ms = [(now - stamp) * 1000 for mine in samples for stamp, now in mine]
    steady_ms = [(now - stamp) * 1000 for mine in samples for stamp, now in mine if lo <= stamp <= hi]
    return {"events": sum(counts), "deltas": len(all_ms), "seconds": seconds, "steady_window_s": max(hi - lo, 0.0),
            "steady_ms": summary(steady_ms), "all_ms": summary(all_ms), "events_per_s": sum(counts) / seconds}


async def many(sc: dict[str, Any]) -> dict[str, Any]:
    """``sessions`` clients, one session each, all streaming ``llm EVENTS RATE`` at once, ``phases`` times.

    Set-up (untimed): :func:`open_ready`; if it misses ``setup_deadline``,
    the result says how far it got instead. Each phase is a :func:`phase`,
    with the CPU of ``cpu_pids`` (the front) and of the tree under
    ``tree_root`` (every server process) per event received.
    """
    url, n, limit = sc["url"], sc["sessions"], sc["concurrency"]
    content = f"llm {sc['events']} {sc['rate']}"
    phases = []
    async with http_client() as http:
        try:
            _, sockets = await open_ready(http, url, n, limit, sc["setup_deadline"])
        except SetupIncomplete as exc:
            return {"setup_incomplete": exc.info}
        for _ in range(sc["phases"]):
            front_pids = sc["cpu_pids"]
            tree = _tree(sc["tree_root"]) if sc.get("tree_root") else front_pids
            cpu_front0, cpu_tree0 = _cpu_seconds(front_pids), _cpu_seconds(tree)
            ph = await phase(sockets, content)
            cpu_front1, cpu_tree1 = _cpu_seconds(front_pids), _cpu_seconds(tree)
            events = ph["events"]
            ph["front_cpu_us_per_event"] = (cpu_front1 - cpu_front0) / events * 1e6
            ph["tree_cpu_us_per_event"] = (cpu_tree1 - cpu_tree0) / events * 1e6
            phases.append(ph)
        await asyncio.gather(*(ws.close() for ws in sockets))
    return {"phases": phases}


# ── sessions carried: the largest N whose p99 delivery stays within the limit ──


def _cpu_ns(pid: int) -> int:
    """Nanoseconds the process has run (``/proc/PID/schedstat``; psutil's times have 10 ms ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_by_kind(root: int, front: int, zygote_name: str) -> dict[int, tuple[str, int]]:
    """Every process of the server under ``root``: pid → (kind, CPU ns so far).

    Kinds: ``supervisor`` (``root``, when there is a ``front``), ``front``,
    ``zygote``, ``actors``; a server of one process (the baseline) is ``server``.
    """
    out: dict[int, tuple[str, int]] = {}
    for pid in _tree(root):
        if pid == root:
            kind = "supervisor" if front else "server"
        elif pid == front:
            kind = "front"
        else:
            try:
                kind = "zygote" if psutil.Process(pid).name() == zygote_name else "actors"
            except psutil.NoSuchProcess:
                continue
        try:
            out[pid] = (kind, _cpu_ns(pid))
        except OSError:
            continue
    return out


def cpu_used(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds per kind between two :func:`cpu_by_kind` (a process born between them counts from 0)."""
    used: dict[str, float] = {}
    for pid, (kind, ns) in after.items():
        used[kind] = used.get(kind, 0.0) + (ns - before.get(pid, (kind, 0))[1]) / 1e9
    return used


class Pool:
    """The scenario's sessions, each with an open WebSocket and a first turn done; grown or shrunk to N."""

    def __init__(self, http: aiohttp.ClientSession, sc: dict[str, Any]) -> None:
        self.http, self.sc = http, sc
        self.sids: list[str] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.base_procs = len(_tree(sc["tree_root"]))  # the server's processes with no session

    async def resize(self, n: int) -> None:
        sc, url = self.sc, self.sc["url"]
        if n > len(self.sids):
            try:
                sids, sockets = await open_ready(self.http, url, n - len(self.sids), sc["concurrency"],
                                                 sc["setup_deadline"])
            except SetupIncomplete as exc:  # the next probe, a smaller one, finds none of them left
                await self._delete(exc.sids, len(self.sids))
                raise
            self.sids += sids
            self.sockets += sockets
            return
        extra_sids, extra_ws = self.sids[n:], self.sockets[n:]
        del self.sids[n:], self.sockets[n:]
        await asyncio.gather(*(ws.close() for ws in extra_ws), return_exceptions=True)
        await self._delete(extra_sids, n)

    async def _delete(self, sids: list[str], keep: int) -> None:
        """Delete ``sids``; wait until their actors have exited (so that they cost nothing in the next phase)."""
        sc, url = self.sc, self.sc["url"]
        await gather_limited(len(sids), sc["concurrency"], lambda i: delete_session(self.http, url, sids[i]))
        deadline = time.monotonic() + 30
        while len(_tree(sc["tree_root"])) > self.base_procs + keep and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def carry(sc: dict[str, Any]) -> dict[str, Any]:
    """The most sessions, each streaming ``llm`` at ``rate``/s, whose delivery p99 stays ≤ ``limit_ms``.

    Each probe of N: the pool of sessions is grown (set-up untimed, as in
    ``many``) or shrunk (sockets closed, sessions deleted) to N, then one
    :func:`phase` of ``seconds`` runs; it passes when every turn ends with
    ``stream_end`` and the p99 of every delta's delay is ≤ ``limit_ms``. The
    search doubles N from ``start`` (or halves it, down to ``floor``) to the
    first failure, capped at ``cap``, then bisects (geometric mean, rounded
    to ``round_to``) until the failing N is at most ``resolution`` × the
    passing one. ``also``: more Ns probed after the search, outside it (the
    other side's figure). Each probe records the CPU per event of each kind
    of server process (:func:`cpu_by_kind`).
    """
    rate, limit_ms = sc["rate"], sc["limit_ms"]
    content = f"llm {max(1, round(rate * sc['seconds']))} {rate}"
    probes: list[dict[str, Any]] = []
    async with http_client() as http:
        pool = Pool(http, sc)

        async def probe(n: int, searched: bool = True) -> bool:
            rec: dict[str, Any] = {"sessions": n, "searched": searched}
            probes.append(rec)
            try:
                await pool.resize(n)
            except SetupIncomplete as exc:
                rec.update(passed=False, why=str(exc))
                return False
            before = cpu_by_kind(sc["tree_root"], sc.get("front_pid", 0), sc.get("zygote_name", ""))
            mine = time.process_time()  # the client's own CPU: it shares the machine with the server
            try:
                async with asyncio.timeout(sc["seconds"] * 4 + 30):
                    ph = await phase(pool.sockets, content)
            except (ClientError, TimeoutError) as exc:
                rec.update(passed=False, why=f"{type(exc).__name__}: {exc}"[:300])
                raise _Abort from exc  # the sockets are in no known state: the search ends here
            mine = time.process_time() - mine
            used = cpu_used(before, cpu_by_kind(sc["tree_root"], sc.get("front_pid", 0), sc.get("zygote_name", "")))
            p99 = ph["all_ms"]["p99"]
            rec.update(passed=p99 <= limit_ms, p99_ms=p99, p50_ms=ph["all_ms"]["p50"], events=ph["events"],
                       seconds=ph["seconds"], events_per_s=ph["events_per_s"],
                       cpu_us_per_event={k: v / ph["events"] * 1e6 for k, v in used.items()},
                       client_cpu_us_per_event=mine / ph["events"] * 1e6)
            return rec["passed"]

        try:
            await _search(probe, sc)
            for n in sc.get("also", []):
                if n > 0:
                    await probe(n, searched=False)
        except _Abort:
            pass  # what the search had found stands; the probe says why it ended
        await pool.close()
    searched = [p for p in probes if p["searched"]]
    best = max((p["sessions"] for p in searched if p["passed"]), default=0)
    worst = min((p["sessions"] for p in searched if not p["passed"]), default=None)
    return {"sessions": best, "failed_at": worst, "capped": worst is None, "probes": probes}


class _Abort(Exception):
    """A probe left the sessions in no known state."""


async def _search(probe: Any, sc: dict[str, Any]) -> None:
    """Probe by doubling (or halving), then bisection; the probes' records hold what was found."""
    start, cap, floor, step = sc["start"], sc["cap"], sc["floor"], sc["round_to"]
    best, worst = 0, None
    n = min(start, cap)
    if await probe(n):
        best = n
        while best < cap:
            n = min(cap, best * 2)
            if not await probe(n):
                worst = n
                break
            best = n
    else:
        worst = n
        while n > floor:
            n = max(floor, n // 2)
            if await probe(n):
                best = n
                break
            worst = n
    while best and worst is not None and worst > best * sc["resolution"]:
        mid = max(step, round((best * worst) ** 0.5 / step) * step)
        if mid <= best or mid >= worst:
            break
        if await probe(mid):
            best = mid
        else:
            worst = mid
