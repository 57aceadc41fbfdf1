/* navi-actor chat page. Plain JavaScript ES modules, no build step, no dependencies.
 * index.html preloads every module (<link rel="modulepreload">), so the browser
 * fetches them all at once instead of one import level at a time.
 *
 * Where things are:
 *   app.js           the page: routing (#session=ID), the thread, what the
 *                    session view may ask of the page (this file)
 *   api.js           every HTTP/WebSocket URL and header; the token and the ticket
 *   connection.js    a session's WebSocket: reconnect with backoff, resume with ?after=
 *   session-view.js  one open session: history, the live turn, seq bookkeeping, the outbox, the queue
 *   events.js        every server event type and what handles it: add new types there
 *   turn-view.js     one turn on screen: thinking, tool cards, text, notes
 *   turn-end.js      how a turn's end shows: notices and the footer
 *   history.js       saved messages as turns
 *   composer.js      the message box, Send and Stop; Queue and "Stop and send" while a turn runs
 *   uploads.js       attached images
 *   sidebar.js       the list of chats and the drawer
 *   login.js         the login, when the server has authentication on
 *   dom.js           h() and text helpers: agent text is never HTML
 *   markdown*.js     the Markdown renderer (DOM nodes only)
 *
 * The protocol is described in docs/protocol.md.
 */
import { Api } from "./api.js";
import { Composer } from "./composer.js";
import { byId, h, renderQueue } from "./dom.js";
import { Login } from "./login.js";
import { SessionView } from "./session-view.js";
import { Sidebar } from "./sidebar.js";

const SILENT_TURN_MS = 75000; // a running turn with no frame for this long: the socket is dead

const CONN_TEXT = {
  idle: "",
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  gone: "deleted",
};

class App {
  constructor() {
    this.api = new Api(new URL(".", document.baseURI));
    this.thread = byId("thread");
    this.emptyEl = byId("empty");
    this.title = byId("session-title");
    this.conn = byId("conn");
    this.view = null; // the open SessionView
    this.atBottom = true;
    this.booted = false; // GET /me answered: the session list and routes may load
    this.sidebar = new Sidebar(this);
    this.composer = new Composer(this);
    this.login = new Login(this);

    this.emptyEl.remove(); // shown by showEmpty()
    renderQueue.onFlush = () => this.followBottom();
    byId("new-session").addEventListener("click", () => this.newSession());
    byId("new-session-top").addEventListener("click", () => this.newSession());
    this.thread.addEventListener("scroll", () => {
      const t = this.thread;
      this.atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
    });
    window.addEventListener("hashchange", () => this.route());
    window.addEventListener("online", () => this.view && this.view.conn.retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.view) this.view.conn.retryNow();
    });
    setInterval(() => this.watchdog(), 5000);
    this.setControls(this.composer.controls);
    this.login.boot();
  }

  // — routing and sessions —
  route() {
    if (!this.booted) return; // boot() routes once it knows whether a login is needed
    const match = /^#session=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
    const id = match ? match[1] : null;
    if (!id) return this.closeSession(false);
    if (this.view && this.view.id === id) return;
    if (this.view) this.view.dispose();
    this.thread.replaceChildren();
    this.setTitle("…");
    this.view = new SessionView(this, id);
    this.view.start();
    this.sidebar.markActive();
    this.sidebar.toggleDrawer(false);
  }

  open(id) {
    location.hash = `session=${id}`; // route() follows
  }

  closeSession(clearHash = true) {
    if (this.view) this.view.dispose();
    this.view = null;
    if (clearHash && location.hash) history.replaceState(null, "", location.pathname + location.search);
    this.thread.replaceChildren();
    this.showEmpty(true);
    this.setTitle("navi-actor");
    this.setConnState("idle");
    this.setControls({ running: false, stopping: false, pending: false });
    this.sidebar.markActive();
  }

  async newSession() {
    try {
      const session = await this.api.createSession();
      this.open(session.id);
      this.refreshSessions();
      this.composer.focus();
      return session.id;
    } catch (err) {
      this.flash(`Could not create a chat: ${err.message}`);
      return null;
    }
  }

  // — what a SessionView asks of the page —
  refreshSessions() { this.sidebar.refresh(); }
  setControls(controls) { this.composer.setControls(controls); }
  restoreDraft(message) { this.composer.restoreDraft(message); }

  setConnState(state) {
    this.conn.dataset.state = state;
    this.conn.textContent = CONN_TEXT[state] ?? state;
  }

  setTitle(text) {
    this.title.textContent = text;
    document.title = text && text !== "navi-actor" ? `${text} · navi-actor` : "navi-actor";
  }

  showEmpty(show) {
    if (show && !this.emptyEl.isConnected) this.thread.append(this.emptyEl);
    if (!show) this.emptyEl.remove();
  }

  /** A short-lived error notice at the end of the conversation. */
  flash(text) {
    const el = h("div", { class: "flash", role: "alert", text });
    this.thread.append(el);
    this.followBottom(true);
    setTimeout(() => el.remove(), 8000);
  }

  followBottom(force = false) {
    if (force || this.atBottom) {
      this.thread.scrollTop = this.thread.scrollHeight;
      this.atBottom = true;
    }
  }

  /** A running turn sends at least a heartbeat now and then; silence means a dead socket. */
  watchdog() {
    const view = this.view;
    if (view && view.live && view.conn.isOpen && Date.now() - view.conn.lastFrameAt > SILENT_TURN_MS) {
      view.conn.kick();
    }
  }
}

window.naviApp = new App();
