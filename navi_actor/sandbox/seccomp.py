"""A small seccomp filter: the system calls an agent never needs and could escape with.

Landlock confines files, TCP ports and signals; it does not cover tracing
another process, reading its memory, io_uring (which opens sockets and files
without the system calls Landlock watches), loading kernel code, or packet and
vsock sockets. This filter refuses those (the set OpenAI's Codex refuses, plus
the kernel-loading calls):

* ``ptrace``, ``process_vm_readv``/``writev``, ``pidfd_getfd``: EPERM;
* ``io_uring_setup``/``enter``/``register``: ENOSYS, so libraries (libuv) fall
  back to epoll without a word;
* ``bpf``, ``perf_event_open``, ``kexec_*``, ``*_module``, ``mount``-family
  calls: EPERM;
* ``socket(AF_PACKET | AF_VSOCK | AF_KEY, …)`` and raw IP sockets: EPERM.

Everything else is allowed. The program is a classic BPF list built here
(libseccomp's Python bindings come only with the system's Python); it checks
the architecture first, and on x86-64 refuses the x32 ABI's numbers, which
would otherwise slip past a check by number.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

from navi_actor.sandbox import _libc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_AND_K = 0x54
_BPF_RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

AF_KEY, AF_PACKET, AF_VSOCK = 15, 17, 40
AF_INET, AF_INET6 = 2, 10
SOCK_RAW, SOCK_PACKET = 3, 10
SOCK_TYPE_MASK = 0xF

_ARCHES = {
    # machine: (AUDIT_ARCH, {name: number}, x32 bit or 0)
    "x86_64": (
        0xC000003E,
        {
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "bpf": 321, "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320,
            "init_module": 175, "finit_module": 313, "delete_module": 176,
            "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "socket": 41,
        },
        0x40000000,
    ),
    "aarch64": (
        0xC00000B7,
        {
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "bpf": 280, "perf_event_open": 241, "kexec_load": 104, "kexec_file_load": 294,
            "init_module": 105, "finit_module": 273, "delete_module": 106,
            "mount": 40, "umount2": 39, "pivot_root": 41, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "socket": 198,
        },
        0,
    ),
}

#: System calls refused outright, and the errno they get.
DENIED = {
    "ptrace": errno.EPERM, "process_vm_readv": errno.EPERM, "process_vm_writev": errno.EPERM,
    "pidfd_getfd": errno.EPERM,
    "io_uring_setup": errno.ENOSYS, "io_uring_enter": errno.ENOSYS, "io_uring_register": errno.ENOSYS,
    "bpf": errno.EPERM, "perf_event_open": errno.EPERM, "kexec_load": errno.EPERM,
    "kexec_file_load": errno.EPERM, "init_module": errno.EPERM, "finit_module": errno.EPERM,
    "delete_module": errno.EPERM, "mount": errno.EPERM, "umount2": errno.EPERM, "pivot_root": errno.EPERM,
    "open_tree": errno.EPERM, "move_mount": errno.EPERM, "fsopen": errno.EPERM, "fsconfig": errno.EPERM,
    "fsmount": errno.EPERM, "fspick": errno.EPERM,
}


def supported() -> str | None:
    """None if this filter can be installed here, else why not."""
    if platform.machine() not in _ARCHES:
        return f"no seccomp filter for the {platform.machine()} architecture"
    if not os.path.exists("/proc/sys/kernel/seccomp/actions_avail"):
        return "the kernel has no seccomp filter support"
    return None


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes:
    """The filter, as the bytes of a ``struct sock_filter`` array."""
    arch, numbers, x32 = _ARCHES[machine or platform.machine()]
    eperm = RET_ERRNO | errno.EPERM
    out = [
        _insn(_BPF_LD_W_ABS, _OFF_ARCH),
        _insn(_BPF_JEQ_K, arch, jt=1),
        _insn(_BPF_RET_K, RET_KILL_PROCESS),  # a foreign ABI (i386 on x86-64): never ours
        _insn(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if x32:
        out += [_insn(_BPF_JGE_K, x32, jf=1), _insn(_BPF_RET_K, RET_ERRNO | errno.ENOSYS)]
    for name, err in DENIED.items():
        out += [_insn(_BPF_JEQ_K, numbers[name], jf=1), _insn(_BPF_RET_K, RET_ERRNO | err)]
    # socket(family, type, …): the families and the raw type an agent has no use for.
    out += [
        _insn(_BPF_JEQ_K, numbers["socket"], jf=12),
        _insn(_BPF_LD_W_ABS, _OFF_ARG0),
        _insn(_BPF_JEQ_K, AF_PACKET, jt=8),
        _insn(_BPF_JEQ_K, AF_VSOCK, jt=7),
        _insn(_BPF_JEQ_K, AF_KEY, jt=6),
        _insn(_BPF_JEQ_K, AF_INET, jt=1),
        _insn(_BPF_JEQ_K, AF_INET6, jf=5),
        _insn(_BPF_LD_W_ABS, _OFF_ARG1),  # an IP socket: refuse the raw types
        _insn(_BPF_AND_K, SOCK_TYPE_MASK),
        _insn(_BPF_JEQ_K, SOCK_RAW, jt=1),
        _insn(_BPF_JEQ_K, SOCK_PACKET, jf=1),
        _insn(_BPF_RET_K, eperm),
        _insn(_BPF_RET_K, RET_ALLOW),
        _insn(_BPF_RET_K, RET_ALLOW),
    ]
    return b"".join(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Filter:
    """The filter, built ahead of time (in the template); :meth:`install` is one system call."""

    def __init__(self, machine: str | None = None) -> None:
        code = program(machine)
        self._buf = ctypes.create_string_buffer(code, len(code))
        self._prog = _SockFprog(len(code) // 8, ctypes.cast(self._buf, ctypes.c_void_p))

    def install(self) -> None:
        """Install it on the calling thread (and what it starts later). Needs no_new_privs."""
        if _libc.load().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._prog), 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp filter: {os.strerror(err)}")


def install() -> None:
    """Build the filter and install it on the calling thread."""
    Filter().install()

