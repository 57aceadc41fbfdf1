"""navi_actor.actor.prewarm: the template rehearses real turns, quietly, and leaves nothing behind."""

import json
import subprocess
import sys

SCRIPT = """
import asyncio, json, os, threading
from navi_actor import actor, logs
logs.configure("supervisor", "json")
before = sorted(os.listdir("/proc/self/fd"))
turns = actor.prewarm("json")
after = sorted(os.listdir("/proc/self/fd"))
logs.configure("supervisor", "json")
logs.get().info("after.prewarm")
print(json.dumps({"turns": turns, "fds_before": before, "fds_after": after,
                  "threads": threading.active_count()}))
"""


def test_prewarm_rehearses_turns_logs_nothing_and_leaves_no_descriptor_or_thread():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["turns"] == 3
    assert report["fds_after"] == report["fds_before"]
    assert report["threads"] == 1
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["after.prewarm"]  # the rehearsal's own lines went nowhere
    assert lines[0]["role"] == "supervisor" and "run_id" not in lines[0]
