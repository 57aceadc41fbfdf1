"""The chat page with a turn running (issue 15): typing is allowed, "Queue" and "Stop and send",
queued messages as pending bubbles with a cancel control. In a real headless Chromium, as
tests/test_browser.py (whose fixtures these tests use), waiting with Playwright's expect."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.conftest import Server
from tests.test_browser import browser, page, saved_replies, send, session_id  # noqa: F401 (fixtures)


def patch_session(server: Server, sid: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{server.url}/sessions/{sid}", method="PATCH", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def queue_of(server: Server, sid: str) -> list[str]:
    with urllib.request.urlopen(f"{server.url}/sessions/{sid}", timeout=10) as r:
        return [q["content"] for q in json.loads(r.read())["queue"]]


def test_queue_and_cancel_while_a_turn_runs(make_server: Any, page: Any) -> None:  # noqa: F811
    """While a turn runs, Queue (and Enter) queue messages as pending bubbles; Cancel takes one out; the
    other runs when the turn ends, in the same bubble."""
    from playwright.sync_api import expect

    server = make_server("tests.agents:scripted")
    page.goto(server.url)
    send(page, "slow 400 0.02")
    first = page.locator(".turn").first
    expect(first).to_have_attribute("data-status", "running")
    expect(page.locator("#queue")).to_be_visible()
    expect(page.locator("#interrupt")).to_be_visible()
    expect(page.locator("#queue")).to_have_class("btn primary")  # the server's default (reject): queue
    sid = session_id(page)

    page.fill("#input", "drop me")
    page.locator("#queue").click()
    send(page, "keep me")  # Enter does what the highlighted button does
    queued = page.locator('.turn[data-status="queued"]')
    expect(queued).to_have_count(2)
    expect(queued.nth(0).locator(".msg.user")).to_have_text("drop me")
    expect(queued.nth(1).locator(".msg.user")).to_have_text("keep me")
    assert queue_of(server, sid) == ["drop me", "keep me"]

    queued.nth(0).locator(".cancel-queued").click()
    expect(queued).to_have_count(1)
    expect(page.locator("#input")).to_have_value("drop me")  # a cancelled message goes back to the composer
    assert queue_of(server, sid) == ["keep me"]

    page.locator("#stop").click()
    expect(first).to_have_attribute("data-status", "stopped")
    kept = page.locator(".turn").nth(1)
    expect(kept.locator(".msg.user")).to_have_text("keep me")
    expect(kept).to_have_attribute("data-status", "done")
    expect(kept.locator(".block.text")).to_have_text("keep me")
    expect(page.locator(".turn")).to_have_count(2)
    replies = saved_replies(server, sid)
    assert [r["status"] for r in replies] == ["stopped", "done"] and replies[1]["content"] == "keep me "


def test_stop_and_send(make_server: Any, page: Any) -> None:  # noqa: F811
    """"Stop and send" stops the running turn (it shows why) and runs the new message next; with the
    session's if_busy set to interrupt, Enter does it."""
    from playwright.sync_api import expect

    server = make_server("tests.agents:scripted", args=["--stop-grace", "0.3"])
    page.goto(server.url)
    send(page, "ignore_stop")
    first = page.locator(".turn").first
    expect(first).to_have_attribute("data-status", "running")
    page.fill("#input", "instead")
    page.locator("#interrupt").click()
    expect(first).to_have_attribute("data-status", "stopped")
    expect(first.locator(".turn-foot")).to_contain_text("stopped for a new message")
    second = page.locator(".turn").nth(1)
    expect(second).to_have_attribute("data-status", "done")
    expect(second.locator(".block.text")).to_have_text("instead")
    sid = session_id(page)

    patch_session(server, sid, {"if_busy": "interrupt"})
    page.reload()  # the page reads the session's if_busy with its history
    send(page, "ignore_stop")
    third = page.locator(".turn").nth(2)
    expect(third).to_have_attribute("data-status", "running")
    expect(page.locator("#interrupt")).to_have_class("btn primary")
    send(page, "by enter")
    expect(third).to_have_attribute("data-status", "stopped")
    fourth = page.locator(".turn").nth(3)
    expect(fourth).to_have_attribute("data-status", "done")
    expect(fourth.locator(".block.text")).to_have_text("by enter")
    replies = saved_replies(server, sid)
    assert [(r["status"], r["error_code"]) for r in replies] == [
        ("stopped", "interrupted_by_new_message"), ("done", None),
        ("stopped", "interrupted_by_new_message"), ("done", None)]
