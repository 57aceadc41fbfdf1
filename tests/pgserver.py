"""A real, throw-away PostgreSQL server for the tests and the benchmark.

`PgServer` runs Debian's PostgreSQL (``initdb``, ``pg_ctl``, ``postgres``
from ``/usr/lib/postgresql/N/bin``, or ``NAVI_PG_BIN``) in a temporary
folder, listening on 127.0.0.1 at a free port and on a Unix socket in that
folder. When the tests run as root (CI does), the server runs as the
``postgres`` user, which owns the folder: PostgreSQL refuses to run as root.

`find_bin` says why PostgreSQL cannot be had, so that tests skip naming the
reason instead of passing silently; ``scripts/test`` installs it where it
is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

#: The secret the test nodes share: a PostgreSQL store needs one (NAVI_CLUSTER_SECRET or --cluster-secret-file).
CLUSTER_SECRET = "a-secret-every-test-node-shares-0123456789"
CLUSTER_ENV = {"NAVI_CLUSTER_SECRET": CLUSTER_SECRET}

#: Settings for tests: nothing is synced (tests never crash the machine), so that commits are cheap.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def find_bin() -> tuple[Path | None, str]:
    """The folder with initdb, pg_ctl and postgres, or None and why there is none."""
    candidates = [os.environ["NAVI_PG_BIN"]] if os.environ.get("NAVI_PG_BIN") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                         reverse=True)
    for folder in map(Path, candidates):
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder, ""
    return None, ("no PostgreSQL server binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin "
                  "or NAVI_PG_BIN; install Debian's postgresql package (scripts/test does, as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary folder: ``start()``, ``stop()``, ``start()`` again, ``destroy()``."""

    def __init__(self, settings: dict[str, str] | None = None, bin_dir: Path | None = None,
                 durable: bool = False, listen: str = "127.0.0.1") -> None:
        """``durable``: PostgreSQL's own settings, on disk (the benchmark); else `FAST`, in memory if it can."""
        found, why = (bin_dir, "") if bin_dir else find_bin()
        if found is None:
            raise RuntimeError(why)
        self.bin = found
        self.listen = listen  #: listen_addresses (tests/test_partition.py adds a bridge's address)
        self.settings = {**({} if durable else FAST), **(settings or {})}
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, and there is no 'postgres' user to run PostgreSQL as "
                                   "(Debian's postgresql package creates it)") from None
        # In memory (/dev/shm) the cluster is made in 2 s instead of 6, and a database in 50 ms, not 900.
        shm = None if durable or not os.access("/dev/shm", os.W_OK) else "/dev/shm"
        self.root = Path(tempfile.mkdtemp(prefix="navi-pg-", dir=shm))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.port = _free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-instructions", "--locale=C")

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def _run(self, tool: str, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        kw: dict[str, Any] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        proc = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr or proc.stdout}\n"
                               f"{self.log.read_text(errors='replace')[-2000:] if self.log.exists() else ''}")
        return proc

    def start(self) -> PgServer:
        """Start the server (on the same port every time) and wait until it accepts connections."""
        opts = [f"-c {k}={v}" for k, v in {
            **self.settings, "listen_addresses": self.listen, "port": str(self.port),
            "unix_socket_directories": str(self.root), "max_connections": "200",
        }.items()]
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", " ".join(opts))
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnects clients, clean; ``immediate``: as a crash)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode, check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def create_database(self, name: str, template: str = "template0") -> str:
        """A new, empty database; its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """Stop the server at once and remove its folder."""
        if self.data.exists():
            self.stop("immediate")
        pid = self.pid()
        if pid is not None:  # pg_ctl could not stop it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
