"""The built-in chat page (``GET /``), used in a real headless Chromium.

The browser is Debian's ``chromium`` (``scripts/ensure-browser`` installs it),
driven by Playwright for Python (the ``test`` extra). Never ``playwright
install``. With no browser to be had these tests skip, saying what is missing.

The tests are plain sync functions: Playwright's sync API must not run inside
the asyncio loop that pytest-aiohttp gives async tests. They wait with
Playwright's auto-waiting ``expect``, never with sleeps.

``NAVI_UPDATE_SCREENSHOT=1`` makes the first test save its mid-turn picture
as ``docs/screenshot.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, Server, wait_for

CHROMIUM = os.environ.get("NAVI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000
SCREENSHOT = ROOT / "docs" / "screenshot.png"

# Installed before the page's own script on every load: it records what the
# page shows, so the tests can check the order and the text without timing.
RECORDER = """
(() => {
  const blocks = (window.__naviBlocks = []);   // block kinds as they appear; tool cards' states
  const texts = (window.__naviTexts = []);     // the running turn's text, each time it changes
  const ends = (window.__naviTurnEnds = []);   // the page's navi:turn-end events
  document.addEventListener("navi:turn-end", (e) => ends.push(e.detail));
  const kind = (el) => el.classList.contains("tool")
    ? `tool:${el.dataset.state}`
    : [...el.classList].filter((c) => c !== "block" && c !== "note").join(" ");
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") {
        if (r.target.classList.contains("tool")) blocks.push(kind(r.target));
        continue;
      }
      for (const n of r.addedNodes) if (n.nodeType === 1 && n.classList.contains("block")) blocks.push(kind(n));
    }
    const running = document.querySelector('.turn[data-status="running"]');
    if (running) {
      const text = [...running.querySelectorAll(".block.text")].map((b) => b.textContent).join("");
      if (text !== texts[texts.length - 1]) texts.push(text);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"] });
})();
"""


def _no_browser(reason: str) -> None:
    message = f"BROWSER TESTS SKIPPED — {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module, or a loud skip when none can be had."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("Playwright for Python is not installed: `pip install -e '.[test]'` "
                    "(or `pip install playwright`; do not run `playwright install`).")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _no_browser(f"no Chromium at {CHROMIUM}: run scripts/ensure-browser, or as root "
                    "`apt-get update && apt-get install -y chromium` (NAVI_CHROMIUM may name another one).")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except BaseException:
        pw.stop()
        raise
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page at laptop size; fails the test on any JavaScript error."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORDER)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def http(method: str, url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def session_id(pg: Any) -> str:
    match = re.search(r"#session=([A-Za-z0-9_-]+)$", pg.url)
    assert match, f"no session in the page's URL {pg.url}"
    return match.group(1)


def saved_replies(server: Server, sid: str) -> list[dict[str, Any]]:
    status, detail = http("GET", f"{server.url}/sessions/{sid}")
    assert status == 200, detail
    return [m for m in detail["messages"] if m["role"] == "assistant"]


def send(pg: Any, text: str) -> None:
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def answer_text(turn: Any) -> str:
    return "".join(turn.locator(".block.text").all_text_contents())


# ── the tests ───────────────────────────────────────────────────────────────


def test_page_and_its_files_are_served_uncached(make_server: Any) -> None:
    """GET / and /static/* answer with their content types and Cache-Control: no-cache, and nothing else is served."""
    server = make_server("echo")
    for path, ctype in [("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")]:
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            assert r.headers["Content-Type"].startswith(ctype), (path, r.headers["Content-Type"])
            assert r.headers["Cache-Control"] == "no-cache"
    for path in ["/static/missing.js", "/static/..%2Fstore.py", "/static/.hidden", "/static/"]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert err.value.code == 404, path


def test_turn_renders_thinking_tool_card_and_text_in_order(make_server: Any, page: Any, tmp_path: Path) -> None:
    """A demo turn shows its thinking, then a tool card going from running… to done, then the answer as it streams."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "25"})
    page.goto(server.url)
    page.get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"#session="))
    sid = session_id(page)
    expect(page.locator("#conn")).to_have_text("live")
    send(page, "what is 2 + 40?")

    turn = page.locator(".turn").last
    expect(turn.locator(".msg.user")).to_have_text("what is 2 + 40?")
    expect(turn.locator(".block.thinking")).to_contain_text("There are numbers in it")
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#stop")).to_be_visible()
    card = turn.locator(".block.tool")
    expect(card).to_have_attribute("data-state", "ok")
    expect(card.locator(".tool-name")).to_have_text("add_numbers")
    expect(card.locator(".tool-state")).to_have_text("done")
    expect(turn.locator(".block.text")).to_contain_text("add up to 42")

    assert turn.get_attribute("data-status") == "running", "the turn ended before the mid-turn picture"
    shot = tmp_path / "chat-page.png"
    page.screenshot(path=str(shot))
    if os.environ.get("NAVI_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    expect(turn).to_have_attribute("data-status", "done")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_hidden()
    seen = page.evaluate("window.__naviBlocks")
    order = [seen.index(kind) for kind in ("thinking", "tool:running", "tool:ok", "text")]
    assert order == sorted(order), f"blocks appeared as {seen}"
    [reply] = saved_replies(server, sid)
    assert reply["status"] == "done"
    assert answer_text(turn) == reply["content"]

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'.session-item[data-id="{sid}"] .delete').click()
    expect(page.locator(f'.session-item[data-id="{sid}"]')).to_have_count(0)
    assert http("GET", f"{server.url}/sessions/{sid}")[0] == 404


def test_stop_mid_turn_shows_the_turn_stopped(make_server: Any, page: Any) -> None:
    """Stop during a turn ends it as stopped with its partial text kept, and gives Send back."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "20"})
    page.goto(server.url)
    send(page, "what time is it?")  # no session open: sending creates one
    turn = page.locator(".turn").last
    expect(turn.locator(".block.text")).to_contain_text("You said")
    expect(page.locator("#send")).to_be_disabled()
    page.locator("#stop").click()

    expect(turn).to_have_attribute("data-status", "stopped")
    expect(turn.locator(".turn-foot")).to_contain_text("Stopped")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    [reply] = saved_replies(server, session_id(page))
    assert reply["status"] == "stopped"
    assert answer_text(turn) == reply["content"]
    assert "exactly once" not in reply["content"]


def test_reload_mid_turn_resumes_without_duplicated_text(make_server: Any, page: Any) -> None:
    """Reloading mid-turn replays the turn and follows it live, and the text rendered equals the saved answer."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "25"})
    page.goto(server.url)
    send(page, "what is 1 + 2 + 3?")
    expect(page.locator(".turn").last.locator(".block.text")).to_contain_text("add up to 6")
    sid = session_id(page)

    page.reload()
    turn = page.locator(".turn").last
    expect(turn).to_have_attribute("data-status", "running")
    expect(turn.locator(".msg.user")).to_have_text("what is 1 + 2 + 3?")
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_function("window.__naviTurnEnds.length > 0")

    [reply] = saved_replies(server, sid)
    end = page.evaluate("window.__naviTurnEnds[0]")
    assert end["status"] == "done"
    assert end["streamedText"] == reply["content"]
    assert end["renderedText"] == reply["content"]
    texts = page.evaluate("window.__naviTexts")
    assert texts and all(reply["content"].startswith(t) for t in texts), texts
    expect(page.locator(".turn")).to_have_count(1)  # after session_sync: the saved turn, once
    expect(page.locator(".turn").last).to_have_attribute("data-status", "done")
    assert answer_text(page.locator(".turn").last) == reply["content"]


def test_dropped_socket_reconnects_and_resumes_after_the_last_seq(make_server: Any, page: Any) -> None:
    """When the WebSocket drops mid-turn the page says reconnecting…, resumes with ?after= and loses or repeats no text."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "25"})
    sockets: list[tuple[Any, Any]] = []

    def through(ws: Any) -> None:
        sockets.append((ws, ws.connect_to_server()))

    page.route_web_socket(re.compile(r"/ws/sessions/"), through)
    page.goto(server.url)
    send(page, "what is 5 + 5?")
    turn = page.locator(".turn").last
    expect(turn.locator(".block.text")).to_contain_text("add up to 10")
    assert len(sockets) == 1 and "after=" not in sockets[0][0].url

    to_page, to_server = sockets[0]
    to_server.close()
    to_page.close(code=4000, reason="dropped by the test")
    expect(page.locator("#conn")).to_have_text("reconnecting…")
    expect(page.locator("#conn")).to_have_text("live")
    page.wait_for_function("window.__naviTurnEnds.length > 0")

    assert len(sockets) == 2 and re.search(r"after=\d+", sockets[1][0].url), [s[0].url for s in sockets]
    [reply] = saved_replies(server, session_id(page))
    end = page.evaluate("window.__naviTurnEnds[0]")
    assert (end["status"], end["streamedText"], end["renderedText"]) == ("done", reply["content"], reply["content"])
    texts = page.evaluate("window.__naviTexts")
    assert all(reply["content"].startswith(t) for t in texts), texts
    expect(page.locator(".turn")).to_have_count(1)


# Counts the page's history loads (GET /sessions/ID) as they are asked for, and records
# the type of every WebSocket frame once the page's own handler is done with it (a task
# queued while the frame is dispatched runs after its handlers).
WATCH_HISTORY = """
(() => {
  const loads = (window.__naviHistoryLoads = []);
  const fetch0 = window.fetch;
  window.fetch = function (input, init) {
    const url = new URL(String(input instanceof Request ? input.url : input), location.href);
    if (/^\\/sessions\\/[^/]+$/.test(url.pathname) && (!init || !init.method || init.method === "GET")) loads.push(url.pathname);
    return fetch0.apply(this, arguments);
  };
  const frames = (window.__naviFrames = []);
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (m) => {
        let type;
        try { type = JSON.parse(m.data).type; } catch { return; }
        setTimeout(() => frames.push(type), 0);
      });
    }
  };
})();
"""


def test_reconnect_after_the_turn_ended_shows_the_end_without_a_reload(make_server: Any, page: Any) -> None:
    """The socket drops mid-turn and the turn ends before the page is back: the resume replays
    the rest and the end, so the whole answer shows with no history load and no redraw."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "25"})
    page.add_init_script(WATCH_HISTORY)
    sockets: list[tuple[Any, Any]] = []
    held: dict[str, str] = {}

    def through(ws: Any) -> None:
        if sockets:  # the reconnect: let it through once the turn has ended without the page
            wait_for(lambda: [r for r in saved_replies(server, held["sid"]) if r["status"] == "done"], 15,
                     "the turn to end while the page is away")
        sockets.append((ws, ws.connect_to_server()))

    page.route_web_socket(re.compile(r"/ws/sessions/"), through)
    page.goto(server.url)
    send(page, "what is 5 + 5?")
    turn = page.locator(".turn").last
    expect(turn.locator(".block.text")).to_contain_text("add up to 10")
    held["sid"] = session_id(page)
    turn.evaluate("el => { el.__naviMark = true; }")
    loads = page.evaluate("window.__naviHistoryLoads.length")  # the first socket's session_sync is long done

    to_page, to_server = sockets[0]
    to_server.close()
    to_page.close(code=4000, reason="dropped by the test")
    page.wait_for_function("window.__naviFrames.filter((t) => t === 'session_sync').length === 2")

    assert len(sockets) == 2 and re.search(r"after=\d+", sockets[1][0].url), [s[0].url for s in sockets]
    [reply] = saved_replies(server, held["sid"])
    end = page.evaluate("window.__naviTurnEnds[0]")
    assert (end["status"], end["streamedText"], end["renderedText"]) == ("done", reply["content"], reply["content"])
    assert page.evaluate("window.__naviHistoryLoads.length") == loads, "no history reload after the resume"
    assert turn.evaluate("el => el.__naviMark === true"), "the turn on screen is the one that streamed"
    expect(page.locator(".turn")).to_have_count(1)
    expect(turn).to_have_attribute("data-status", "done")
    assert answer_text(turn) == reply["content"]
    expect(page.locator("#conn")).to_have_text("live")


def test_images_are_attached_within_the_limits(scripted_server: Server, page: Any) -> None:
    """A picked image goes with the message, and one over 5 MB of base64 is refused in the composer."""
    from playwright.sync_api import expect

    page.goto(scripted_server.url)
    big = {"name": "big.png", "mimeType": "image/png", "buffer": b"\0" * (4 * 1024 * 1024)}  # 5.3 MB as base64
    page.set_input_files("#file-input", files=[big])
    expect(page.locator("#composer-error")).to_contain_text("big.png is too large")
    expect(page.locator("#attachments img")).to_have_count(0)

    page.set_input_files("#file-input", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG_1PX}])
    expect(page.locator("#attachments img")).to_have_count(1)
    send(page, "look at this")
    turn = page.locator(".turn").last
    expect(turn.locator(".msg.user img.thumb")).to_have_count(1)
    expect(turn).to_have_attribute("data-status", "done")
    expect(page.locator("#attachments img")).to_have_count(0)
    status, detail = http("GET", f"{scripted_server.url}/sessions/{session_id(page)}")
    [user] = [m for m in detail["messages"] if m["role"] == "user"]
    assert (user["content"], user["images"]) == ("look at this", 1)


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cf00000301010018dd8db00000000049454e44ae426082"
)


def test_crash_reason_is_shown_and_the_session_stays_usable(scripted_server: Server, page: Any) -> None:
    """At phone width, a crashing agent's turn shows why it died, and the next message in the same chat succeeds."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 390, "height": 780})
    page.goto(scripted_server.url)
    send(page, "crash")
    first = page.locator(".turn").nth(0)
    expect(first).to_have_attribute("data-status", "failed")
    expect(first.locator(".block.error")).to_contain_text("agent process exited with code 3")
    expect(first.locator(".block.error")).to_contain_text("actor_died")
    expect(page.locator("#send")).to_be_enabled()
    sid = session_id(page)

    send(page, "hello again world")
    second = page.locator(".turn").nth(1)
    expect(second).to_have_attribute("data-status", "done")
    expect(second.locator(".block.text")).to_have_text("hello again world")
    assert session_id(page) == sid
    failed, done = saved_replies(scripted_server, sid)
    assert (failed["status"], failed["error_code"], done["status"]) == ("failed", "actor_died", "done")
    assert "exited with code 3" in failed["error"]
