"""``navi-actor ps`` and ``navi-actor kill``: see and end what runs, from a shell.

Both talk to the supervisor's control socket (``DATA_DIR/run/control.sock``),
so they work while the front is down. A row's state is the front's as of the
moment of asking; when the front cannot answer, its last report, and the
table says how old (``running (12s ago)``). Exit codes: 0 success; 1 (kill)
some targets did not end, or none matched; 2 usage error or no server
running there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from supervisor.control import SOCKET_NAME, request, runtime_dir

COLUMNS = ("session_id", "pid", "state", "run_id", "turn_age", "events", "viewers", "queued", "rss", "cpu_percent",
           "owner")
HEADERS = ("SESSION", "PID", "STATE", "RUN", "AGE", "EVENTS", "VIEWERS", "QUEUED", "RSS", "CPU%", "OWNER")
EXIT_USAGE = 2
STALE_AFTER = 2.0  # seconds: an older state is shown with its age


class NoServer(Exception):
    """No server answers at the given place."""


# ── pure helpers ────────────────────────────────────────────────────────────

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"`` → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 10m, 2h)")
    unit = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * unit


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1000"`` (bytes) → bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 512M, 2G)")
    unit = (m.group(2) or "B").upper()[0]
    return int(float(m.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit])


def human_size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def sort_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Sort by a column; numbers descending (biggest first), text ascending."""
    numeric = column in ("pid", "turn_age", "events", "viewers", "queued", "rss", "cpu_percent")
    if numeric:
        return sorted(rows, key=lambda r: r.get(column) or 0, reverse=column != "pid")
    return sorted(rows, key=lambda r: str(r.get(column) or ""))


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [HEADERS]
    for r in rows:
        state, age = r["state"], r.get("state_age")
        if age is not None and age >= STALE_AFTER:
            state = f"{state} ({human_age(age)} ago)"
        cells.append((
            r["session_id"], str(r["pid"]), state, (r.get("run_id") or "-")[:12], human_age(r.get("turn_age")),
            str(r.get("events", 0)), str(r.get("viewers", 0)), str(r.get("queued", 0)), human_size(r.get("rss", 0)),
            f"{r.get('cpu_percent', 0.0):.1f}", r.get("owner") or "-",
        ))
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_listing(rows: list[dict[str, Any]], warm: int, agent_start: dict[str, Any] | None = None) -> str:
    """The table of actors with a session, a line for the warm ones (started ahead, no session yet),
    and, when new actors fail to start their agent, a line that says why."""
    ready = f"{warm} warm actor{'' if warm == 1 else 's'} ready for new sessions"
    out = f"no actors with a session; {ready}" if not rows else format_table(rows) + f"\n(+ {ready})"
    return out + format_agent_start(agent_start)


def format_agent_start(state: dict[str, Any] | None) -> str:
    """``""`` while the agent starts; else a line with the failures in a row and the last error."""
    if not state or state.get("ok", True):
        return ""
    n = state.get("failures", 0)
    line = f"\nthe agent failed to start in {n} new actor{'' if n == 1 else 's'} in a row: {state.get('error')}"
    if state.get("paused"):
        line += ("\n(the warm pool is paused: a new session's turn forks its own actor and ends the pause "
                 "if the agent starts; so does SIGHUP)")
    return line


def describe_filters(*, all_: bool, idle: bool, older_than: str | None, rss_over: str | None) -> str:
    """The filters of a kill, as the operator typed them (for "no actor matches ...")."""
    parts = (["--all"] if all_ else []) + (["--idle"] if idle else []) + \
        ([f"--older-than {older_than}"] if older_than else []) + ([f"--rss-over {rss_over}"] if rss_over else [])
    return " ".join(parts)


def select(rows: Iterable[dict[str, Any]], *, sessions: set[str], pids: set[int], all_: bool, idle: bool,
           older_than: float | None, rss_over: int | None) -> list[dict[str, Any]]:
    """The rows a kill aims at: named ones, or ``--all``; narrowed by every filter given."""
    picked = []
    for r in rows:
        named = r["session_id"] in sessions or r["pid"] in pids
        filtered = idle or older_than is not None or rss_over is not None
        if not (named or all_ or filtered):
            continue
        if idle and r["state"] != "idle":
            continue
        if older_than is not None and (r.get("turn_age") is None or r["turn_age"] < older_than):
            continue
        if rss_over is not None and r.get("rss", 0) <= rss_over:
            continue
        picked.append(r)
    return picked


# ── talking to the server ───────────────────────────────────────────────────


def socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    return runtime_dir(Path(args.data_dir).resolve()) / SOCKET_NAME


def ask(path: Path, message: dict[str, Any]) -> dict[str, Any]:
    if not path.exists():
        raise NoServer(f"no navi-actor server runs here: {path} does not exist")
    try:
        reply = request(path, message)
    except (ConnectionRefusedError, FileNotFoundError):
        raise NoServer(f"no navi-actor server answers at {path} (a stale socket?)") from None
    except OSError as exc:
        raise NoServer(f"cannot talk to the server at {path}: {exc}") from None
    if reply.get("code") == "control_refused":
        raise NoServer(str(reply.get("error")))
    if not reply.get("ok"):
        raise NoServer(f"the server refused: {reply.get('error')}")
    return reply


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=os.environ.get("NAVI_DATA_DIR") or "./var",
                        help="the server's data folder, where its control socket is [env NAVI_DATA_DIR; default ./var]")
    parser.add_argument("--socket", help="the control socket's path (instead of --data-dir)")


def ps_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = "List the server's actor processes: one row per active session."
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (the same as GET /runs)")
    parser.add_argument("--sort", default="session_id", choices=COLUMNS, help="column to sort by (default session_id)")
    parser.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                        help="refresh in place every SECONDS (default 2) until Ctrl-C")
    parser.add_argument("--cluster", action="store_true",
                        help="the running turns of every live node sharing the PostgreSQL store --store names, "
                             "each with its node (read from the database: no server need run here)")
    parser.add_argument("--store", default=os.environ.get("NAVI_STORE") or "",
                        help="with --cluster: the store, postgresql://USER@HOST:PORT/DB [env NAVI_STORE]")
    return parser


def kill_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "End runs: by default the stop ladder (the agent is asked to stop, then SIGTERM, then SIGKILL to its "
        "process group); --force sends SIGKILL at once. Viewers are told (code killed_by_operator). "
        "Exit 0 when every target ended; 1 when some did not, or nothing named or filtered was found; "
        "2 on usage errors."
    )
    _common(parser)
    parser.add_argument("sessions", nargs="*", metavar="SESSION_ID", help="sessions whose actors to end")
    parser.add_argument("--pid", type=int, action="append", default=[], help="an actor's pid (repeatable)")
    parser.add_argument("--all", action="store_true", help="every actor")
    parser.add_argument("--idle", action="store_true", help="actors with no running turn")
    parser.add_argument("--older-than", type=_duration_arg, metavar="DURATION",
                        help="turns running longer than DURATION (e.g. 10m)")
    parser.add_argument("--rss-over", type=_size_arg, metavar="SIZE", help="actors using more memory (e.g. 2G)")
    parser.add_argument("--force", action="store_true", help="SIGKILL the actor's process group now")
    parser.add_argument("--dry-run", action="store_true", help="show what would be hit, do nothing")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for targets to end (default: the server's stop ladder + 3 s)")
    parser.add_argument("--store", default=os.environ.get("NAVI_STORE") or "",
                        help="a PostgreSQL store several nodes share: sessions not found here are ended on the "
                             "node that runs them [env NAVI_STORE]")
    return parser


CLUSTER_HEADERS = ("NODE", "SESSION", "RUN", "AGE", "URL")


def format_cluster(runs: list[dict[str, Any]], now: float) -> str:
    """The table of ``ps --cluster``: one row per running turn, with its node."""
    if not runs:
        return "no turn runs on any live node"
    cells = [CLUSTER_HEADERS] + [(r["node"], r["session_id"], r["run_id"][:12],
                                  human_age(max(0.0, now - r["started_at"]) if r.get("started_at") else None),
                                  r.get("url") or "-") for r in runs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(CLUSTER_HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def run_ps_cluster(args: argparse.Namespace) -> int:
    from navi_actor.store import open_cluster

    try:
        node = open_cluster(args.store or None, "navi-actor-ps", lease_ttl=10.0,
                            on_lost=lambda reason: None, on_control=lambda req: "not handled")
        if node is None:
            print("navi-actor ps: --cluster needs a PostgreSQL store: --store postgresql://USER@HOST:PORT/DB "
                  "(or NAVI_STORE)", file=sys.stderr)
            return EXIT_USAGE
        runs = node.running()
    except Exception as exc:  # noqa: BLE001 — psycopg's errors (it is imported only here) and a bad URL
        print(f"navi-actor ps: cannot read the cluster's turns: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    runs = sort_cluster(runs, args.sort)
    print(json.dumps({"runs": runs}, indent=2) if args.json else format_cluster(runs, time.time()))
    return 0


def sort_cluster(runs: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    key = {"run_id": "run_id", "turn_age": "started_at"}.get(column, "session_id")
    return sorted(runs, key=lambda r: (r["node"], str(r.get(key) or "")))


def run_ps(args: argparse.Namespace) -> int:
    if args.cluster:
        return run_ps_cluster(args)
    path = socket_path(args)
    try:
        while True:
            listing = ask(path, {"op": "list"})
            rows, warm = sort_rows(listing["actors"], args.sort), int(listing.get("warm", 0))
            agent_start = listing.get("agent_start")
            if args.json:
                out = json.dumps({"actors": rows, "warm": warm, "agent_start": agent_start}, indent=2)
            else:
                out = format_listing(rows, warm, agent_start)
            if args.watch:
                sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + path.as_posix() + "\n" + out + "\n")
                sys.stdout.flush()
                time.sleep(args.watch)
            else:
                print(out)
                return 0
    except NoServer as exc:
        print(f"navi-actor ps: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


def run_kill(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not (args.sessions or args.pid or args.all or args.idle or args.older_than is not None
            or args.rss_over is not None):
        parser.print_usage(sys.stderr)
        print("navi-actor kill: name sessions or --pid, or choose --all / --idle / --older-than / --rss-over",
              file=sys.stderr)
        return EXIT_USAGE
    path = socket_path(args)
    try:
        rows = ask(path, {"op": "list"})["actors"]
        targets = select(rows, sessions=set(args.sessions), pids=set(args.pid), all_=args.all, idle=args.idle,
                         older_than=args.older_than, rss_over=args.rss_over)
        missing = set(args.sessions) - {t["session_id"] for t in targets}
        missing_pids = set(args.pid) - {t["pid"] for t in targets}
        failed_elsewhere: set[str] = set()
        if missing and args.store and not args.dry_run:  # do they run on another node of the cluster?
            handled, failed_elsewhere = _kill_elsewhere(args.store, sorted(missing),
                                                        "kill" if args.force else "terminate")
            missing -= handled
        for sid in sorted(missing):
            print(f"{sid}  -  not found")
        for pid in sorted(missing_pids):
            print(f"-  {pid}  not found")
        filters = describe_filters(all_=args.all, idle=args.idle, older_than=_typed(args, "older_than"),
                                   rss_over=_typed(args, "rss_over"))
        if not targets and filters:
            print(f"no actor matches {filters} ({len(rows)} with a session)")
        if args.dry_run:
            for t in targets:
                print(f"{t['session_id']}  {t['pid']}  would {'kill' if args.force else 'stop'} "
                      f"({t['state']}, run {t.get('run_id') or '-'})")
            return 0 if targets and not (missing or missing_pids) else 1
        if not targets:
            # Nothing here to end: success only if every session named was ended on another node.
            return 1 if missing or missing_pids or failed_elsewhere or not args.sessions else 0
        limits = ask(path, {"op": "status"})["limits"]
        timeout = args.timeout if args.timeout is not None else limits["term_after"] + limits["kill_after"] + 3
        op = "kill" if args.force else "stop"
        ask(path, {"op": op, "pids": [t["pid"] for t in targets]})
        deadline = time.monotonic() + timeout
        alive = {t["pid"] for t in targets}
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive &= {r["pid"] for r in ask(path, {"op": "list"})["actors"]}
        for t in targets:
            outcome = "still running" if t["pid"] in alive else ("killed" if args.force else "stopped")
            print(f"{t['session_id']}  {t['pid']}  {outcome}")
        return 1 if alive or missing or missing_pids or failed_elsewhere else 0
    except NoServer as exc:
        print(f"navi-actor kill: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _kill_elsewhere(store: str, sessions: list[str], op: str) -> tuple[set[str], set[str]]:
    """Ask the nodes that run these sessions' turns (a shared PostgreSQL store) to end them.

    Returns the sessions found on another node (each reported on a line), and those of them it did not end.
    """
    from navi_actor.store import open_cluster

    node = open_cluster(store, "navi-actor-kill", lease_ttl=10.0, on_lost=lambda reason: None,
                        on_control=lambda req: "not handled")
    if node is None:
        return set(), set()
    done, failed = set(), set()
    for sid in sessions:
        try:
            out = node.request(sid, op)
        except Exception as exc:  # noqa: BLE001 — psycopg's errors: the database cannot be reached
            print(f"{sid}  -  cannot ask the cluster: {' '.join(str(exc).split())}")
            done.add(sid)
            failed.add(sid)
            continue
        if out["delivered"] and out["result"] not in ("no active run", "not found"):
            print(f"{sid}  -  {out['result']} on node {out['node']}")
            done.add(sid)
        elif "node" in out:
            print(f"{sid}  -  runs on node {out['node']}: {out.get('reason') or out.get('result')}")
            done.add(sid)
            failed.add(sid)
    return done, failed


def _typed(args: argparse.Namespace, name: str) -> str | None:
    """What the operator typed for an option (``10m``, not 600.0), for messages."""
    value = getattr(args, name)
    return None if value is None else getattr(value, "text", str(value))


class _Seconds(float):
    text: str


class _Bytes(int):
    text: str


def _duration_arg(text: str) -> _Seconds:
    value = _Seconds(parse_duration(text))
    value.text = text.strip()
    return value


def _size_arg(text: str) -> _Bytes:
    value = _Bytes(parse_size(text))
    value.text = text.strip()
    return value


_duration_arg.__name__, _size_arg.__name__ = "duration", "size"  # argparse's "invalid duration value: ..."


def main_ps(argv: list[str] | None = None) -> int:
    parser = ps_parser(argparse.ArgumentParser(prog="navi-ps"))
    return run_ps(parser.parse_args(argv))


def main_kill(argv: list[str] | None = None) -> int:
    parser = kill_parser(argparse.ArgumentParser(prog="navi-kill"))
    return run_kill(parser.parse_args(argv), parser)
