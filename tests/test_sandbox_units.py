"""The sandbox's kernel calls, each tried for real in a forked child (Landlock, seccomp, capabilities),
and the policy's path arithmetic on real folders."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import threading
from typing import Callable

import orjson
import pytest

from navi_actor.sandbox import caps, landlock, policy, seccomp

needs_landlock = pytest.mark.skipif(landlock.abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")


def in_child(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child (so its restrictions stay there); return its result or raise its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, orjson.dumps(out, default=str))
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    out = orjson.loads(data)
    if "error" in out:
        raise AssertionError(out["error"])
    return out["ok"]


def _nnp() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0


def _try(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]


# ── Landlock ───────────────────────────────────────────────────────────────


def test_abi_is_read_from_the_kernel():
    """abi() asks the kernel (landlock_create_ruleset with the VERSION flag); the ABI limit only lowers it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    assert landlock.abi() == max(libc.syscall(444, None, ctypes.c_size_t(0), 1), 0)
    os.environ[policy.ABI_LIMIT_ENV] = "3"
    try:
        assert policy.effective_abi() == min(3, landlock.abi())
    finally:
        del os.environ[policy.ABI_LIMIT_ENV]
    assert landlock.fs_rights(0) == 0 and landlock.fs_rights(1) == (1 << 13) - 1
    assert landlock.fs_rights(3) & landlock.TRUNCATE and not landlock.fs_rights(2) & landlock.TRUNCATE


@needs_landlock
def test_a_ruleset_allows_what_it_lists_and_nothing_else(tmp_path):
    """Beneath an allowed folder: read (and write where granted); a file rule gets file rights only; the rest: EACCES."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("r")
    (tmp_path / "rw").mkdir()
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "f").write_text("n")
    (tmp_path / "single").write_text("s")

    def child() -> dict[str, str]:
        _nnp()
        with landlock.Ruleset(landlock.WRITE) as rs:
            rs.allow_path(str(tmp_path / "ro"), landlock.READ)
            rs.allow_path(str(tmp_path / "rw"), landlock.WRITE)
            rs.allow_path(str(tmp_path / "single"), landlock.WRITE)  # cut to the rights of a file
            rs.restrict_self()
        return {
            "read_ro": _try(lambda: open(tmp_path / "ro" / "f").read()),
            "write_ro": _try(lambda: open(tmp_path / "ro" / "g", "w")),
            "write_rw": _try(lambda: open(tmp_path / "rw" / "g", "w").write("x")),
            "mkdir_rw": _try(lambda: os.mkdir(tmp_path / "rw" / "d")),
            "read_no": _try(lambda: open(tmp_path / "no" / "f").read()),
            "list_parent": _try(lambda: os.listdir(tmp_path)),
            "write_single": _try(lambda: open(tmp_path / "single", "w").write("t")),
        }

    assert in_child(child) == {"read_ro": "ok", "write_ro": "EACCES", "write_rw": "ok", "mkdir_rw": "ok",
                               "read_no": "EACCES", "list_parent": "EACCES", "write_single": "ok"}


@needs_landlock
def test_tcp_rules_and_scopes():
    """Bind is refused unless its port is listed; connect only to listed ports; no signal leaves the domain."""
    server = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    port, other_port = server.getsockname()[1], other.getsockname()[1]
    parent = os.getpid()

    def child() -> dict[str, str]:
        _nnp()
        with landlock.Ruleset(0, landlock.BIND_TCP | landlock.CONNECT_TCP,
                              landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET) as rs:
            rs.allow_port(port, landlock.CONNECT_TCP)
            rs.restrict_self()
        return {
            "connect_listed": _try(lambda: socket.create_connection(("127.0.0.1", port), 3).close()),
            "connect_other": _try(lambda: socket.create_connection(("127.0.0.1", other_port), 3).close()),
            "bind": _try(lambda: socket.socket().bind(("127.0.0.1", 0))),
            "signal_parent": _try(lambda: os.kill(parent, 0)),
            "signal_self": _try(lambda: os.kill(os.getpid(), 0)),
            "thread_confined": _thread_result(lambda: _try(lambda: os.kill(parent, 0))),
        }

    try:
        assert in_child(child) == {"connect_listed": "ok", "connect_other": "EACCES", "bind": "EACCES",
                                   "signal_parent": "EPERM", "signal_self": "ok", "thread_confined": "EPERM"}
    finally:
        server.close()
        other.close()


def _thread_result(fn: Callable[[], str]) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_restricting_without_no_new_privs_fails_with_the_kernels_error():
    """restrict_self without PR_SET_NO_NEW_PRIVS (and without CAP_SYS_ADMIN) is refused: the error is raised."""
    if landlock.abi() < 1:
        pytest.skip("no Landlock")

    def child() -> str:
        caps.drop_all()  # as root: without CAP_SYS_ADMIN, so no_new_privs is the only way
        with landlock.Ruleset(landlock.READ) as rs:
            try:
                rs.restrict_self()
            except OSError as exc:
                return errno.errorcode[exc.errno]
        return "restricted"

    assert in_child(child) == "EPERM"


def test_a_ruleset_on_a_kernel_without_landlock_is_refused():
    """An ABI of 0 (no Landlock) cannot make a ruleset: a clear OSError, not a crash."""
    with pytest.raises(OSError, match="Landlock is not available"):
        landlock.Ruleset(landlock.READ, version=0)


# ── seccomp ────────────────────────────────────────────────────────────────


@pytest.mark.skipif(seccomp.supported() is not None, reason="no seccomp filter here")
def test_the_seccomp_filter_refuses_its_list_and_allows_the_rest():
    """ptrace/process_vm_readv: EPERM; io_uring: ENOSYS; packet, vsock, key and raw IP sockets: EPERM;
    TCP, UDP, UNIX and netlink sockets, fork and exec still work."""
    parent = os.getpid()

    def child() -> dict[str, str]:
        _nnp()
        seccomp.Filter().install()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        def raw(nr: int, *args: int) -> str:
            if libc.syscall(nr, *args) == -1:
                return errno.errorcode[ctypes.get_errno()]
            return "ok"

        def sock(family: int, kind: int) -> str:
            return _try(lambda: socket.socket(family, kind).close())

        numbers = seccomp._ARCHES[os.uname().machine][1]
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        _, status = os.waitpid(pid, 0)
        return {
            "ptrace": raw(numbers["ptrace"], 16, parent, 0, 0),
            "process_vm_readv": raw(numbers["process_vm_readv"], parent, 0, 0, 0, 0, 0),
            "io_uring_setup": raw(numbers["io_uring_setup"], 1, 0),
            "bpf": raw(numbers["bpf"], 0, 0, 0),
            "packet": sock(socket.AF_PACKET, socket.SOCK_RAW),
            "vsock": sock(40, socket.SOCK_STREAM),
            "raw_ip": sock(socket.AF_INET, socket.SOCK_RAW),
            "raw_ip6": sock(socket.AF_INET6, socket.SOCK_RAW),
            "tcp": sock(socket.AF_INET, socket.SOCK_STREAM),
            "udp": sock(socket.AF_INET, socket.SOCK_DGRAM),
            "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
            "netlink": sock(socket.AF_NETLINK, socket.SOCK_RAW),
            "fork_exec": "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else str(status),
        }

    assert in_child(child) == {
        "ptrace": "EPERM", "process_vm_readv": "EPERM", "io_uring_setup": "ENOSYS", "bpf": "EPERM",
        "packet": "EPERM", "vsock": "EPERM", "raw_ip": "EPERM", "raw_ip6": "EPERM",
        "tcp": "ok", "udp": "ok", "unix": "ok", "netlink": "ok", "fork_exec": "ok",
    }


def test_the_filter_program_is_built_for_both_architectures():
    """Both architectures get a well-formed program: whole instructions, the arch check first, allow last."""
    for machine in ("x86_64", "aarch64"):
        code = seccomp.program(machine)
        assert len(code) % 8 == 0 and len(code) // 8 < 256
        first = int.from_bytes(code[4:8], "little")
        assert first == 4  # BPF_LD|W|ABS of seccomp_data.arch
        assert int.from_bytes(code[-4:], "little") == seccomp.RET_ALLOW


def test_an_unknown_architecture_has_no_filter(monkeypatch):
    """On an architecture without a table, supported() says so (auto then reports seccomp missing)."""
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    assert "riscv64" in (seccomp.supported() or "")


# ── capabilities ───────────────────────────────────────────────────────────


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has capabilities to drop")
def test_root_drops_every_capability_for_good():
    """After drop_all, root has no capability in any set, cannot signal another user's process, and execve
    of a program gives none back (SECBIT_NOROOT)."""

    def child() -> dict[str, object]:
        caps.drop_all()
        eff, prm, bnd = caps.current()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(w, 1)
            os.execv("/bin/grep", ["grep", "^CapEff", "/proc/self/status"])
        os.close(w)
        os.waitpid(pid, 0)
        exec_line = os.read(r, 200).decode().split()
        return {"eff": eff, "prm": prm, "bnd": bnd, "exec_eff": int(exec_line[1], 16),
                "setuid": _try(lambda: os.setuid(65534)), "chown": _try(lambda: os.chown("/tmp", 1, 1))}

    assert in_child(child) == {"eff": 0, "prm": 0, "bnd": 0, "exec_eff": 0, "setuid": "EPERM", "chown": "EPERM"}


def test_an_unprivileged_thread_has_nothing_to_drop():
    """needed() is false for a thread without capabilities, and drop_all() on one is harmless."""

    def child() -> list[bool]:
        caps.drop_all()
        return [caps.needed() if os.geteuid() != 0 else False, caps.current()[0] == 0]

    assert in_child(child) == [False, True]


# ── the policy's paths ─────────────────────────────────────────────────────


def test_split_grants_the_siblings_of_an_excluded_folder(tmp_path):
    """A grant that holds the data folder becomes its other children, recursively; a symlink is granted as
    its target unless that leads into the excluded folder; a grant inside it yields nothing."""
    for d in ("a", "b/c", "b/var/uploads", "b/d"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "f.py").write_text("")
    (tmp_path / "to_var").symlink_to(tmp_path / "b" / "var")
    (tmp_path / "to_a").symlink_to(tmp_path / "a")
    excluded = [str(tmp_path / "b" / "var")]
    got = sorted(g.path for g in policy.split(policy.Grant(str(tmp_path), landlock.READ), excluded))
    assert got == sorted(str(tmp_path / p) for p in ("a", "a", "b/c", "b/d", "f.py"))
    assert policy.split(policy.Grant(str(tmp_path / "b" / "var" / "uploads"), landlock.READ), excluded) == []
    assert policy.split(policy.Grant(str(tmp_path / "a"), landlock.READ), excluded) == [
        policy.Grant(str(tmp_path / "a"), landlock.READ)]


def test_dedupe_keeps_grants_with_more_rights():
    """A grant inside another is dropped only when the outer one has all its rights."""
    r, w = landlock.READ, landlock.WRITE
    got = policy.dedupe([policy.Grant("/usr", r), policy.Grant("/usr/lib", r), policy.Grant("/usr/x", w),
                         policy.Grant("/usrx", r)])
    assert got == [policy.Grant("/usr", r), policy.Grant("/usrx", r), policy.Grant("/usr/x", w)]


def test_root_only_files_are_found(tmp_path):
    """Entries others may not read (a 0600 file, a 0700 folder) are listed; what is beneath those is not walked."""
    (tmp_path / "open.conf").write_text("")
    (tmp_path / "shadow").write_text("")
    (tmp_path / "shadow").chmod(0o640)
    (tmp_path / "private").mkdir(mode=0o700)
    (tmp_path / "private" / "key").write_text("")
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "host_key").write_text("")
    (tmp_path / "pub" / "host_key").chmod(0o600)
    got = sorted(policy.root_only_files(str(tmp_path)))
    assert got == sorted(str(tmp_path / p) for p in ("shadow", "private", "pub/host_key"))


@pytest.mark.parametrize("flag,make,message", [
    ("extra_read", lambda t: str(t / "missing"), "no such file or folder"),
    ("extra_read", lambda t: str(t), "contains the data folder"),
    ("extra_write", lambda t: str(t / "data" / "inside"), "lies inside the data folder"),
])
def test_bad_operator_paths_are_refused(tmp_path, flag, make, message):
    """--sandbox-read/--sandbox-write: a missing path, one holding the data folder, one inside it: refused."""
    (tmp_path / "data" / "inside").mkdir(parents=True)
    with pytest.raises(policy.SandboxConfigError, match=message):
        policy.prepare("auto", str(tmp_path / "data"), **{flag: [make(tmp_path)]})


def test_strict_names_the_missing_kernel_feature(tmp_path, monkeypatch):
    """With an older Landlock (the ABI limit), strict refuses and names what is missing; auto reports it."""
    monkeypatch.setenv(policy.ABI_LIMIT_ENV, "3")
    if landlock.abi() < 3:
        pytest.skip("needs Landlock ABI 3")
    with pytest.raises(policy.SandboxConfigError, match=r"tcp_bind: needs Landlock TCP rules \(Linux 6.7, ABI 4\)"):
        policy.prepare("strict", str(tmp_path / "data"))
    plan = policy.prepare("auto", str(tmp_path / "data"))
    assert plan.summary()["enforced"] == ["files", "seccomp", "capabilities"]
    assert any("signals" in m and "ABI is 3" in m for m in plan.missing)
    plan.base.close()


def test_off_applies_nothing(tmp_path):
    plan = policy.prepare("off", str(tmp_path / "data"))
    assert not plan.on and plan.fds() == () and plan.summary()["enforced"] == []


@needs_landlock
def test_a_session_folder_is_confined_and_a_running_thread_refuses_it(tmp_path):
    """confine_session makes the session's folders 0700, points TMPDIR/HOME there, chdirs; with a second
    thread running it refuses (SandboxFailed), since ABI 7 confines only the calling thread."""
    plan = policy.prepare("auto", str(tmp_path / "data"))

    def child() -> dict[str, object]:
        _nnp()
        policy.enter(plan)
        policy.confine_session(plan, "s1")
        folder = os.path.join(plan.uploads_root, "s1")
        return {"cwd": os.getcwd() == os.path.join(folder, ".work"), "tmp": os.environ["TMPDIR"],
                "mode": stat.S_IMODE(os.stat(folder).st_mode),
                "other": _try(lambda: os.listdir(plan.uploads_root))}

    got = in_child(child)
    assert got == {"cwd": True, "tmp": os.path.join(plan.uploads_root, "s1", ".tmp"), "mode": 0o700,
                   "other": "EACCES"}

    def threaded() -> str:
        _nnp()
        policy.enter(plan)
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()
        try:
            policy.confine_session(plan, "s2")
            return "confined"
        except policy.SandboxFailed as exc:
            return str(exc)
        finally:
            stop.set()

    assert "2 threads were running" in in_child(threaded)
    with pytest.raises(policy.SandboxFailed, match="no usable session id"):
        policy.session_paths(plan, "../x")
    plan.base.close()
    for fd, _a, _d in plan.coarse:
        os.close(fd)
