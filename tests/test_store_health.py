"""Units of the full-disk handling: the bounded unsaved results, the store's health, logs that cannot fail."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path

import pytest

from navi_actor import logs
from navi_actor.front.storeq import StoreQueue
from navi_actor.front.unsaved import Unsaved, UnsavedResults, size_of
from navi_actor.store import StoreFailure, open_store


def _item(run_id: str, sid: str, text: str) -> Unsaved:
    result = {"status": "done", "content": text, "tool_calls": [], "thinking": "", "error": None,
              "error_code": None, "stats": {"elapsed_seconds": 1.0}}
    return Unsaved(run_id, sid, 7, result, "database or disk is full")


def test_unsaved_results_keep_the_newest_whole_and_reduce_the_oldest_past_the_bound() -> None:
    kept = UnsavedResults(max_bytes=250)
    assert kept.add(_item("r1", "s1", "a" * 100)) == []
    assert kept.add(_item("r2", "s2", "b" * 100)) == []
    assert kept.bytes == 200 and kept.waiting_in("s1") and kept.waiting_in("s2") and not kept.waiting_in("s3")
    reduced = kept.add(_item("r3", "s3", "c" * 100))
    assert [r.run_id for r in reduced] == ["r1"]  # the oldest
    assert kept.bytes == 200 and kept.reduced_total == 1
    marker = reduced[0]
    assert marker.reduced and marker.size == 0
    assert marker.result["status"] == "failed" and marker.result["error_code"] == "store_error"
    assert marker.result["content"] is None  # the store keeps what it checkpointed
    assert "database or disk is full" in marker.result["error"]
    assert marker.result["stats"] == {"elapsed_seconds": 1.0}
    assert [i.run_id for i in kept] == ["r1", "r2", "r3"]  # a marker is still retried, first
    assert kept.remove_run("r1") is marker and not kept.waiting_in("s1")
    assert kept.remove_run("r1") is None
    assert len(kept) == 2 and kept.bytes == 200


def test_a_result_larger_than_the_bound_alone_is_reduced_at_once() -> None:
    kept = UnsavedResults(max_bytes=10)
    item = _item("r1", "s1", "x" * 11)
    assert kept.add(item) == [item] and item.reduced and kept.bytes == 0 and len(kept) == 1


def test_size_of_counts_answer_thinking_and_tool_calls() -> None:
    assert size_of({"content": "abc", "thinking": "de", "tool_calls": []}) == 5
    assert size_of({"content": "", "tool_calls": [{"result": "x" * 50}]}) > 50


async def test_the_store_queue_is_failing_from_a_database_failure_until_a_write_succeeds(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    q = StoreQueue(store, asyncio.get_running_loop())

    def finish_run() -> None:
        raise StoreFailure("finish_run", "database or disk is full")

    def raw() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        sid = (await q.call(store.create_session))["id"]
        assert q.failing is None and q.failures == {}
        with pytest.raises(StoreFailure):
            await q.call(finish_run)
        assert q.failing is not None and q.failing.reason == "database or disk is full"
        assert q.failures == {"finish_run": 1} and q.failing_since is not None
        with pytest.raises(sqlite3.OperationalError):
            await q.call(raw)  # not wrapped by the store: counted under its own name
        assert q.failures == {"finish_run": 1, "raw": 1} and q.failing.reason == "disk I/O error"
        await q.call(store.get_session, sid)  # a read says nothing of writes
        assert q.failing is not None
        await q.call(store.probe)
        assert q.failing is None and q.failing_since is None
        assert q.failures == {"finish_run": 1, "raw": 1}  # a counter, never reset
    finally:
        await q.close()


def test_sqlite_errors_leave_the_store_as_store_failure_naming_the_method(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    try:
        store._db.execute("DROP TABLE runs")  # a broken database file, as good as a full disk here
        with pytest.raises(StoreFailure) as exc:
            store.running_runs()
        assert exc.value.op == "running_runs" and "no such table" in exc.value.reason
        assert str(exc.value) == "the session store failed in running_runs: no such table: runs"
    finally:
        store.close()


def test_logging_to_a_full_disk_drops_the_line_and_never_raises() -> None:
    """/dev/full answers every write with ENOSPC, as a log file on a full disk does."""
    log = logs.get("test")
    with open("/dev/full", "w") as full:
        logs.configure("front", "json", file=full)
        try:
            before = logs.dropped_lines()
            log.info("test.line", n=1)
            log.error("test.line", n=2)
            assert logs.dropped_lines() == before + 2
        finally:
            logs.configure("front", "json", file=io.StringIO())


def test_logging_to_a_file_object_that_fails_drops_the_line() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    log = logs.get("test")
    logs.configure("front", "json", file=Broken())
    try:
        before = logs.dropped_lines()
        log.info("test.line")
        assert logs.dropped_lines() == before + 1
    finally:
        out = io.StringIO()
        logs.configure("front", "json", file=out)
        log.info("test.after")
        assert '"event": "test.after"' in out.getvalue()
