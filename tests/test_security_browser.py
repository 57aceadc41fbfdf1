"""The chat page with authentication on, in a real headless Chromium (see tests/test_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.test_browser import browser, page, send  # noqa: F401 - fixtures

TOKEN = "browser-token-" + "W" * 32


def test_login_then_chat_with_a_ticketed_websocket(make_server: Any, page: Any, tmp_path: Path) -> None:  # noqa: F811
    """The page asks for a token, refuses a wrong one, then chats over a WebSocket opened with a ticket, not the token."""
    from playwright.sync_api import expect

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} alice user\n")
    tokens.chmod(0o600)
    server = make_server("echo", args=["--tokens-file", str(tokens)])
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    page.goto(server.url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token-input", "not-the-token-" + "x" * 30)
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    page.fill("#token-input", TOKEN)
    page.click("#login-submit")
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#user-name")).to_have_text("alice (user)")

    page.get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"#session="))
    expect(page.locator("#conn")).to_have_text("live")
    send(page, "hello secure world")
    turn = page.locator(".turn").last
    expect(turn).to_have_attribute("data-status", "done")
    expect(turn.locator(".block.text")).to_contain_text("hello secure world")
    assert sockets and all("ticket=" in url and TOKEN not in url for url in sockets), sockets
    assert page.evaluate("window.sessionStorage.getItem('navi.token')") == TOKEN
    assert page.evaluate("window.localStorage.length") == 0

    page.reload()  # the tab keeps its login, and a fresh ticket opens the socket again
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator(".session-item")).to_have_count(1)
    assert len(sockets) >= 2 and len(set(u.split("ticket=")[1] for u in sockets)) == len(sockets)

    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("window.sessionStorage.getItem('navi.token')") is None
