"""The sandbox around every actor: what an agent may reach, computed once, applied per actor.

An agent may read and execute the system (``/usr``, ``/lib*``, ``/bin``,
``/etc``), the Python installation, every ``sys.path`` entry and its own
module's folder; it may write its session's folder (``Turn.upload_dir``, with a
working directory ``.work`` and a private ``.tmp`` under it), ``/dev/shm`` and
a few devices (``/dev/null`` and the like), plus what the operator adds with
``--sandbox-read``/``--sandbox-write``. Nothing else: not the data folder (the
database, other sessions' uploads, the control socket), not the tokens file,
not the server user's home, and, for a root server, no file only root may read
in ``/etc`` (``/etc/shadow``, host keys).

Landlock rules only ever *add* rights, so a folder that must stay out (the data
folder inside the project checkout, which is on ``sys.path``) is left out by
granting its siblings instead ("leaves, not parents"). Two layers keep the
cost per actor small:

* **Layer 1**, built once here into a ruleset descriptor every actor inherits:
  the whole policy with every exclusion, but the uploads root (all sessions)
  writable. An actor applies it right after it is cloned, with one system call,
  together with the seccomp filter and the loss of all capabilities.
* **Layer 2**, per actor, once its session is known: the same grants split only
  around the data folder (whose paths are opened here, once), and the
  session's own folder. It narrows layer 1's uploads root to the session.

Each actor calls ``landlock_restrict_self`` itself, so each has a domain of its
own: actors cannot signal or trace one another, nor the supervisor, the zygote
or the front. What is in force is decided here, logged at start, shown by
``navi-actor ps --json`` and ``/metrics``, and never downgraded without a word:
``--sandbox strict`` refuses to start without every part, ``auto`` applies
what the kernel has and says what it lacks, ``off`` warns at every start.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
import sys
import tempfile
import threading
from typing import Any, Iterable

from navi_actor.sandbox import _libc, caps, landlock, seccomp

MODES = ("auto", "strict", "off")
UPLOADS = "uploads"  # DATA_DIR/uploads/SESSION: the same folder the front writes uploads to
WORK = ".work"  # the tools' working directory, and HOME, inside the session's folder
TMP = ".tmp"  # TMPDIR, inside the session's folder
#: Tests may pretend the kernel is older (``NAVI_SANDBOX_ABI_LIMIT=3``): never higher than the kernel's.
ABI_LIMIT_ENV = "NAVI_SANDBOX_ABI_LIMIT"

SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SYSTEM_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                  "/dev/ptmx", "/dev/pts")
PROC_READ = ("/proc", "/sys/devices/system/cpu")

#: The parts of the policy, in the order they are reported.
PARTS = ("files", "tcp_bind", "tcp_connect", "signals", "abstract_unix", "seccomp", "capabilities")
#: What each part needs, for the messages of ``strict`` and ``auto``.
NEEDS = {
    "files": "Landlock (Linux 5.13, ABI 1)",
    "tcp_bind": "Landlock TCP rules (Linux 6.7, ABI 4)",
    "tcp_connect": "Landlock TCP rules (Linux 6.7, ABI 4)",
    "signals": "Landlock signal scoping (Linux 6.12, ABI 6)",
    "abstract_unix": "Landlock abstract UNIX socket scoping (Linux 6.12, ABI 6)",
    "seccomp": "seccomp filters",
    "capabilities": "dropping capabilities",
}


class SandboxConfigError(Exception):
    """The sandbox cannot be set up as configured: the server refuses to start (exit code 2)."""


class SandboxFailed(Exception):
    """The sandbox could not be applied in one actor: that actor exits without running agent code."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies beneath it (both real, absolute)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    path: str
    access: int


def dedupe(grants: Iterable[Grant]) -> list[Grant]:
    """Drop grants already covered by a grant of a folder above them with at least their rights."""
    out: list[Grant] = []
    for g in sorted(set(grants), key=lambda g: (len(g.path), g.path)):
        if any(within(g.path, o.path) and (g.access & ~o.access) == 0 for o in out):
            continue
        out.append(g)
    return out


def split(grant: Grant, excluded: list[str]) -> list[Grant]:
    """``grant`` without the ``excluded`` paths beneath it: its other children, recursively.

    A child that is a symlink is granted as its target, unless the target is
    (or holds) an excluded path. A grant that lies inside an excluded path
    yields nothing.
    """
    if any(within(grant.path, x) for x in excluded):
        return []
    inner = [x for x in excluded if within(x, grant.path)]
    if not inner:
        return [grant]
    out: list[Grant] = []
    try:
        names = sorted(os.listdir(grant.path))
    except OSError:
        return []
    for name in names:
        child = os.path.join(grant.path, name)
        if os.path.islink(child):
            target = _real(child)
            if os.path.exists(target) and not any(within(target, x) or within(x, target) for x in excluded):
                out.append(Grant(target, grant.access))
            continue
        out.extend(split(Grant(child, grant.access), excluded))
    return out


def root_only_files(top: str, limit: int = 20000) -> list[str]:
    """Entries beneath ``top`` that only their owner (root) may read: left out for a root server."""
    out: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(top):
        keep = []
        for name in dirnames + filenames:
            seen += 1
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            need = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
            if st.st_mode & need != need:
                out.append(path)
            elif stat.S_ISDIR(st.st_mode):
                keep.append(name)
        dirnames[:] = [d for d in dirnames if d in keep]
        if seen > limit:
            break
    return out


def home_folders() -> list[str]:
    homes = set()
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    if os.environ.get("HOME"):
        homes.add(os.environ["HOME"])
    return sorted(_real(h) for h in homes if h and _real(h) != "/")


@dataclasses.dataclass
class Plan:
    """What every actor applies; built by :func:`prepare` in the template process."""

    mode: str
    abi: int = 0
    parts: dict[str, bool] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)
    data_dir: str = ""
    uploads_root: str = ""
    base: landlock.Ruleset | None = None
    coarse: list[tuple[int, int, bool]] = dataclasses.field(default_factory=list)  # layer 2: fd, access, dir?
    connect_ports: tuple[int, ...] = ()
    bind_ports: tuple[int, ...] = ()
    base_rules: int = 0
    session_ruleset: landlock.Ruleset | None = None  # layer 2 without the session's folder, made at spawn
    seccomp_filter: seccomp.Filter | None = None
    drop_caps: bool = False
    last_cap: int = 63
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def fds(self) -> tuple[int, ...]:
        """Descriptors every actor (and the zygote) must inherit."""
        out = [fd for fd, _access, _dir in self.coarse]
        if self.base is not None:
            out.append(self.base.fd)
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """What is in force, for the start-up log, ``ps --json`` and ``/metrics``."""
        return {
            "mode": self.mode,
            "landlock_abi": self.abi,
            "enforced": [p for p in PARTS if self.parts.get(p)],
            "missing": list(self.missing),
            "tcp_connect_ports": list(self.connect_ports) if self.parts.get("tcp_connect") else None,
            "tcp_bind_ports": list(self.bind_ports),
            "not_granted": list(self.skipped),  # sys.path entries that are a home folder itself
        }


_PLAN: Plan | None = None


def current() -> Plan:
    """The plan of this server (``off`` before :func:`prepare` ran)."""
    return _PLAN if _PLAN is not None else Plan(mode="off")


def effective_abi() -> int:
    version = landlock.abi()
    limit = os.environ.get(ABI_LIMIT_ENV, "").strip()
    if limit.isdigit():
        version = min(version, int(limit))
    return version


def _check_paths(paths: Iterable[str], flag: str, data_dir: str) -> list[str]:
    out = []
    for raw in paths:
        path = _real(raw)
        if not os.path.exists(path):
            raise SandboxConfigError(f"{flag} {raw}: no such file or folder")
        if within(data_dir, path):
            raise SandboxConfigError(
                f"{flag} {raw} contains the data folder {data_dir}: agents would reach the session "
                "database and every session's uploads. Grant a folder beside it instead.")
        if within(path, data_dir):
            raise SandboxConfigError(f"{flag} {raw} lies inside the data folder {data_dir}")
        out.append(path)
    return out


def _python_reads(agent_file: str | None) -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(_real(sys.executable))}
    for entry in sys.path:
        paths.add(entry or os.getcwd())
    if agent_file:
        paths.add(os.path.dirname(_real(agent_file)))
    return sorted(_real(p) for p in paths if p and os.path.exists(_real(p)))


def _etc_links() -> list[str]:
    """Targets of ``/etc``'s symlinks that lie elsewhere (``/etc/resolv.conf`` → ``/run/…``)."""
    out = []
    try:
        names = os.listdir("/etc")
    except OSError:
        return out
    for name in names:
        path = os.path.join("/etc", name)
        if os.path.islink(path):
            target = _real(path)
            if os.path.exists(target) and not within(target, "/etc"):
                out.append(target)
    return out


def grants(extra_read: Iterable[str], extra_write: Iterable[str], agent_file: str | None,
           data_dir: str, homes: list[str]) -> tuple[list[Grant], list[str]]:
    """Every grant before exclusions, and the automatic ones left out (a home folder itself)."""
    skipped = []
    reads = []
    for path in [*SYSTEM_READ, *_python_reads(agent_file), *_etc_links()]:
        path = _real(path)
        if not os.path.exists(path):
            continue
        if within(path, data_dir):
            raise SandboxConfigError(
                f"{path} (the Python installation, a sys.path entry or the agent's folder) lies inside "
                f"the data folder {data_dir}: move the data folder out of it (--data-dir)")
        if path in homes:  # a home folder itself never: what lies beneath it is granted one by one
            skipped.append(path)
            continue
        reads.append(path)
    out = [Grant(p, landlock.READ) for p in reads]
    out += [Grant(_real(p), landlock.READ) for p in PROC_READ if os.path.exists(p)]
    out += [Grant(p, landlock.READ) for p in extra_read]
    out += [Grant(p, landlock.DEVICE) for p in SYSTEM_DEVICES if os.path.exists(p)]
    if os.path.isdir("/dev/shm"):
        out.append(Grant("/dev/shm", landlock.WRITE))
    out += [Grant(p, landlock.WRITE) for p in extra_write]
    return dedupe(out), skipped


def _open_grants(ruleset: landlock.Ruleset | None, items: list[Grant]) -> list[tuple[int, int, bool]]:
    """Open each grant's path (``O_PATH``); add it to ``ruleset`` if given, else keep the descriptors."""
    kept = []
    for g in items:
        try:
            fd = os.open(g.path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if ruleset is not None:
            try:
                ruleset.allow_fd(fd, g.access, is_dir)
            finally:
                os.close(fd)
        else:
            kept.append((fd, g.access, is_dir))
    return kept


def prepare(mode: str, data_dir: str, *, extra_read: Iterable[str] = (), extra_write: Iterable[str] = (),
            connect_ports: tuple[int, ...] = (), bind_ports: tuple[int, ...] = (),
            tokens_file: str = "", agent_file: str | None = None, secret_files: Iterable[str] = ()) -> Plan:
    """Work out the policy and build layer 1. Raises :class:`SandboxConfigError`.

    ``secret_files`` are left out like the tokens file (the PostgreSQL password file, ``PGPASSFILE``).

    Runs once, in the template process, before the zygote is forked.
    """
    global _PLAN
    if mode not in MODES:
        raise SandboxConfigError(f"--sandbox {mode!r}: choose from {', '.join(MODES)}")
    data = _real(data_dir)
    plan = Plan(mode=mode, data_dir=data, uploads_root=os.path.join(data, UPLOADS))
    if mode == "off":
        _PLAN = plan
        return plan
    reads = _check_paths(extra_read, "--sandbox-read", data)
    writes = _check_paths(extra_write, "--sandbox-write", data)
    plan.abi = effective_abi()
    plan.connect_ports, plan.bind_ports = tuple(connect_ports), tuple(bind_ports)
    plan.parts = {
        "files": plan.abi >= 1,
        "tcp_bind": plan.abi >= landlock.ABI_NET,
        "tcp_connect": plan.abi >= landlock.ABI_NET if connect_ports else False,
        "signals": plan.abi >= landlock.ABI_SCOPES,
        "abstract_unix": plan.abi >= landlock.ABI_SCOPES,
        "seccomp": seccomp.supported() is None,
        "capabilities": True,
    }
    for part, ok in plan.parts.items():
        if not ok and not (part == "tcp_connect" and not connect_ports):
            plan.missing.append(f"{part}: needs {NEEDS[part]}" + (
                f"; this kernel's Landlock ABI is {plan.abi}" if part not in ("seccomp", "capabilities") else ""))
    if mode == "strict" and plan.missing:
        raise SandboxConfigError("--sandbox strict cannot be enforced here: " + "; ".join(plan.missing))
    os.makedirs(data, mode=0o700, exist_ok=True)
    os.makedirs(plan.uploads_root, mode=0o700, exist_ok=True)
    _libc.load()  # made here once, not in every actor
    if plan.parts["seccomp"]:
        plan.seccomp_filter = seccomp.Filter()
    plan.drop_caps, plan.last_cap = caps.needed(), caps.last_cap()
    # Relative sys.path entries ('' is the folder the server started in) must survive an actor's chdir.
    sys.path[:] = [p if os.path.isabs(p) else os.path.abspath(p or ".") for p in sys.path]
    homes = home_folders()
    items, plan.skipped = grants(reads, writes, agent_file, data, homes)
    if plan.parts["files"]:
        excluded = [data, *homes]
        if tokens_file:
            excluded.append(_real(tokens_file))
        excluded += [_real(f) for f in secret_files if f and os.path.exists(f)]
        if os.geteuid() == 0:
            excluded += root_only_files("/etc")
        # A grant inside a home folder (Python in ~/.pyenv) stays; one around it is split.
        base_items = [s for g in items
                      for s in split(g, [x for x in excluded if not (x in homes and within(g.path, x))])]
        base_items.append(Grant(plan.uploads_root, landlock.WRITE))
        plan.base = _ruleset(plan)
        _open_grants(plan.base, base_items)
        plan.base_rules = len(base_items)
        plan.coarse = _open_grants(None, dedupe(s for g in items for s in split(g, [data])))
    _PLAN = plan
    return plan


def _ruleset(plan: Plan) -> landlock.Ruleset:
    net = landlock.BIND_TCP | (landlock.CONNECT_TCP if plan.connect_ports else 0)
    scopes = landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    rs = landlock.Ruleset(landlock.WRITE, net, scopes, version=plan.abi)
    rs.allow_ports(plan.bind_ports, landlock.BIND_TCP)
    rs.allow_ports(plan.connect_ports, landlock.CONNECT_TCP)
    return rs


# ── in the actor ────────────────────────────────────────────────────────────


def _require_one_thread(when: str) -> None:
    count = threading.active_count()
    if count != 1:
        raise SandboxFailed(
            f"{count} threads were running {when}; before Landlock ABI 8 a sandbox confines only the "
            "thread that applies it")


def enter(plan: Plan) -> None:
    """Right after the actor is cloned, single-threaded: capabilities, seccomp, layer 1.

    ``PR_SET_NO_NEW_PRIVS`` is already set (:func:`navi_actor.sandbox.enter_actor`).
    Raises :class:`SandboxFailed`.
    """
    if not plan.on:
        return
    _require_one_thread("when the actor started")
    try:
        if plan.drop_caps:
            caps.drop_all(plan.last_cap)
        if plan.seccomp_filter is not None:
            plan.seccomp_filter.install()
        if plan.base is not None:
            plan.base.restrict_self()
            plan.base.close()
            plan.session_ruleset = _session_ruleset(plan)
    except OSError as exc:
        raise SandboxFailed(f"the sandbox could not be applied: {exc}") from exc


def _session_ruleset(plan: Plan) -> landlock.Ruleset:
    """Layer 2 but for the session's folder: made when the actor starts, off its first turn's path."""
    rs = _ruleset(plan)
    for fd, access, is_dir in plan.coarse:
        rs.allow_fd(fd, access, is_dir)
    for fd, _access, _dir in plan.coarse:
        os.close(fd)
    plan.coarse = []
    return rs


def make_session_folders(uploads_root: str, session_id: str) -> tuple[str, str, str]:
    """Make a session's folder and its ``.work`` and ``.tmp`` (0700) if need be; return the three.

    The front calls it when it creates a session, so that a first turn does not
    wait for three ``mkdir`` (each about 0.15 ms of CPU); an actor calls it too,
    for sessions made before.
    """
    paths = _session_dirs(uploads_root, session_id)
    for path in paths:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise SandboxFailed(f"{path} is not a folder: the session's work folder is unusable") from None
    return paths


def _session_dirs(uploads_root: str, session_id: str) -> tuple[str, str, str]:
    if not session_id or "/" in session_id or session_id in (".", ".."):
        raise SandboxFailed(f"no usable session id ({session_id!r}) to confine the actor to")
    folder = os.path.join(uploads_root, session_id)
    return folder, os.path.join(folder, WORK), os.path.join(folder, TMP)


def session_paths(plan: Plan, session_id: str) -> tuple[str, str, str]:
    """The session's folder, its working directory and its private temporary folder."""
    return _session_dirs(plan.uploads_root, session_id)


def confine_session(plan: Plan, session_id: str) -> None:
    """Once the actor knows its session, before any of its turns: layer 2, and the session's folders.

    The actor must be single-threaded here (its lifeline thread starts after).
    Raises :class:`SandboxFailed`.
    """
    if not plan.on:
        return
    folder, work, tmp = session_paths(plan, session_id)
    try:
        fd = os.open(work, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        os.close(fd)
        if not os.path.isdir(tmp):
            raise FileNotFoundError(tmp)
    except OSError:
        try:
            make_session_folders(plan.uploads_root, session_id)
        except OSError as exc:
            raise SandboxFailed(f"cannot make the session's folders: {exc}") from exc
    rs = plan.session_ruleset
    if rs is not None:
        _require_one_thread("when the actor was given its session")
        try:
            rs.allow_path(folder, landlock.WRITE)
            rs.restrict_self()
        except OSError as exc:
            raise SandboxFailed(f"the session's sandbox could not be applied: {exc}") from exc
        finally:
            rs.close()
            plan.session_ruleset = None
    os.environ["TMPDIR"] = tmp
    os.environ["HOME"] = work
    tempfile.tempdir = None  # computed again from TMPDIR
    os.chdir(work)
