"""Start and always stop the two servers under test, and find their processes.

Both run as their own process sessions (a Ctrl-C in the terminal reaches only
the benchmark, which then stops them in order) with a parent-death signal, so
they go even if the benchmark itself is killed. :func:`stop_all` is called on
every exit path and SIGKILLs whatever did not stop in time, every descendant
included, then checks with psutil that nothing is left.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.zygote import NAME as _ZYGOTE_COMM

ZYGOTE_NAME = _ZYGOTE_COMM.decode()  # its /proc/PID/comm

ROOT = Path(__file__).resolve().parent.parent
AGENT = "bench.agents:agent"
PR_SET_PDEATHSIG = 1

_started: list[Server] = []


class BenchError(Exception):
    """A measurement could not be made (a server did not start, a client timed out, …)."""


def die_with_parent() -> None:
    """Child side of Popen: SIGTERM when the benchmark goes away, whatever the cause."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def navi_supports(option: str) -> bool:
    """Whether ``navi-actor serve --help`` lists ``option`` (e.g. ``--warm-actors``)."""
    try:
        out = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--help"], capture_output=True,
                             text=True, timeout=30, env=child_env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False
    return option in out.stdout


def _is_zygote(p: psutil.Process) -> bool:
    try:
        return p.name() == ZYGOTE_NAME
    except psutil.NoSuchProcess:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Server:
    """A server process and everything it forks."""

    kind = "server"

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.family: dict[int, psutil.Process] = {}  # every pid seen under it, for the final sweep

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _popen(self, cmd: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
                                         env=child_env(), start_new_session=True, preexec_fn=die_with_parent)
        _started.append(self)
        self.family[self.proc.pid] = psutil.Process(self.proc.pid)

    def _wait_file(self, path: Path, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                 f"see {self.log_path}:\n{self.log_tail()}")
            if path.exists():
                try:
                    return json.loads(path.read_text())
                except ValueError:
                    pass  # being written
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.02)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def descendants(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in kids:
            self.family.setdefault(p.pid, p)
        return kids

    def server_pids(self) -> list[int]:
        """The processes whose CPU is the server's (the web process, for the baseline)."""
        return [self.pid]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait; then SIGKILL it and every descendant that is left."""
        if self.proc is None:
            return
        self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {self.name} did not exit within {timeout:.0f} s of SIGTERM; killing it",
                      file=sys.stderr)
        self.kill()

    def kill(self) -> None:
        """SIGKILL it and every descendant seen; done when none of them is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            left = [p for p in self.family.values() if _alive(p)]
            if not left:
                if self in _started:
                    _started.remove(self)
                return
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: processes left behind: {[p.pid for p in left]}")
            time.sleep(0.05)


class NaviServer(Server):
    """``navi-actor serve`` (supervisor, front, actors) with the benchmark's agent."""

    kind = "navi-actor"

    def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
        super().__init__(workdir, name)
        self.args = args
        self.data_dir = workdir / f"{name}-data"
        self.front_pid = 0

    def start(self, timeout: float = 60.0) -> NaviServer:
        info_file = self.data_dir / "server.json"
        if info_file.exists():
            info_file.unlink()
        self._popen([sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--data-dir", str(self.data_dir),
                     "--agent", AGENT, "--log-format", "json", *self.args])
        info = self._wait_file(info_file, timeout)
        self.url = info["url"]
        self.front_pid = int(info["front_pid"])
        self.descendants()
        return self

    def server_pids(self) -> list[int]:
        return [self.front_pid]

    def all_pids(self) -> list[int]:
        return [self.pid] + [p.pid for p in self.descendants()]

    def actor_pids(self) -> list[int]:
        """Live actor processes: the supervisor's children other than the front and the zygote."""
        out = []
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for p in kids:
            self.family.setdefault(p.pid, p)
            if p.pid != self.front_pid and _alive(p) and not _is_zygote(p):
                out.append(p.pid)
        return out

    def wait_actors(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` actors live (a full warm pool); False if they did not in time."""
        deadline = time.monotonic() + timeout
        while len(self.actor_pids()) < n:
            if time.monotonic() > deadline:
                print(f"bench: {self.name}: fewer than {n} actors {timeout:.0f} s after start", file=sys.stderr)
                return False
            time.sleep(0.01)
        return True

    def ps(self) -> list[dict[str, Any]]:
        """``navi-actor ps --json``: the supervisor's rows of actors."""
        try:
            out = subprocess.run([sys.executable, "-m", "navi_actor", "ps", "--json", "--data-dir",
                                  str(self.data_dir)], capture_output=True, text=True, timeout=60,
                                 env=child_env(), cwd=ROOT)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("navi-actor ps --json did not answer within 60 s") from exc
        if out.returncode != 0:
            raise BenchError(f"navi-actor ps --json failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout)["actors"]

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``event`` (all processes log to one file)."""
        rows = []
        try:
            with open(self.log_path, "rb") as f:
                for line in f:
                    if event.encode() in line:
                        try:
                            row = json.loads(line)
                        except ValueError:
                            continue
                        if row.get("event") == event:
                            rows.append(row)
        except OSError:
            pass
        return rows


class BaselineServer(Server):
    """``bench/baseline.py``: the same agent as tasks inside the aiohttp process.

    ``durable``: its sessions in a SQLite file of its own (``--durable``), the
    user's message committed before ``stream_start``.
    """

    kind = "baseline"

    def __init__(self, workdir: Path, name: str, durable: bool = False) -> None:
        super().__init__(workdir, name)
        self.durable = durable

    def start(self, timeout: float = 60.0) -> BaselineServer:
        info_file = self.workdir / f"{self.name}.json"
        if info_file.exists():
            info_file.unlink()
        args = []
        if self.durable:
            db = self.workdir / f"{self.name}.sqlite3"
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
            args = ["--durable", str(db)]
        self._popen([sys.executable, "-m", "bench.baseline", "--agent", AGENT, "--info-file", str(info_file), *args])
        self.url = self._wait_file(info_file, timeout)["url"]
        return self


def stop_all() -> list[str]:
    """Stop every server started (newest first); return problems, if any."""
    problems = []
    while _started:
        server = _started.pop()
        try:
            server.stop()
        except BenchError as exc:
            problems.append(str(exc))
        except Exception as exc:  # keep stopping the others
            problems.append(f"{server.name}: {exc!r}")
    return problems


def leftovers() -> list[psutil.Process]:
    """Our own descendants still alive (there should be none after stop_all)."""
    return [p for p in psutil.Process().children(recursive=True) if _alive(p)]


def cluster_postgres(workdir: Path, purpose: str) -> tuple[Any, Path]:
    """A durable PostgreSQL of Debian's (tests/pgserver.py), started, and a cluster secret file in
    ``workdir``: what a navi-actor node on PostgreSQL needs. BenchError if there is no PostgreSQL
    (``purpose`` says what it was for). The caller destroys the server."""
    try:
        from tests.pgserver import PgServer
        pg = PgServer(durable=True).start()
    except (ImportError, RuntimeError, OSError) as exc:
        raise BenchError(f"no PostgreSQL {purpose}: {exc}") from exc
    secret = workdir / "cluster-secret"  # a PostgreSQL store needs the nodes' secret, even for one node
    secret.write_text("the-benchmark-cluster-secret-0123456789\n")
    secret.chmod(0o600)
    return pg, secret
