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

from tests.agents import SAMPLE_MARKDOWN, markdown_tokens
from tests.conftest import ROOT, Server, wait_for

CHROMIUM = os.environ.get("NAVI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000
SCREENSHOT = ROOT / "docs" / "screenshot.png"
STATIC = ROOT / "navi_actor" / "static"

# Installed before the page's own script on every load: it records what the
# page shows, so the tests can check the order and the text without timing.
RECORDER = """
(() => {
  const blocks = (window.__naviBlocks = []);   // block kinds as they appear; tool cards' states
  const texts = (window.__naviTexts = []);     // the running turn's text, each time it changes
  const ends = (window.__naviTurnEnds = []);   // the page's navi:turn-end events
  document.addEventListener("navi:turn-end", (e) => {
    ends.push(e.detail);
    document.documentElement.dataset.naviTurnEnds = String(ends.length);  // for turn_ended()
  });
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


def turn_ended(page: Any) -> None:
    """Wait for the page's first navi:turn-end event.

    Not with wait_for_function: it evaluates a string in the page, which the
    page's Content-Security-Policy (no 'unsafe-eval') refuses.
    """
    from playwright.sync_api import expect

    expect(page.locator("html")).to_have_attribute("data-navi-turn-ends", re.compile(r"^[1-9]"))


def answer_text(turn: Any) -> str:
    return "".join(turn.locator(".block.text").all_text_contents())


# ── the tests ───────────────────────────────────────────────────────────────


def test_page_and_its_files_are_served_uncached(make_server: Any) -> None:
    """GET / and /static/* answer with their content types and Cache-Control: no-cache, and nothing else is served."""
    server = make_server("echo")
    modules = sorted(p.name for p in STATIC.glob("*.js"))
    assert {"app.js", "markdown.js", "session-view.js"} <= set(modules), modules
    for path, ctype in [("/", "text/html"), ("/static/style.css", "text/css"),
                        *((f"/static/{name}", "text/javascript") for name in modules)]:
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            assert r.headers["Content-Type"].startswith(ctype), (path, r.headers["Content-Type"])
            assert r.headers["Cache-Control"] == "no-cache"
            assert "'unsafe-" not in r.headers["Content-Security-Policy"], r.headers["Content-Security-Policy"]
    for path in ["/static/missing.js", "/static/..%2Fstore.py", "/static/.hidden", "/static/"]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert err.value.code == 404, path


IMPORT = re.compile(r"""^\s*(?:import|export)\b[^'"]*?\bfrom\s*["']\./([^"']+)["']|^\s*import\s*["']\./([^"']+)["']""", re.M)


def page_modules() -> set[str]:
    """Every module app.js imports, directly or not (read from the sources)."""
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = re.sub(r"/\*.*?\*/|//[^\n]*", "", (STATIC / name).read_text(), flags=re.S)
        todo += [a or b for a, b in IMPORT.findall(source)]
    return seen - {"app.js"}


def test_index_preloads_every_module_the_page_imports() -> None:
    """index.html names every module app.js imports (and only those) in a modulepreload link, so none waits for its importer."""
    html = (STATIC / "index.html").read_text()
    preloaded = re.findall(r'<link rel="modulepreload" href="static/([^"]+)">', html)
    assert len(preloaded) == len(set(preloaded)), preloaded
    assert set(preloaded) == page_modules(), (set(preloaded) ^ page_modules())
    assert '<script type="module" src="static/app.js"></script>' in html


def test_the_page_requests_all_its_modules_before_any_arrives(make_server: Any, page: Any) -> None:
    """The module graph is one round of requests: with every script's response held back, the page still asks for all of them."""
    server = make_server("echo")
    wanted = page_modules() | {"app.js"}
    held: list[Any] = []
    asked: list[str] = []

    def hold(route: Any) -> None:
        asked.append(route.request.url.rsplit("/", 1)[-1])
        held.append(route)
        if wanted <= set(asked):  # the last one: let them all through
            for r in held:
                r.continue_()
            held.clear()

    page.route("**/static/*.js", hold)
    try:
        page.goto(server.url, timeout=8_000)
    except Exception as exc:  # a module the page only finds in another's source never gets asked for
        raise AssertionError(f"asked for {sorted(asked)} only, of {sorted(wanted)}") from exc
    assert sorted(asked) == sorted(wanted), "each module once"
    from playwright.sync_api import expect

    expect(page.locator("#session-list-note")).to_have_text("No chats yet.")


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
    turn_ended(page)

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
    turn_ended(page)

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
    # Not wait_for_function: it evaluates a string in the page, which the page's CSP (no eval) refuses.
    wait_for(lambda: page.evaluate("window.__naviFrames.filter((t) => t === 'session_sync').length") == 2, 20,
             "the resumed socket's session_sync")

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


def test_images_sent_from_the_page_stay_when_the_history_is_redrawn(scripted_server: Server, page: Any) -> None:
    """The store keeps only an image's count: a redraw of the history after the turn (here: another
    client's turn starts, which the page does not know) still shows the page's own thumbnail."""
    import asyncio
    import concurrent.futures

    import aiohttp
    from playwright.sync_api import expect

    page.add_init_script(WATCH_HISTORY)
    page.goto(scripted_server.url)
    page.set_input_files("#file-input", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG_1PX}])
    send(page, "look at this")
    first = page.locator(".turn").first
    expect(first).to_have_attribute("data-status", "done")
    expect(first.locator(".msg.user img.thumb")).to_have_count(1)
    loads = page.evaluate("window.__naviHistoryLoads.length")

    async def other_client_turn() -> None:
        async with aiohttp.ClientSession() as http_client:
            url = f"{scripted_server.ws_url}/ws/sessions/{session_id(page)}"
            async with http_client.ws_connect(url, headers={"Origin": scripted_server.url}) as ws:
                await ws.send_json({"type": "message", "content": "from elsewhere"})
                async for msg in ws:
                    if json.loads(msg.data)["type"] in ("stream_end", "error"):
                        return

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's loop
        pool.submit(asyncio.run, other_client_turn()).result(timeout=30)
    expect(page.locator(".turn")).to_have_count(2)
    wait_for(lambda: page.evaluate("window.__naviHistoryLoads.length") > loads, 15, "the history redrawn")
    expect(page.locator(".turn").last).to_have_attribute("data-status", "done")
    first = page.locator(".turn").first
    expect(first.locator(".msg.user img.thumb")).to_have_count(1)
    expect(first.locator(".chip")).to_have_count(0)


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


def test_a_cut_off_answer_says_so_live_and_after_a_reload(scripted_server: Server, page: Any) -> None:
    """An answer that ended at its length limit (finish_reason length) shows "cut off" when it ends and when
    the history is loaded again; a complete answer shows nothing of the kind."""
    from playwright.sync_api import expect

    page.goto(scripted_server.url)
    send(page, "finish length the first half of")
    cut = page.locator(".turn").nth(0)
    expect(cut).to_have_attribute("data-status", "done")
    expect(cut.locator(".block.cutoff")).to_have_text("Cut off: the answer reached its length limit.")
    expect(cut.locator(".block.cutoff")).to_have_attribute("data-finish-reason", "length")
    send(page, "finish stop a whole answer")
    whole = page.locator(".turn").nth(1)
    expect(whole).to_have_attribute("data-status", "done")
    expect(whole.locator(".block.text")).to_have_text("a whole answer")
    expect(whole.locator(".block.cutoff")).to_have_count(0)

    page.reload()
    expect(page.locator(".turn")).to_have_count(2)
    expect(page.locator(".turn").nth(0).locator(".block.cutoff")).to_have_text(
        "Cut off: the answer reached its length limit.")
    expect(page.locator(".turn").nth(1).locator(".block.cutoff")).to_have_count(0)


def test_an_agents_own_event_types_draw_nothing(scripted_server: Server, page: Any) -> None:
    """Events of an agent's own types, even ones named like what every JavaScript object has (valueOf, __proto__), are skipped without an error."""
    from playwright.sync_api import expect

    page.goto(scripted_server.url)
    send(page, "oddtypes")
    turn = page.locator(".turn").last
    expect(turn).to_have_attribute("data-status", "done")
    expect(turn.locator(".block.text")).to_have_text("after the odd types")
    assert page.evaluate("window.__naviBlocks") == ["text"]  # the page fixture fails on any JavaScript error


# ── what agents write: Markdown ─────────────────────────────────────────────


def test_planning_line_goes_when_the_turn_ends(make_server: Any, page: Any) -> None:
    """The planning line ("Reading your message") shows while the agent works and is gone once the turn is done."""
    from playwright.sync_api import expect

    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "40"})
    page.goto(server.url)
    send(page, "what is 2 + 2?")
    turn = page.locator(".turn").last
    expect(turn.locator(".block.planning")).to_have_text("Reading your message")
    expect(turn).to_have_attribute("data-status", "done")
    expect(turn.locator(".block.planning")).to_have_count(0)
    expect(turn.locator(".block.text")).to_contain_text("add up to 4")


ALLOWED_TAGS = {"P", "H1", "H2", "H3", "H4", "H5", "H6", "EM", "STRONG", "DEL", "CODE", "PRE", "DIV", "BUTTON",
                "BLOCKQUOTE", "UL", "OL", "LI", "HR", "BR", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "A", "SPAN"}

#: In the page: every element the renderer made, its attributes, and where its links go.
AUDIT = """
(box) => {
  const out = { tags: [], handlers: [], hrefs: [] };
  for (const el of box.querySelectorAll("*")) {
    out.tags.push(el.tagName);
    for (const attr of el.attributes) if (/^on/i.test(attr.name) || attr.name === "style") out.handlers.push(attr.name);
    if (el.tagName === "A") out.hrefs.push([el.protocol, el.getAttribute("rel"), el.getAttribute("target")]);
  }
  return out;
}
"""


def audit(result: dict[str, Any]) -> None:
    assert set(result["tags"]) <= ALLOWED_TAGS, set(result["tags"]) - ALLOWED_TAGS
    assert result["handlers"] == []
    for protocol, rel, target in result["hrefs"]:
        assert protocol in ("http:", "https:", "mailto:"), protocol
        assert (rel, target) == ("noopener noreferrer", "_blank")


def test_markdown_answer_renders_safely_with_a_copy_button(scripted_server: Server, page: Any) -> None:
    """A streamed Markdown answer shows its headings, lists, quote, table and code; HTML stays text; bad links are no links; Copy copies the code."""
    from playwright.sync_api import expect

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=scripted_server.url)
    page.goto(scripted_server.url)
    send(page, "sample_md")
    turn = page.locator(".turn").last
    expect(turn).to_have_attribute("data-status", "done")
    text = turn.locator(".block.text")
    expect(text.locator("h1")).to_have_text("Sample")
    expect(text.locator("p em").first).to_have_text("emphasis")
    expect(text.locator("p strong").first).to_have_text("strong")
    expect(text.locator("p del")).to_have_text("gone")
    expect(text.locator("p > code")).to_have_text("inline code")
    expect(text.locator("p br")).to_have_count(1)
    expect(text.locator("ul > li")).to_have_count(2)
    expect(text.locator("ul > li ol > li")).to_have_text(["nested", "ordered"])
    expect(text.locator("blockquote strong")).to_have_text("text")
    expect(text.locator("table th")).to_have_text(["a", "b"])
    expect(text.locator("table td[data-align=right]")).to_have_text("2")
    expect(text.locator("hr")).to_have_count(1)
    safe = text.locator("a", has_text="safe")
    expect(safe).to_have_attribute("href", "https://example.com/a")
    expect(safe).to_have_attribute("rel", "noopener noreferrer")
    expect(safe).to_have_attribute("target", "_blank")
    expect(safe).to_have_attribute("title", "a title")
    expect(text.locator(".md-link-refused")).to_have_text(["bad", "worse", "data"])
    expect(text.locator("a")).to_have_count(2)  # safe, and the autolink
    expect(text).to_contain_text("<script>window.__pwned = 1</script>")
    expect(text).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    audit(text.evaluate(AUDIT))
    assert page.evaluate("window.__pwned") is None

    block = text.locator(".md-code")
    expect(block.locator(".md-code-head")).to_have_attribute("data-lang", "js")
    expect(block.locator("code")).to_have_text("const x = 1 < 2;\n")
    block.locator("button.md-copy").click()
    expect(block.locator("button.md-copy")).to_have_attribute("data-state", "copied")
    assert page.evaluate("navigator.clipboard.readText()") == "const x = 1 < 2;\n"
    [reply] = saved_replies(scripted_server, session_id(page))
    assert reply["content"] == SAMPLE_MARKDOWN


def test_renderer_in_the_browser_builds_only_safe_elements(scripted_server: Server, page: Any) -> None:
    """Every case and hostile input of tests/test_markdown.py, rendered by the page's module in Chromium: known elements only, no handlers, no script runs, only safe links."""
    from tests.test_markdown import CASES, HOSTILE

    page.goto(scripted_server.url)
    texts = [md for md, _ in CASES.values()] + list(HOSTILE.values())
    result = page.evaluate("""async (texts) => {
      const md = await import("./static/markdown.js");
      const box = document.createElement("div");
      document.body.append(box);
      for (const text of texts) md.renderMarkdown(box.appendChild(document.createElement("div")), text);
      await new Promise((resolve) => setTimeout(resolve, 50));  // an onerror would have fired by now
      return box.childElementCount;
    }""", texts)
    assert result == len(texts)
    audit(page.locator("body > div:last-child").evaluate(AUDIT))
    assert page.evaluate("window.__pwned") is None


# Installed before the page's script: times every animation-frame callback
# (where the page renders streamed text) with performance.now(), and holds the
# top-level nodes of the answer's finished blocks to check they stay.
FRAME_TIMER = """
(() => {
  const frames = (window.__naviFrames = []);
  const held = (window.__naviHeld = []);
  // the answer's top-level blocks: finished ones sit in chunks (div.md-chunk)
  const blocksOf = (el) => [...el.children].flatMap((c) => (c.classList.contains("md-chunk") ? [...c.children] : [c]));
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (callback) => raf((ts) => {
    const t0 = performance.now();
    callback(ts);
    const ms = performance.now() - t0;
    const live = window.naviApp && window.naviApp.view && window.naviApp.view.live;
    const text = live && live.blocks.find((b) => b.kind === "text");
    if (!text) return;
    frames.push([ms, text.raw.length]);
    const kids = blocksOf(text.el);
    for (let i = held.length; i < kids.length - 3; i++) held.push([kids[i], kids[i].textContent]);
    window.__naviAnswer = text.el;
  });
  document.addEventListener("navi:turn-end", () => {
    const kids = blocksOf(window.__naviAnswer);
    window.__naviKept = held.every(([node, text], i) => node.isConnected && kids[i] === node && node.textContent === text);
  });
})();
"""


def test_long_markdown_answer_streams_in_linear_time(scripted_server: Server, page: Any) -> None:
    """A 20,000-token Markdown answer: each frame re-renders only the open blocks, finished blocks keep their nodes, the end DOM is one pass's."""
    from playwright.sync_api import expect

    tokens = markdown_tokens(20_000)
    text = "".join(tokens)
    page.add_init_script(FRAME_TIMER)
    page.goto(scripted_server.url)
    page.evaluate("async () => Object.assign((await import('./static/markdown.js')).stats, {maxReparsed: 0, nodesBuilt: 0})")
    send(page, "markdown 20000 4000")
    turn = page.locator(".turn").last
    expect(turn).to_have_attribute("data-status", "done", timeout=120_000)

    [reply] = saved_replies(scripted_server, session_id(page))
    assert reply["content"] == text
    answer = turn.locator(".block.text")
    streamed = page.evaluate("async () => ({...(await import('./static/markdown.js')).stats})")
    same = answer.evaluate("""async (el, content) => {
      const md = await import("./static/markdown.js");
      const one = document.createElement("div");
      const before = md.stats.nodesBuilt;
      md.renderMarkdown(one, content);
      const blocks = el.querySelectorAll(":scope > *:not(.md-chunk), :scope > .md-chunk > *").length;
      return [one.innerHTML === el.innerHTML, blocks, md.stats.nodesBuilt - before];
    }""", text)
    sections = text.count("## Part ")
    assert same[0], "the streamed DOM differs from one rendering of the whole answer"
    expect(answer.locator("h2")).to_have_count(sections)
    expect(answer.locator(".md-code")).to_have_count(text.count("```python"))
    expect(answer.locator("table")).to_have_count(text.count("| n | square |"))
    expect(answer.locator("h2").last).to_have_text(f"Part {sections - 1}")

    held = page.evaluate("window.__naviHeld.length")
    assert held > same[1] * 0.9, (held, same[1])
    assert page.evaluate("window.__naviKept") is True, "a finished block's node was replaced while the answer streamed"
    # The work of a frame is bounded by the open blocks (a few hundred characters), not the answer (100 kB).
    assert streamed["maxReparsed"] < 2_000, streamed
    assert streamed["nodesBuilt"] < 2 * same[2], (streamed, same[2])  # about once each, as one pass builds them

    frames = page.evaluate("window.__naviFrames")
    first_end = len("".join(tokens[:2_000]))
    last_start = len("".join(tokens[:18_000]))
    first = [ms for ms, chars in frames if chars <= first_end]
    last = [ms for (ms, chars), (_, before) in zip(frames[1:], frames) if before >= last_start]
    print(f"\nstreamed: {len(frames)} frames, rendering {sum(ms for ms, _ in frames):.0f} ms in all; first 2,000 tokens "
          f"{sum(first):.1f} ms in {len(first)} frames, last 2,000 tokens {sum(last):.1f} ms in {len(last)} frames")

    # The server delivers in bursts on a busy machine, so the page's frames
    # cover uneven amounts of text. For time, the page's renderer replays the
    # same answer in even steps of 100 characters, one a frame, each followed by
    # the layout that scrolling to the bottom forces: its first 2,000 tokens in
    # one turn, its last 2,000 in another that already holds the rest.
    timing = page.evaluate(REPLAY, [text, first_end, last_start])
    print(f"replayed: {timing['n']} updates of 100 characters in the first and last 2,000 tokens: "
          f"{timing['sumFirst']:.1f} ms and {timing['sumLast']:.1f} ms, medians {timing['first']:.3f} and {timing['last']:.3f} ms")
    # Linear: an update late in the answer costs about what one early did (re-rendering it all would cost ~20x).
    assert timing["last"] < 3 * timing["first"] + 0.5, timing
    assert timing["sumLast"] < 3 * timing["sumFirst"] + 100, timing


REPLAY = """async ([content, firstEnd, lastStart]) => {
  const md = await import("./static/markdown.js");
  const thread = document.getElementById("thread");
  const answer = () => {  // a turn's answer, styled like the live one
    const box = document.createElement("div");
    box.className = "block text";
    const turn = document.createElement("article");
    turn.className = "turn";
    turn.append(document.createElement("div"));
    turn.firstChild.className = "msg assistant";
    turn.firstChild.append(document.createElement("div"));
    turn.firstChild.firstChild.className = "blocks";
    turn.firstChild.firstChild.append(box);
    thread.append(turn);
    return new md.MarkdownView(box);
  };
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const step = async (view, upto) => {  // one update a frame, as the page renders
    await frame();
    const t0 = performance.now();
    view.update(content.slice(0, upto));
    thread.scrollTop = thread.scrollHeight;
    return performance.now() - t0;
  };
  const early = answer();
  const late = answer();
  late.update(content.slice(0, lastStart));
  await frame();
  await frame();
  // Early and late steps take turns, so that both see the same load on a busy machine.
  const first = [];
  const last = [];
  for (let i = 100; i <= firstEnd || lastStart + i - 100 < content.length; i += 100) {
    if (i <= firstEnd) first.push(await step(early, i));
    if (lastStart + i - 100 < content.length) last.push(await step(late, Math.min(lastStart + i, content.length)));
  }
  for (const view of [early, late]) view.container.closest(".turn").remove();
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  return { first: median(first), last: median(last), sumFirst: sum(first), sumLast: sum(last), n: [first.length, last.length] };
}"""
