"""Agents for the functional tests, misbehaving on purpose.

``scripted`` reads a command from the message's first word, so one server
can play every scenario:

- ``pid [N] [DELAY]``: its process id, then N deltas DELAY seconds apart
- ``slow N DELAY``: N deltas DELAY seconds apart, honouring stop
- ``canread PATH``: "open" if the agent can read PATH, else "denied: ERROR"
- ``fast N``: N deltas with no pause
- ``silent SECONDS``: nothing for SECONDS (honouring stop), then one delta
- ``fail``: one delta, then raises RuntimeError("boom")
- ``usererr``: one delta, then raises AgentError with its own message and code
- ``crash``: one delta, then ``os._exit(3)``
- ``badyield``: yields an int
- ``oddtypes``: events of its own types named like Object's members (``valueOf``, ``__proto__``…), then text
- ``ignore_stop``: deltas every 20 ms forever, never looking at the stop event
- ``block``: blocks its event loop in ``time.sleep`` forever
- ``segv``: one delta, then a segmentation fault
- ``baseexc``: one delta, then raises a BaseException that is not an Exception
- ``hog MB``: one delta, then holds MB megabytes of touched memory until stopped
- ``trap_term``: ignores SIGTERM, then blocks its event loop forever
- ``child``: starts ``sleep 1000`` (its pid is the text), then ignores stop
- ``yield_block``: one delta, then blocks its event loop in ``time.sleep`` at once, forever
- ``burst_block N SIZE``: a tool start and N deltas of SIZE characters in one loop turn (no await
  between them), then blocks its loop at once, forever
- ``trap_block``: ignores SIGTERM, one delta, then blocks its loop at once, forever
- ``tool``: a tool call and its result, then text
- ``markdown N [RATE]``: a long Markdown answer of N tokens (``markdown_tokens``), RATE tokens a second
- ``sample_md``: ``SAMPLE_MARKDOWN``, a few tokens at a time
- anything else: echoes the words
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import signal
import subprocess
import time
from typing import Any, AsyncIterator, Callable

from navi_actor.events import AgentError, StreamEnd, TextDelta, ToolEvent, ToolStarted
from navi_actor.turn import Turn


async def _wait(turn: Turn, seconds: float) -> bool:
    """Pause up to ``seconds``; True when the user asked to stop."""
    try:
        await asyncio.wait_for(turn.stop_event.wait(), seconds)
    except TimeoutError:
        pass
    return turn.stop_event.is_set()


def markdown_tokens(count: int) -> list[str]:
    """A long Markdown answer as an LLM streams it: ``count`` tokens, each a word with its leading whitespace.

    Sections of a heading, a paragraph with inline markup, a nested list, a
    fenced code block, a table, a quote and an ordered list, numbered from 0.
    """
    out: list[str] = []
    i = 0
    while len(out) < count:
        section = (
            f"## Part {i}\n\n"
            f"This is *part {i}* of a **long answer**, with `code_{i}` and a [link](https://example.com/{i}).\n"
            f"It goes on over a second line.\n\n"
            f"- item {i}.1\n- item {i}.2\n  - nested {i}\n- item {i}.3\n\n"
            f"```python\ndef f_{i}(x):\n    return x + {i}\n```\n\n"
            f"| n | square |\n|---|---:|\n| {i} | {i * i} |\n| {i + 1} | {(i + 1) ** 2} |\n\n"
            f"> A quote, number {i}.\n\n"
            f"1. first\n2. second"
        )
        out.extend(re.findall(r"\s*\S+", ("\n\n" if i else "") + section))
        i += 1
    return out[:count]


#: What ``sample_md`` answers: one of each construct, and hostile bits that must stay inert.
SAMPLE_MARKDOWN = """# Sample

Some *emphasis*, **strong**, ~~gone~~ and `inline code`.
A hard break follows:\\
next line.

- one
- two
  1. nested
  2. ordered

> quoted **text**

```js
const x = 1 < 2;
```

| a | b |
|:--|--:|
| 1 | 2 |

---

[safe](https://example.com/a "a title") and [bad](javascript:alert(1)) and [worse]( JAVASCRIPT:alert(2))
and [data](data:text/html,<script>alert(3)</script>) and <https://example.com/auto>.

<script>window.__pwned = 1</script>
<img src=x onerror="window.__pwned = 2">
"""


async def scripted(turn: Turn) -> AsyncIterator[Any]:
    words = turn.display_content.split()
    cmd, args = words[0], words[1:]
    if cmd == "pid":
        yield TextDelta(f"pid={os.getpid()}")
        n = int(args[0]) if args else 0
        delay = float(args[1]) if len(args) > 1 else 0.0
        for i in range(n):
            if await _wait(turn, delay):
                return
            yield TextDelta(f" {i}")
    elif cmd == "slow":
        n, delay = int(args[0]), float(args[1])
        for i in range(n):
            yield TextDelta(f"w{i} ")
            if await _wait(turn, delay):
                return
    elif cmd == "fast":
        for i in range(int(args[0])):
            yield TextDelta(f"w{i} ")
        yield StreamEnd(token_count=int(args[0]))
    elif cmd == "silent":
        if await _wait(turn, float(args[0])):
            return
        yield TextDelta("done")
    elif cmd == "fail":
        yield TextDelta("partial ")
        raise RuntimeError("boom")
    elif cmd == "usererr":
        yield TextDelta("partial ")
        raise AgentError("The model server refused the key; check MY_KEY.", "model_auth")
    elif cmd == "crash":
        yield TextDelta("partial ")
        await asyncio.sleep(0)  # let the actor write the delta to its pipe
        await asyncio.sleep(0)
        os._exit(3)
    elif cmd == "badyield":
        yield 42
    elif cmd == "oddtypes":  # an agent's own event types, named like what every JS object inherits
        for kind in ("valueOf", "__proto__", "hasOwnProperty", "constructor", "toString"):
            yield {"type": kind, "note": kind}
        yield TextDelta("after the odd types")
    elif cmd == "ignore_stop":
        while True:
            yield TextDelta("x")
            await asyncio.sleep(0.02)
    elif cmd == "block":
        yield TextDelta("blocking ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        while True:
            time.sleep(1)
    elif cmd == "segv":
        yield TextDelta("partial ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ctypes.string_at(0)
    elif cmd == "baseexc":
        yield TextDelta("partial ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        raise AgentMeltdown("not an Exception")
    elif cmd == "hog":
        yield TextDelta("eating ")
        await asyncio.sleep(0)  # let the actor write the delta before the loop is busy
        await asyncio.sleep(0)
        hoard = bytearray(int(args[0]) * 1024 * 1024)
        for i in range(0, len(hoard), 4096):
            hoard[i] = 1
        while not await _wait(turn, 0.05):
            pass
        yield TextDelta(f"{len(hoard)}")
    elif cmd == "trap_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        yield TextDelta("trapped ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        while True:
            time.sleep(1)
    elif cmd == "yield_block":  # the common case of a blocking tool: no chance for the loop to write
        yield TextDelta("calling the tool ")
        while True:
            time.sleep(1)
    elif cmd == "burst_block":
        n, size = int(args[0]), int(args[1])
        yield ToolStarted("lookup", {"q": "x"})
        for i in range(n):
            yield TextDelta(f"{i:06d}".ljust(size, "."))
        while True:
            time.sleep(1)
    elif cmd == "trap_block":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        yield TextDelta("trapped, calling the tool ")
        while True:
            time.sleep(1)
    elif cmd == "child":
        proc = subprocess.Popen(["sleep", "1000"])
        yield TextDelta(str(proc.pid))
        while True:
            await asyncio.sleep(0.05)
    elif cmd == "subproc":  # a tool run the asyncio way: under uvloop, libuv's SIGCHLD watcher
        proc = await asyncio.create_subprocess_exec("echo", *args, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        yield TextDelta(f"{out.decode().strip()} rc={proc.returncode} loop={type(asyncio.get_running_loop()).__module__}")
    elif cmd == "markdown":
        toks = markdown_tokens(int(args[0]))
        rate = float(args[1]) if len(args) > 1 else 0.0
        batch = 20
        for start in range(0, len(toks), batch):
            for tok in toks[start:start + batch]:
                yield TextDelta(tok)
            if rate and await _wait(turn, batch / rate):
                return
        yield StreamEnd(token_count=len(toks))
    elif cmd == "sample_md":
        for start in range(0, len(SAMPLE_MARKDOWN), 7):
            yield TextDelta(SAMPLE_MARKDOWN[start:start + 7])
            await asyncio.sleep(0.005)
    elif cmd == "history":  # what the agent reads of the session before this turn
        yield TextDelta(" | ".join(f"{m['role']}:{m['content']}" for m in turn.history))
    elif cmd == "finish":  # finish REASON [WORDS...]: an answer that ends for that reason
        for w in args[1:]:
            yield TextDelta(w + " ")
        yield StreamEnd(finish_reason=args[0])
    elif cmd == "tool":
        yield ToolStarted("lookup", {"q": "x"})
        yield ToolEvent("lookup", {"q": "x"}, {"answer": 42}, True, metadata={"call_id": "c1"})
        yield TextDelta("found 42")
    elif cmd == "canread":  # can the agent read this file?
        try:
            with open(args[0], "rb") as f:
                f.read(1)
            yield TextDelta("open")
        except OSError as exc:
            yield TextDelta(f"denied: {type(exc).__name__}")
    else:
        for w in words:
            yield TextDelta(w + " ")


class ClosingAgent:
    """A factory agent whose ``aclose`` leaves a mark (the file named by NAVI_TEST_MARKER)."""

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        yield TextDelta("hello")

    async def aclose(self) -> None:
        with open(os.environ["NAVI_TEST_MARKER"], "w") as f:
            f.write(f"closed by {os.getpid()}")


def closing_factory() -> ClosingAgent:
    return ClosingAgent()


class AgentMeltdown(BaseException):
    """Escapes every ``except Exception``."""


class _Broken:
    def __init__(self) -> None:
        raise RuntimeError("factory exploded")


def broken_factory() -> _Broken:
    return _Broken()


class _Echo:
    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        yield TextDelta(turn.display_content)


async def environ_agent(turn: Turn) -> AsyncIterator[Any]:
    """Reports (as JSON text) the variable named by the message: the sha256 of its value as this actor's
    environment has it (None if unset), and whether /proc/self/environ shows it."""
    import hashlib
    import json

    name = turn.display_content.strip()
    value = os.environb.get(os.fsencode(name))
    with open("/proc/self/environ", "rb") as f:
        block = f.read()
    yield TextDelta(json.dumps({
        "sha256": hashlib.sha256(value).hexdigest() if value is not None else None,
        "in_proc_environ": any(e.startswith(os.fsencode(name) + b"=") for e in block.split(b"\0")),
    }))


def misconfigured_factory() -> _Echo:
    """A factory that raises, as one with a bad setting does, while the file named by
    NAVI_TEST_BAD_SETTING exists; once it is gone, the agent echoes (the setting was mended)."""
    path = os.environ["NAVI_TEST_BAD_SETTING"]
    if os.path.exists(path):
        raise ValueError(f"bad setting in {path}: remove it to mend")
    return _Echo()


# ── a hostile agent, for tests/test_security_*.py ───────────────────────────


def _channel_fd() -> int:
    """The actor's end of its channel to the front, found without the actor's help.

    Of this process's sockets, the channel and the lifeline are the two the
    supervisor made (``SO_PEERCRED`` of a socketpair names its creator, our
    parent); the channel is the non-blocking one (the event loop's), the
    lifeline is read by a blocking thread.
    """
    import fcntl
    import socket
    import stat
    import struct

    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family != socket.AF_UNIX:
                continue
            pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        finally:
            sock.close()
        if pid == os.getppid() and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            found.append(fd)
    if len(found) != 1:
        raise RuntimeError(f"expected one channel socket, found {found}")
    return found[0]


def _scan_memory(needles: list[bytearray]) -> list[bool]:
    """Whether each needle occurs anywhere in this process's readable memory (but in itself).

    Read through /proc/self/mem into one reused mmap buffer (skipped in the
    scan), so the scan makes no copy of what it finds.
    """
    import mmap

    chunk = 1 << 20
    longest = max(len(n) for n in needles)
    buf = mmap.mmap(-1, chunk)
    view = memoryview(buf)
    buf_addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    own = {ctypes.addressof(ctypes.c_char.from_buffer(n)) for n in needles}
    found = [False] * len(needles)
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= buf_addr < end:
                continue
            pos = start
            while pos < end:
                want = min(chunk, end - pos)
                try:
                    got = os.preadv(fd, [view[:want]], pos)
                except OSError:
                    break
                if got <= 0:
                    break
                for i, needle in enumerate(needles):
                    j = buf.find(needle, 0, got)
                    while j >= 0 and not found[i]:
                        if pos + j not in own:
                            found[i] = True
                        j = buf.find(needle, j + 1, got)
                if got < want or pos + got >= end:
                    pos += got
                else:
                    pos += got - longest + 1  # overlap: a needle across the chunk boundary is seen
    finally:
        os.close(fd)
        view.release()
    return found


def _peek(path: str, needles: list[bytearray]) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except PermissionError:
        return "denied"
    except OSError as exc:
        return f"error {exc.errno}"
    return "found" if any(n in data for n in needles) else "clean"


def _own_fds(needles: list[bytearray]) -> dict[str, Any]:
    """This process's memory files (``memfd:NAME``, as a descriptor shows them), and the descriptors
    whose content, read from its start, holds a needle."""
    memfds, holding = [], []
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.lstrip("/").startswith("memfd:"):
            memfds.append(link)
        try:
            data = os.pread(int(name), 1 << 20, 0)
        except OSError:
            continue  # a socket, a pipe, a folder: nothing kept to read
        if any(n in data for n in needles):
            holding.append(link)
    return {"memfds": sorted(memfds), "holding": holding}


async def hostile(turn: Turn) -> AsyncIterator[Any]:
    """A hostile agent: the first word picks what it does.

    - ``garbage`` / ``oversize`` / ``badseq`` / ``otherrun``: one delta, then
      writes straight to its channel socket a frame that is not JSON, a length
      over the limit, an event whose seq does not follow, or a ``turn_done``
      for another run; then waits to be killed
    - ``probe PID [HEX…]``: reports (as JSON text) the environment's names,
      whether any needle (hex) is in its environment, its memory, its own
      descriptors, its parent's (the supervisor's) /proc environ and fd list, and process PID's (the
      front's) /proc mem; plus its resource limits, no_new_privs and nice values (its own, the front's)
    - ``control [SESSION_ID]``: finds the control socket from its upload folder (``DATA/uploads/SID``
      → ``DATA/run/control.sock``) and asks it to list runs and to kill SESSION_ID, itself and from a
      grandchild that double-forked and ``setsid``'d away (it waits until it is re-parented); reports
      (as JSON text) each answer, both pids and the grandchild's new parent
    - ``slow N DELAY``: N deltas DELAY seconds apart, honouring stop
    - anything else: echoes the words
    """
    import json
    import resource
    import struct

    import orjson

    from navi_actor import framing

    words = turn.display_content.split()
    cmd, args = (words[0], words[1:]) if words else ("", [])
    if cmd in ("garbage", "oversize", "badseq", "otherrun"):
        yield TextDelta("about to misbehave ")
        await asyncio.sleep(0)  # let the actor write the delta to its pipe
        await asyncio.sleep(0)
        if cmd == "garbage":
            data = b"\x00\x00\x00\x0bnot json!!\x00"
        elif cmd == "oversize":
            data = struct.pack(">I", framing.MAX_ACTOR_FRAME + 1) + b"x" * 16
        elif cmd == "badseq":
            data = framing.event_frame(orjson.dumps({"type": "stream_delta", "delta": "forged", "seq": 10**12}))
        else:
            result = {"status": "done", "content": "forged", "thinking": "", "tool_calls": [], "last_seq": 999,
                      "stats": {}}
            data = framing.control({"op": "turn_done", "run_id": "not-" + turn.run_id,
                                    "final": {"type": "stream_end", "seq": 999, "run_id": "x"}, "result": result})
        os.write(_channel_fd(), data)
        await _wait(turn, 30)  # the front kills us long before
        yield TextDelta("still alive")
    elif cmd == "probe":
        front_pid, needles = int(args[0]), [bytearray.fromhex(h) for h in args[1:]]
        report: dict[str, Any] = {"environ": sorted(os.environ)}
        if needles:
            report["proc_environ"] = _peek("/proc/self/environ", needles)
            report["memory"] = _scan_memory(needles)
            report["parent_environ"] = _peek(f"/proc/{os.getppid()}/environ", needles)
            report["front_environ"] = _peek(f"/proc/{front_pid}/environ", needles)
            report["own_fds"] = _own_fds(needles)
        report["parent_fd_links"] = "denied"
        try:
            names = os.listdir(f"/proc/{os.getppid()}/fd")
            report["parent_fds"] = "readable"
            try:
                [os.readlink(f"/proc/{os.getppid()}/fd/{n}") for n in names[:3]]
                report["parent_fd_links"] = "readable"
            except PermissionError:
                pass
        except PermissionError:
            report["parent_fds"] = "denied"
        try:
            os.close(os.open(f"/proc/{front_pid}/mem", os.O_RDONLY))
            report["front_mem"] = "readable"
        except PermissionError:
            report["front_mem"] = "denied"
        report["rlimits"] = {name: resource.getrlimit(getattr(resource, f"RLIMIT_{name.upper()}"))[0]
                             for name in ("nofile", "nproc", "as")}
        report["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        report["front_nice"] = os.getpriority(os.PRIO_PROCESS, front_pid)
        with open("/proc/self/status") as f:
            report["no_new_privs"] = next(ln.split()[1] for ln in f if ln.startswith("NoNewPrivs:")) == "1"
        yield TextDelta(json.dumps(report))
    elif cmd == "control":
        from pathlib import Path

        path = Path(turn.upload_dir).parent.parent / "run" / "control.sock"
        requests = [{"op": "list"}, {"op": "kill", "session_ids": args}]
        report = {"socket": str(path), "exists": path.exists(), "pid": os.getpid(), "sid": os.getsid(0),
                  "direct": [_ask_control(path, r) for r in requests]}
        report.update(_from_grandchild(path, requests))
        yield TextDelta(json.dumps(report))
    elif cmd == "slow":
        for i in range(int(args[0])):
            yield TextDelta(f"w{i} ")
            if await _wait(turn, float(args[1])):
                return
    else:
        for w in words:
            yield TextDelta(w + " ")


# ── an agent that tries to leave its sandbox, for tests/test_sandbox_functional.py ──


def _attempt(fn: Callable[[], Any]) -> str:
    """``open`` if ``fn`` succeeded, else ``denied (ERRNO)``."""
    try:
        fn()
        return "open"
    except OSError as exc:
        return f"denied ({errno.errorcode.get(exc.errno or 0, exc.errno)})"


def _control_list(path: str) -> None:
    """Ask the control socket for every run: raises unless it answers with the list."""
    from pathlib import Path

    from supervisor.control import request

    reply = request(Path(path), {"op": "list"}, timeout=3)
    if "actors" not in reply:
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"refused by the server: {reply}")


def _ptrace_attach(pid: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH


def _connect(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass


def _bind(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


async def escape(turn: Turn) -> AsyncIterator[Any]:
    """Try every way out of the session the message names; answer with a JSON report.

    The message is a JSON object: the data folder, the tokens file, another
    session's id, the pids of the supervisor, the front and another actor, a
    TCP port that is listening but not allowed, and a free port to bind.
    """
    import json

    if not turn.content.startswith("{"):
        yield TextDelta("ready")
        return
    ask = json.loads(turn.content)
    data, other = ask["data_dir"], ask["other_session"]
    uploads = os.path.join(data, "uploads")
    report = {
        "read_database": _attempt(lambda: open(os.path.join(data, "navi.sqlite3"), "rb").close()),
        "read_wal": _attempt(lambda: open(os.path.join(data, "navi.sqlite3-wal"), "rb").close()),
        "list_data_folder": _attempt(lambda: os.listdir(data)),
        "list_other_uploads": _attempt(lambda: os.listdir(os.path.join(uploads, other))),
        "read_other_upload": _attempt(lambda: open(os.path.join(uploads, other, ask["other_file"]), "rb").close()),
        "write_data_folder": _attempt(lambda: open(os.path.join(data, "planted.txt"), "w").close()),
        "read_tokens": _attempt(lambda: open(ask["tokens_file"], "rb").close()),
        "control_socket": _attempt(lambda: _control_list(os.path.join(data, "run", "control.sock"))),
        "read_home": _attempt(lambda: os.listdir(ask["home"])),
        "signal_supervisor": _attempt(lambda: os.kill(ask["supervisor_pid"], signal.SIGCONT)),
        "signal_front": _attempt(lambda: os.kill(ask["front_pid"], signal.SIGCONT)),
        "signal_other_actor": _attempt(lambda: os.kill(ask["other_pid"], signal.SIGCONT)),
        "other_environ": _attempt(lambda: open(f"/proc/{ask['other_pid']}/environ", "rb").read()),
        "other_mem": _attempt(lambda: open(f"/proc/{ask['other_pid']}/mem", "rb").close()),
        "ptrace_other": _attempt(lambda: _ptrace_attach(ask["other_pid"])),
        "bind_port": _attempt(lambda: _bind(ask["bind_port"])),
        "connect_other_port": _attempt(lambda: _connect(ask["closed_port"])),
    }
    if ask.get("allowed_port"):
        report["connect_allowed_port"] = _attempt(lambda: _connect(ask["allowed_port"]))
    # what stays open: its own folder, and signals to itself
    os.makedirs(turn.upload_dir, exist_ok=True)
    report["own_folder"] = _attempt(lambda: open(os.path.join(turn.upload_dir, "mine.txt"), "w").close())
    report["signal_self"] = _attempt(lambda: os.kill(os.getpid(), 0))
    yield TextDelta(json.dumps(report))


async def toolbox(turn: Turn) -> AsyncIterator[Any]:
    """What an agent's tools do under the sandbox; answers with a JSON report of each.

    ``uploaded NAME`` reads an upload of its session; anything else runs the lot.
    """
    import json
    import multiprocessing
    import socket
    import tempfile

    report: dict[str, Any] = {}
    if turn.content.startswith("uploaded "):
        with open(os.path.join(turn.upload_dir, turn.content.split()[1])) as f:
            report["upload"] = f.read()
        yield TextDelta(json.dumps(report))
        return
    work = os.getcwd()
    report["cwd"] = work
    report["tmpdir"] = tempfile.gettempdir()
    script = ("ls -a . && python3 -c 'import colorsys; print(colorsys.rgb_to_hsv(1, 0, 0))' && "
              "git init -q repo && cd repo && echo hi > a.txt && git add a.txt && "
              "git -c user.email=a@b.c -c user.name=agent commit -q -m first && git log --oneline | wc -l")
    proc = subprocess.run(script, shell=True, capture_output=True, text=True, timeout=60)
    report["shell"] = [proc.returncode, proc.stdout.split(), proc.stderr[-300:]]
    with open("notes.txt", "w") as f:
        f.write("kept")
    with open("notes.txt") as f:
        report["file"] = f.read()
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("temp")
    report["tempfile"] = os.path.dirname(f.name)
    import wave  # noqa: F401 - a module no actor imported before: a lazy import of the stdlib

    report["lazy_import"] = True
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=queue.put, args=(42,))
    child.start()
    report["multiprocessing"] = queue.get(timeout=30)
    child.join(10)
    report["dns"] = socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)[0][4][1]
    try:
        os.listdir(os.path.dirname(os.path.dirname(turn.upload_dir)))  # the data folder
        report["denied"] = "open"
    except PermissionError as exc:
        report["denied"] = type(exc).__name__
    yield TextDelta(json.dumps(report))


class _Threaded:
    """A factory that starts a thread when it is made, and asks that thread to list the uploads root."""

    def __init__(self) -> None:
        import queue
        import threading

        self.asks: queue.Queue[str] = queue.Queue()
        self.answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._serve, daemon=True, name="factory-thread").start()

    def _serve(self) -> None:
        while True:
            path = self.asks.get()
            self.answers.put(_attempt(lambda: os.listdir(path)))

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        self.asks.put(os.path.dirname(turn.upload_dir))
        yield TextDelta(await asyncio.to_thread(self.answers.get, timeout=10))


def threaded_factory() -> _Threaded:
    return _Threaded()


def _ask_control(path: Any, message: dict[str, Any]) -> dict[str, Any]:
    """What the control socket answers ``message``: its reply, or how the connection failed."""
    from supervisor.control import request

    try:
        return {"reply": request(path, message, timeout=5.0)}
    except Exception as exc:  # noqa: BLE001 - reported
        return {"failed": f"{type(exc).__name__}: {exc}"}


def _from_grandchild(path: Any, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Ask from a process that double-forked and left our session: its pid, parent and answers."""
    import json

    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the middle process: lose the session, fork, exit
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                middle = os.getppid()
                deadline = time.monotonic() + 5
                while os.getppid() == middle and time.monotonic() < deadline:
                    time.sleep(0.005)  # until the middle one is gone and we are re-parented
                out = {"grandchild_pid": os.getpid(), "grandchild_ppid": os.getppid(),
                       "grandchild_sid": os.getsid(0), "grandchild": [_ask_control(path, q) for q in requests]}
                os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    return json.loads(b"".join(chunks))
