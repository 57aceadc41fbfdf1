/* navi-actor chat page. Plain JavaScript, no build step, no dependencies.
 *
 * Reading order:
 *   Api          the one place that builds HTTP/WebSocket URLs and headers
 *   DOM helpers  every piece of agent text goes through textContent / text nodes,
 *                never innerHTML: agent output is untrusted. Answers are
 *                Markdown, rendered by markdown.js (DOM nodes only, too)
 *   TurnView     one turn: the user's message and everything the agent streamed
 *   Connection   a session's WebSocket: reconnect with backoff, resume with ?after=
 *   SessionView  one open session: history, the live turn, seq bookkeeping
 *   App          sidebar, composer, routing (#session=ID)
 *
 * The protocol is described in docs/protocol.md.
 */
import { MarkdownView } from "./markdown.js";

(() => {
  const MAX_IMAGES = 10; // per message
  const MAX_IMAGE_BASE64 = 5 * 1024 * 1024; // per image, base64 text after the data: prefix
  const RECONNECT_FIRST_MS = 1000;
  const RECONNECT_MAX_MS = 15000;
  const SILENT_TURN_MS = 75000; // a running turn with no frame for this long: the socket is dead

  // ── Api ─────────────────────────────────────────────────────────────────

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  const TOKEN_KEY = "navi.token";

  /** Builds every URL and header the page uses, and holds the login.
   *
   *  With authentication on, the token (kept in sessionStorage: this tab
   *  only, gone when it closes) goes in the Authorization header of every
   *  fetch. A WebSocket cannot carry that header, so each connect first trades
   *  the token for a single-use ticket (POST /ws-ticket, valid for seconds)
   *  and puts only the ticket in the URL. `onUnauthorized` is called when the
   *  server refuses the token. */
  class Api {
    constructor(base) {
      this.base = new URL(base);
      this.token = null;
      this.authOn = false; // learnt from GET /me
      this.onUnauthorized = null;
      try {
        this.token = window.sessionStorage.getItem(TOKEN_KEY);
      } catch {
        // storage disabled: the login lasts as long as the page
      }
    }

    setToken(token) {
      this.token = token || null;
      try {
        if (this.token) window.sessionStorage.setItem(TOKEN_KEY, this.token);
        else window.sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        // storage disabled
      }
    }

    url(path, params) {
      const url = new URL(path.replace(/^\//, ""), this.base);
      for (const [key, value] of Object.entries(params || {})) {
        if (value !== null && value !== undefined) url.searchParams.set(key, String(value));
      }
      return url;
    }

    headers(extra) {
      const headers = { Accept: "application/json", ...extra };
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      return headers;
    }

    socketUrl(path, params) {
      // Browsers cannot set headers on a WebSocket: a single-use ticket travels
      // here when authentication is on, never the token.
      const url = this.url(path, params);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      return url.href;
    }

    async request(method, path, { body, params } = {}) {
      const init = {
        method,
        cache: "no-store",
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      };
      if (body !== undefined) init.body = JSON.stringify(body);
      let response;
      try {
        response = await fetch(this.url(path, params), init);
      } catch (err) {
        throw new ApiError(`Cannot reach the server (${err.message}).`, "network", 0);
      }
      let data = null;
      try {
        data = await response.json();
      } catch {
        // not JSON: described below by the status
      }
      if (!response.ok) {
        const message = (data && data.error) || `The server answered ${response.status}.`;
        if (response.status === 401 && this.onUnauthorized && path !== "/me") this.onUnauthorized(message);
        throw new ApiError(message, (data && data.code) || "http_error", response.status);
      }
      return data;
    }

    /** {auth, user, role}; learns whether a login is needed (401: the token is missing or wrong). */
    async whoami() {
      const me = await this.request("GET", "/me");
      this.authOn = !!(me && me.auth);
      return me;
    }

    listSessions() { return this.request("GET", "/sessions", { params: { limit: 100 } }); }
    createSession() { return this.request("POST", "/sessions", { body: {} }); }
    getSession(id) { return this.request("GET", `/sessions/${encodeURIComponent(id)}`); }
    deleteSession(id) { return this.request("DELETE", `/sessions/${encodeURIComponent(id)}`); }
    stop(id) { return this.request("POST", `/sessions/${encodeURIComponent(id)}/stop`); }
    /** A WebSocket for a session (a promise): with a fresh ticket when authentication is on. */
    async socket(id, after) {
      const params = { after };
      if (this.authOn) params.ticket = (await this.request("POST", "/ws-ticket")).ticket;
      return new WebSocket(this.socketUrl(`/ws/sessions/${encodeURIComponent(id)}`, params));
    }
  }

  // ── DOM helpers ─────────────────────────────────────────────────────────

  /** Create an element. Children that are strings become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) el.append(child);
    }
    return el;
  }

  function asText(value) {
    if (typeof value === "string") return value;
    try {
      return JSON.stringify(value, null, 2);
    } catch {
      return String(value);
    }
  }

  /** A tool result stored in the history is a string; pretty-print it when it is JSON. */
  function storedResult(text) {
    try {
      return asText(JSON.parse(text));
    } catch {
      return text;
    }
  }

  function oneLine(value, max = 90) {
    let text = typeof value === "string" ? value : JSON.stringify(value) ?? "";
    text = text.replace(/\s+/g, " ").trim();
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  function relativeTime(epochSeconds) {
    if (!epochSeconds) return "";
    const seconds = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return new Date(epochSeconds * 1000).toLocaleDateString();
  }

  /** Text blocks re-render at most once per frame while deltas stream in. */
  const renderQueue = {
    dirty: new Set(),
    scheduled: false,
    onFlush: () => {},
    mark(block) {
      this.dirty.add(block);
      if (!this.scheduled) {
        this.scheduled = true;
        requestAnimationFrame(() => this.flush());
      }
    },
    flush() {
      this.scheduled = false;
      const blocks = [...this.dirty];
      this.dirty.clear();
      for (const block of blocks) block.render();
      if (blocks.length) this.onFlush();
    },
  };

  // ── TurnView ────────────────────────────────────────────────────────────

  const STOP_STEPS = {
    event: "the agent stopped when asked",
    cancel: "the agent was cancelled",
    sigterm: "the agent process was terminated",
    sigkill: "the agent process was killed",
  };

  const STATUS_LABELS = {
    done: "Done",
    stopped: "Stopped",
    failed: "Failed",
    interrupted: "Interrupted",
    rejected: "Not sent",
  };

  /** One turn: the user's message, then the agent's blocks in arrival order. */
  class TurnView {
    constructor(runId) {
      this.runId = runId || null;
      this.status = "running";
      this.blocks = []; // in order; text blocks are {kind: "text", raw, el, render()}
      this.userEl = null;
      this.el = h("article", { class: "turn" });
      this.blocksEl = h("div", { class: "blocks" });
      this.footEl = h("div", { class: "turn-foot" });
      this.el.append(h("div", { class: "msg assistant" }, this.blocksEl, this.footEl));
      this.setRunId(runId);
      this.setStatus("running");
    }

    setRunId(runId) {
      this.runId = runId || null;
      if (runId) this.el.dataset.runId = runId;
    }

    setStatus(status, footer) {
      this.status = status;
      this.el.dataset.status = status;
      if (footer !== undefined) this.footEl.replaceChildren(...footer);
      else if (status === "running") this.setFoot("Working…", true);
    }

    setFoot(text, spinning) {
      this.footEl.replaceChildren(spinning ? h("span", { class: "spinner", "aria-hidden": "true" }) : "", text);
    }

    get last() {
      return this.blocks[this.blocks.length - 1] || null;
    }

    /** The user's side: `images` are data: URLs (just sent) or a count (history). */
    setUser({ content, images, imageCount, files }) {
      const parts = [h("div", { class: "user-text", text: content })];
      const thumbs = (images || []).map((img) => h("img", { class: "thumb", src: img.dataUrl, alt: img.name }));
      const chips = [];
      if (!thumbs.length && imageCount) chips.push(`${imageCount} image${imageCount === 1 ? "" : "s"} attached`);
      for (const f of files || []) chips.push(`file: ${f.name}`);
      if (thumbs.length) parts.push(h("div", { class: "thumbs" }, ...thumbs));
      if (chips.length) parts.push(h("div", { class: "chips" }, ...chips.map((c) => h("span", { class: "chip", text: c }))));
      const el = h("div", { class: "msg user" }, ...parts);
      if (this.userEl) this.userEl.replaceWith(el);
      else this.el.prepend(el);
      this.userEl = el;
    }

    addBlock(kind, el, extra) {
      const block = { kind, el, ...extra };
      this.blocks.push(block);
      this.blocksEl.append(el);
      return block;
    }

    appendText(delta) {
      let block = this.last;
      if (!block || block.kind !== "text") {
        const el = h("div", { class: "block text" });
        block = this.addBlock("text", el, {
          raw: "",
          view: new MarkdownView(el),
          render() { this.view.update(this.raw); }, // only the unfinished blocks' DOM changes
        });
      }
      block.raw += delta;
      renderQueue.mark(block);
    }

    /** The text the agent streamed, as received. */
    get streamedText() {
      return this.blocks.filter((b) => b.kind === "text").map((b) => b.raw).join("");
    }

    /** The text as the page shows it. */
    get renderedText() {
      return this.blocks.filter((b) => b.kind === "text").map((b) => b.el.textContent).join("");
    }

    thinkingBlock({ open, ended, label }) {
      const body = h("div", { class: "thinking-body" });
      const summary = h("summary", { text: label || (ended ? "Thoughts" : "Thinking…") });
      const details = h("details", { class: "block thinking" }, summary, body);
      details.open = open;
      const block = this.addBlock("thinking", details, {
        raw: "",
        ended,
        summary,
        userToggled: false,
        render() { body.textContent = this.raw; },
      });
      summary.addEventListener("click", () => { block.userToggled = true; });
      return block;
    }

    appendThinking(delta) {
      let block = this.last;
      if (!block || block.kind !== "thinking" || block.ended) block = this.thinkingBlock({ open: true, ended: false });
      block.raw += delta;
      renderQueue.mark(block);
    }

    endThinking() {
      const block = [...this.blocks].reverse().find((b) => b.kind === "thinking" && !b.ended);
      if (block) {
        block.ended = true;
        block.summary.textContent = "Thoughts";
      }
    }

    wholeThinking(text, { isSubagent = false, open = false } = {}) {
      const block = this.thinkingBlock({ open, ended: true, label: isSubagent ? "Subagent thoughts" : "Thoughts" });
      block.raw = text;
      block.render();
    }

    toolCard({ tool, args, isSubagent }) {
      const state = h("span", { class: "tool-state", text: "running…" });
      const summary = h(
        "summary",
        {},
        h("span", { class: "tool-name", text: tool || "tool" }),
        isSubagent ? h("span", { class: "badge", text: "subagent" }) : "",
        h("span", { class: "tool-args", text: oneLine(args ?? {}) }),
        state,
      );
      const body = h("div", { class: "tool-body" }, h("div", { class: "label", text: "Arguments" }), h("pre", { text: asText(args ?? {}) }));
      const el = h("div", { class: "block tool", "data-state": "running" }, h("details", {}, summary, body));
      return this.addBlock("tool", el, { tool, state, body, done: false });
    }

    toolStarted(ev) {
      this.toolCard({ tool: ev.tool, args: ev.args, isSubagent: ev.is_subagent });
    }

    /** `tool_call`: completes the oldest running card of that tool, or adds a finished card. */
    toolFinished({ tool, args, result, success, isSubagent, metadata, resultText }) {
      let card = this.blocks.find((b) => b.kind === "tool" && !b.done && b.tool === tool);
      if (!card) card = this.toolCard({ tool, args, isSubagent });
      card.done = true;
      const ok = success !== false;
      card.el.dataset.state = ok ? "ok" : "failed";
      card.state.textContent = ok ? "done" : "failed";
      const text = resultText !== undefined ? storedResult(resultText) : asText(result);
      card.body.append(h("div", { class: "label", text: "Result" }), h("pre", { text }));
      if (metadata) card.body.append(h("div", { class: "label", text: "Metadata" }), h("pre", { text: asText(metadata) }));
      const preview = resultText !== undefined ? resultText : result;
      card.state.before(h("span", { class: "tool-result", text: `→ ${oneLine(preview ?? "", 60)}` }));
    }

    note(kind, ...children) {
      return this.addBlock(kind, h("div", { class: `block note ${kind}` }, ...children));
    }

    planningStatus(ev) {
      const text = [ev.is_subagent ? "Subagent" : "", ev.label || ev.phase].filter(Boolean).join(": ");
      const last = this.last;
      if (last && last.kind === "planning") last.el.textContent = text; // progress of the same phase
      else this.note("planning", text);
    }

    planReady(ev) {
      const plan = ev.plan;
      const body = Array.isArray(plan)
        ? h("ol", {}, ...plan.map((step) => h("li", { text: typeof step === "string" ? step : oneLine(step, 200) })))
        : h("pre", { text: asText(plan) });
      this.note("plan", h("div", { class: "label", text: ev.is_subagent ? "Subagent plan" : "Plan" }), body);
    }

    contextCompressed(ev) {
      const text = `Context compressed: ${ev.messages_before} → ${ev.messages_after} messages.`;
      this.note("compressed", text, ev.summary ? h("div", { class: "muted", text: ev.summary }) : "");
    }

    error(message, code) {
      this.addBlock("error", h("div", { class: "block error", role: "alert" },
        h("strong", { text: "Error: " }), message || "unknown error",
        code ? h("span", { class: "code-name", text: ` (${code})` }) : ""));
    }

    /** End the turn. `info`: {error, code, stopStep, reason, stats, content}. */
    finish(status, info = {}) {
      renderQueue.flush();
      if (typeof info.content === "string" && info.content !== this.streamedText && status === "done") {
        // the agent's StreamEnd.full_content replaces the streamed text
        for (const b of this.blocks.filter((x) => x.kind === "text")) b.el.remove();
        this.blocks = this.blocks.filter((x) => x.kind !== "text");
        this.appendText(info.content);
        renderQueue.flush();
      }
      // The planning line says what the agent is doing now: an ended turn does nothing.
      for (const b of this.blocks.filter((x) => x.kind === "planning")) b.el.remove();
      this.blocks = this.blocks.filter((x) => x.kind !== "planning");
      for (const b of this.blocks) {
        if (b.kind === "thinking") {
          if (!b.ended) { b.ended = true; b.summary.textContent = "Thoughts"; }
          if (!b.userToggled) b.el.open = false;
        }
        if (b.kind === "tool" && !b.done) {
          b.el.dataset.state = "unfinished";
          b.state.textContent = "no result";
        }
      }
      if ((status === "failed" || status === "interrupted" || status === "rejected") && info.error) this.error(info.error, info.code);
      const parts = [h("span", { class: "status-label", text: STATUS_LABELS[status] || status })];
      if (status === "done" && info.stats) {
        const s = info.stats;
        const bits = [];
        if (typeof s.elapsed_seconds === "number") bits.push(`${s.elapsed_seconds.toFixed(1)} s`);
        if (typeof s.token_count === "number") bits.push(`${s.token_count} tokens`);
        if (s.tool_call_count) bits.push(`${s.tool_call_count} tool call${s.tool_call_count === 1 ? "" : "s"}`);
        if (bits.length) parts.push(h("span", { class: "muted", text: ` · ${bits.join(" · ")}` }));
      }
      if (status === "stopped") {
        const why = info.message || info.error || (info.stopStep && STOP_STEPS[info.stopStep]);
        if (why) parts.push(h("span", { class: "muted", text: ` · ${why}` }));
        if (info.stopStep) this.el.dataset.stopStep = info.stopStep;
      }
      this.setStatus(status, parts);
    }

    /** Build a finished (or still running) turn from the saved messages of one run. */
    static fromHistory(group) {
      const turn = new TurnView(group.runId);
      if (group.user) {
        turn.setUser({ content: group.user.content, imageCount: group.user.images, files: group.user.files });
      }
      const reply = group.assistant;
      if (reply && reply.thinking) turn.wholeThinking(reply.thinking);
      for (const m of group.tools) {
        turn.toolFinished({ tool: m.tool, args: m.args, success: m.success, isSubagent: m.is_subagent, resultText: m.content });
      }
      if (reply) {
        if (reply.content) turn.appendText(reply.content);
        turn.finish(reply.status || "done", { error: reply.error, code: reply.error_code, stats: reply.stats });
      }
      return turn;
    }
  }

  /** Messages (user, tool…, assistant) grouped by run, in order. */
  function groupByRun(messages) {
    const groups = [];
    let current = null;
    for (const m of messages) {
      if (m.role === "user" || !current || (m.run_id && m.run_id !== current.runId)) {
        current = { runId: m.run_id || null, user: null, tools: [], assistant: null };
        groups.push(current);
      }
      if (m.role === "user") current.user = m;
      else if (m.role === "tool") current.tools.push(m);
      else if (m.role === "assistant") current.assistant = m;
    }
    return groups;
  }

  // ── Connection ──────────────────────────────────────────────────────────

  /** A session's WebSocket. Reconnects with backoff; each attempt asks the
   *  handlers where to resume (`resumeAfter()` → the last rendered seq). */
  class Connection {
    constructor(api, sessionId, handlers) {
      this.api = api;
      this.sessionId = sessionId;
      this.handlers = handlers;
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.closed = false;
      this.connecting = false; // waiting for a ticket before the socket exists
      this.lastFrameAt = Date.now();
    }

    async connect() {
      if (this.closed || this.connecting) return;
      clearTimeout(this.timer);
      this.timer = null;
      this.connecting = true;
      let ws;
      try {
        ws = await this.api.socket(this.sessionId, this.handlers.resumeAfter());
      } catch (err) {
        this.connecting = false;
        if (err.status !== 401) this.retry(); // 401: the login takes over
        return;
      }
      this.connecting = false;
      if (this.closed) {
        ws.close(1000);
        return;
      }
      this.ws = ws;
      this.handlers.state(this.attempt ? "reconnecting" : "connecting");
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.attempt = 0;
        this.lastFrameAt = Date.now();
        this.handlers.state("open");
      };
      ws.onmessage = (msg) => {
        if (ws !== this.ws) return;
        this.lastFrameAt = Date.now();
        let event;
        try {
          event = JSON.parse(msg.data);
        } catch {
          return;
        }
        if (event && typeof event.type === "string") this.handlers.event(event);
      };
      ws.onclose = (close) => {
        if (ws !== this.ws) return;
        this.ws = null;
        if (this.closed) return;
        this.handlers.dropped(close);
        if (close.code === 4004) {
          this.closed = true;
          this.handlers.state("gone");
          this.handlers.gone();
          return;
        }
        this.retry(close.code === 4008 ? 0 : undefined); // 4008: too slow; resume at once
      };
      ws.onerror = () => {}; // onclose follows
    }

    retry(delay) {
      const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** this.attempt);
      this.attempt += 1;
      const wait = delay ?? base * (0.8 + Math.random() * 0.4);
      this.handlers.state("reconnecting");
      this.timer = setTimeout(() => this.connect(), wait);
    }

    /** Skip the rest of the backoff (the network is back, the tab is visible). */
    retryNow() {
      if (!this.closed && !this.ws && !this.connecting && this.timer) this.connect();
    }

    /** Drop a socket that went silent and start over. */
    kick() {
      const ws = this.ws;
      if (!ws || this.closed) return;
      this.ws = null;
      try { ws.close(); } catch { /* already closing */ }
      this.handlers.dropped({ code: 0 });
      this.retry(0);
    }

    get isOpen() {
      return !!this.ws && this.ws.readyState === WebSocket.OPEN;
    }

    send(obj) {
      if (!this.isOpen) return false;
      this.ws.send(JSON.stringify(obj));
      return true;
    }

    close() {
      this.closed = true;
      clearTimeout(this.timer);
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000);
    }
  }

  // ── SessionView ─────────────────────────────────────────────────────────

  /** One open session: its history, the live turn and the socket. */
  class SessionView {
    constructor(app, id) {
      this.app = app;
      this.id = id;
      this.thread = app.thread;
      this.lastSeq = null; // the highest seq rendered; resumes go from there
      this.live = null; // TurnView of the turn running on the server
      this.pending = null; // {turn, message, sent}: our message, before its stream_start
      this.lost = null; // the pending message when a resync must tell whether it arrived
      this.ready = false; // the socket said where the session stands
      this.stopping = false;
      this.historyGen = 0;
      this.disposed = false;
      this.conn = new Connection(app.api, id, {
        resumeAfter: () => this.lastSeq,
        state: (state) => this.app.setConnState(state),
        event: (ev) => this.onEvent(ev),
        dropped: () => { this.ready = false; this.update(); },
        gone: () => this.onGone(),
      });
    }

    start() {
      this.loadHistory();
      this.conn.connect();
    }

    dispose() {
      this.disposed = true;
      this.conn.close();
    }

    // — events —
    onEvent(ev) {
      if (this.disposed || ev.type === "heartbeat") return;
      if (typeof ev.seq === "number") {
        // A resume sends stream_start again, and a replay may repeat what we
        // have: everything up to the last rendered seq is already on screen.
        if (this.lastSeq !== null && ev.seq <= this.lastSeq) {
          if (ev.type === "stream_start") this.onStreamStart(ev); // the same turn goes on
          return;
        }
        this.lastSeq = ev.seq;
      }
      const turn = this.live;
      switch (ev.type) {
        case "session_sync": return this.onSync(ev);
        case "stream_start": return this.onStreamStart(ev);
        case "replay_start":
          if (ev.truncated && turn) turn.note("truncated", `The start of this turn is no longer held by the server; it resumes at event ${ev.first_seq}.`);
          return;
        case "replay_end": return;
        case "stream_end":
          return this.finishLive("done", ev, { stats: ev, content: ev.content });
        case "stream_stopped":
          return this.finishLive("stopped", ev, { stopStep: ev.stop_step, message: ev.message, error: ev.reason });
        case "error":
          if (typeof ev.seq === "number") return this.finishLive("failed", ev, { error: ev.message, code: ev.code });
          return this.onRefused(ev);
        default:
          break;
      }
      if (!turn) return; // an event of a turn no longer shown live
      switch (ev.type) {
        // Text is drawn at the next frame, which then scrolls: no layout per delta.
        case "stream_delta": turn.appendText(ev.delta || ""); return;
        case "thinking_delta": turn.appendThinking(ev.delta || ""); return;
        case "thinking_end": turn.endThinking(); break;
        case "turn_thinking": turn.wholeThinking(ev.thinking || "", { isSubagent: ev.is_subagent, open: true }); break;
        case "tool_started": turn.toolStarted(ev); break;
        case "tool_call":
          turn.toolFinished({ tool: ev.tool, args: ev.args, result: ev.result, success: ev.success, isSubagent: ev.is_subagent, metadata: ev.metadata });
          break;
        case "planning_status": turn.planningStatus(ev); break;
        case "plan_ready": turn.planReady(ev); break;
        case "context_compressed": turn.contextCompressed(ev); break;
        case "profile_switched": turn.note("profile", `Switched to profile ${ev.profile_name || ev.profile_id}.`); break;
        default: return; // an agent's own event type: nothing to show
      }
      this.app.followBottom();
    }

    onSync(ev) {
      this.ready = true;
      // Our message went out but the socket dropped before its stream_start:
      // the history says whether it arrived.
      if (this.pending && this.pending.sent) this.lost = this.pending;
      // last_seq: the session's last event. Already rendered (a resume replayed the end of
      // the turn, or we watched it to its end): the page shows it all, and a reload would
      // only redraw it. Otherwise (or without last_seq) the history has what we missed.
      const current = typeof ev.last_seq === "number" && ev.last_seq === this.lastSeq && !this.live && !this.lost;
      if (!current) this.loadHistory();
      this.flushOutbox();
      this.update();
    }

    onStreamStart(ev) {
      this.ready = true;
      if (this.live && this.live.runId === ev.run_id) return this.update();
      let turn;
      if (this.pending && this.pending.sent) {
        turn = this.pending.turn; // the turn our message started
        this.pending = null;
        turn.setRunId(ev.run_id);
        turn.setStatus("running");
      } else {
        // someone else's turn (another tab), or one that started while we were away
        if (this.live) this.live.finish("interrupted", {});
        turn = new TurnView(ev.run_id);
        this.thread.append(turn.el);
        if (this.pending) this.thread.append(this.pending.turn.el); // ours waits below
        this.loadHistory();
      }
      for (const el of this.thread.querySelectorAll(".turn")) {
        if (el !== turn.el && el.dataset.runId === ev.run_id) el.remove(); // a copy from the history
      }
      this.live = turn;
      this.stopping = false;
      this.app.showEmpty(false);
      this.app.refreshSessions();
      this.update();
      this.app.followBottom(true);
    }

    finishLive(status, ev, info) {
      const turn = this.live;
      if (!turn || (ev.run_id && turn.runId && ev.run_id !== turn.runId)) {
        this.loadHistory(); // the end of a turn we were not showing: the store has it
        return;
      }
      const streamedText = turn.streamedText;
      turn.finish(status, info);
      this.live = null;
      this.stopping = false;
      this.update();
      this.app.refreshSessions();
      this.app.followBottom();
      document.dispatchEvent(new CustomEvent("navi:turn-end", {
        detail: {
          sessionId: this.id, runId: turn.runId, status, streamedText,
          renderedText: turn.renderedText, content: typeof ev.content === "string" ? ev.content : null,
        },
      }));
      this.flushOutbox();
    }

    /** An error without seq: the server refused something we sent; nothing ran. */
    onRefused(ev) {
      if (this.pending && this.pending.sent) {
        const { turn, message } = this.pending;
        this.pending = null;
        turn.finish("rejected", { error: ev.message, code: ev.code });
        this.app.restoreDraft(message);
      } else {
        this.app.flash(`${ev.message || "Error"}${ev.code ? ` (${ev.code})` : ""}`);
      }
      this.update();
    }

    onGone() {
      if (this.disposed) return;
      this.app.closeSession();
      this.app.refreshSessions();
      this.app.flash("This chat was deleted.");
    }

    // — sending —
    send(message) {
      const turn = new TurnView(null);
      turn.setUser({ content: message.content, images: message.images });
      turn.setStatus("sending");
      turn.setFoot("Sending…", true);
      this.pending = { turn, message, sent: false };
      this.thread.append(turn.el);
      this.app.showEmpty(false);
      this.flushOutbox();
      this.update();
      this.app.followBottom(true);
    }

    flushOutbox() {
      const p = this.pending;
      if (!p || p.sent || !this.ready || this.live) {
        if (p && !p.sent) p.turn.setFoot(this.live ? "Waiting for the running turn to end…" : "Waiting for the connection…", true);
        return;
      }
      const wire = { type: "message", content: p.message.content };
      if (p.message.images.length) wire.images = p.message.images.map((img) => img.dataUrl);
      if (this.conn.send(wire)) {
        p.sent = true;
        p.turn.setFoot("Sending…", true);
      }
    }

    async stop() {
      if (!this.live || this.stopping) return;
      this.stopping = true;
      this.live.setFoot("Stopping…", true);
      this.update();
      try {
        const reply = await this.app.api.stop(this.id);
        if (reply && reply.ok === false && this.live) this.stopping = false; // it had already ended
      } catch (err) {
        this.stopping = false;
        if (this.live) this.live.setFoot("Working…", true);
        this.app.flash(`Could not stop: ${err.message}`);
      }
      this.update();
    }

    update() {
      if (this.disposed) return;
      this.app.setControls({
        running: !!this.live,
        stopping: this.stopping,
        pending: !!this.pending,
      });
    }

    // — history —
    async loadHistory() {
      const gen = ++this.historyGen;
      const seqAtStart = this.lastSeq;
      let detail;
      try {
        detail = await this.app.api.getSession(this.id);
      } catch (err) {
        if (gen !== this.historyGen || this.disposed) return;
        if (err.status === 404) return this.onGone();
        this.app.flash(`Could not load this chat: ${err.message}`);
        return;
      }
      if (gen !== this.historyGen || this.disposed) return;
      // Events arrived while we fetched and no turn is live now: a turn ended in
      // between, and this snapshot still shows it running. Ask again rather than
      // draw an older state over a newer one.
      if (this.lastSeq !== seqAtStart && !this.live) return this.loadHistory();
      this.renderHistory(detail);
    }

    renderHistory(detail) {
      this.app.setTitle(detail.title || "New chat");
      const nodes = [];
      let livePlaced = false;
      for (const group of groupByRun(detail.messages || [])) {
        if (this.live && group.runId === this.live.runId) {
          if (!group.assistant) {
            if (!this.live.userEl && group.user) {
              this.live.setUser({ content: group.user.content, imageCount: group.user.images, files: group.user.files });
            }
            nodes.push(this.live.el);
            livePlaced = true;
            continue;
          }
          this.live = null; // it ended and was saved while we looked away: the store wins
          this.stopping = false;
        }
        if (!group.assistant && group.runId && group.runId === detail.running_run_id && !this.live) {
          if (this.pending && this.pending.sent) {
            // our message's turn, seen here before its stream_start
            this.live = this.pending.turn;
            this.pending = null;
            this.live.setRunId(group.runId);
            this.live.setStatus("running");
          } else {
            this.live = TurnView.fromHistory(group);
          }
          nodes.push(this.live.el);
          livePlaced = true;
          continue;
        }
        const turn = TurnView.fromHistory(group);
        if (!group.assistant) turn.setFoot("Finishing…", true); // a session_sync will follow
        nodes.push(turn.el);
      }
      if (this.live && !livePlaced) nodes.push(this.live.el);
      const lost = this.lost;
      this.lost = null;
      if (lost && this.pending === lost) {
        // We sent it, the socket dropped, and no turn is running now.
        this.pending = null;
        const last = groupByRun(detail.messages || []).pop();
        if (!last || !last.user || last.user.content !== lost.message.content) {
          lost.turn.finish("rejected", { error: "The connection dropped before the server got this message." });
          nodes.push(lost.turn.el);
          this.app.restoreDraft(lost.message);
        }
      }
      if (this.pending) nodes.push(this.pending.turn.el);
      this.thread.replaceChildren(...nodes);
      this.app.showEmpty(nodes.length === 0);
      this.update();
      renderQueue.flush();
      this.app.followBottom(true);
    }
  }

  // ── App ─────────────────────────────────────────────────────────────────

  const CONN_TEXT = {
    idle: "",
    connecting: "connecting…",
    open: "live",
    reconnecting: "reconnecting…",
    gone: "deleted",
  };

  class App {
    constructor() {
      const $ = (id) => document.getElementById(id);
      this.api = new Api(new URL(".", document.baseURI));
      this.root = $("app");
      this.thread = $("thread");
      this.emptyEl = $("empty");
      this.sessionList = $("session-list");
      this.sessionNote = $("session-list-note");
      this.title = $("session-title");
      this.conn = $("conn");
      this.form = $("composer");
      this.input = $("input");
      this.sendBtn = $("send");
      this.stopBtn = $("stop");
      this.fileInput = $("file-input");
      this.attachmentsEl = $("attachments");
      this.composerError = $("composer-error");
      this.view = null;
      this.images = []; // {name, dataUrl}
      this.atBottom = true;
      this.sessionsTimer = null;
      this.controls = { running: false, stopping: false, pending: false };
      this.booted = false; // GET /me answered: the session list and routes may load
      this.loginEl = $("login");
      this.loginForm = $("login-form");
      this.tokenInput = $("token-input");
      this.loginError = $("login-error");
      this.whoEl = $("whoami");

      this.emptyEl.remove(); // shown by showEmpty()
      renderQueue.onFlush = () => this.followBottom();

      $("new-session").addEventListener("click", () => this.newSession());
      $("new-session-top").addEventListener("click", () => this.newSession());
      $("toggle-sidebar").addEventListener("click", () => this.toggleDrawer());
      $("scrim").addEventListener("click", () => this.toggleDrawer(false));
      this.form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
      this.stopBtn.addEventListener("click", () => this.view && this.view.stop());
      this.input.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.form.requestSubmit();
        }
      });
      this.input.addEventListener("input", () => this.autosize());
      this.input.addEventListener("paste", (e) => {
        const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
        if (files.length) {
          e.preventDefault();
          this.addImages(files);
        }
      });
      this.form.addEventListener("dragover", (e) => e.preventDefault());
      this.form.addEventListener("drop", (e) => {
        e.preventDefault();
        this.addImages([...(e.dataTransfer?.files || [])]);
      });
      this.fileInput.addEventListener("change", () => {
        this.addImages([...this.fileInput.files]);
        this.fileInput.value = "";
      });
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

      this.setControls(this.controls);
      this.api.onUnauthorized = (message) => this.showLogin(message);
      this.loginForm.addEventListener("submit", (e) => { e.preventDefault(); this.login(); });
      $("sign-out").addEventListener("click", () => this.logout());
      this.boot();
    }

    // — login (only when the server has authentication on) —
    /** Ask the server who we are; without a token it accepts, show the login first. */
    async boot() {
      let me;
      try {
        me = await this.api.whoami();
      } catch (err) {
        if (err.status === 401) return this.showLogin(this.api.token ? "That token was not accepted." : null);
        this.sessionNote.textContent = `Could not reach the server: ${err.message}`;
        this.sessionNote.hidden = false;
        return;
      }
      this.loginEl.hidden = true;
      this.whoEl.hidden = !me.auth;
      document.getElementById("user-name").textContent = me.auth ? `${me.user} (${me.role})` : "";
      this.booted = true;
      this.loadSessions();
      this.route();
    }

    showLogin(message) {
      this.booted = false;
      this.closeSession(false);
      this.sessionList.replaceChildren();
      this.whoEl.hidden = true;
      this.loginError.textContent = message || "";
      this.loginError.hidden = !message;
      this.loginEl.hidden = false;
      this.tokenInput.focus();
    }

    login() {
      const token = this.tokenInput.value.trim();
      if (!token) return;
      this.tokenInput.value = "";
      this.api.setToken(token);
      this.boot();
    }

    logout() {
      this.api.setToken(null);
      this.showLogin(null);
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
      this.markActive();
      this.toggleDrawer(false);
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
      this.markActive();
    }

    async newSession() {
      try {
        const session = await this.api.createSession();
        this.open(session.id);
        this.refreshSessions();
        this.input.focus();
        return session.id;
      } catch (err) {
        this.flash(`Could not create a chat: ${err.message}`);
        return null;
      }
    }

    refreshSessions() {
      clearTimeout(this.sessionsTimer);
      this.sessionsTimer = setTimeout(() => this.loadSessions(), 150);
    }

    async loadSessions() {
      let data;
      try {
        data = await this.api.listSessions();
      } catch (err) {
        this.sessionNote.textContent = `Could not load chats: ${err.message}`;
        this.sessionNote.hidden = false;
        return;
      }
      const items = data.sessions.map((s) => {
        const link = h("a", { class: "session-link", href: `#session=${s.id}` },
          h("span", { class: "session-title", text: s.title || "New chat" }),
          h("span", { class: "session-meta" },
            s.running_run_id ? h("span", { class: "running-dot", title: "a turn is running" }) : "",
            relativeTime(s.updated_at)));
        const del = h("button", {
          class: "icon-btn delete", type: "button", title: "Delete chat", "aria-label": `Delete chat ${s.title || ""}`.trim(),
          onclick: () => this.deleteSession(s),
        }, "×");
        return h("li", { class: "session-item", dataset: { id: s.id } }, link, del);
      });
      this.sessionList.replaceChildren(...items);
      this.sessionNote.textContent = "No chats yet.";
      this.sessionNote.hidden = items.length > 0;
      this.markActive();
      const current = this.view && data.sessions.find((s) => s.id === this.view.id);
      if (current && current.title) this.setTitle(current.title);
    }

    markActive() {
      for (const li of this.sessionList.children) {
        li.classList.toggle("active", !!this.view && li.dataset.id === this.view.id);
      }
    }

    async deleteSession(session) {
      if (!window.confirm(`Delete the chat “${session.title || "New chat"}”? This cannot be undone.`)) return;
      try {
        await this.api.deleteSession(session.id);
      } catch (err) {
        if (err.status !== 404) {
          this.flash(`Could not delete: ${err.message}`);
          return;
        }
      }
      if (this.view && this.view.id === session.id) this.closeSession();
      this.refreshSessions();
    }

    // — composer —
    async submit() {
      const content = this.input.value.trim();
      if (!content) {
        if (this.images.length) this.showComposerError("Write a message to go with the images.");
        return;
      }
      if (this.controls.running || this.controls.pending) return;
      const message = { content, images: this.images };
      this.input.value = "";
      this.images = [];
      this.renderAttachments();
      this.autosize();
      this.showComposerError(null);
      if (!this.view) {
        this.sendBtn.disabled = true;
        const id = await this.newSession();
        if (!id) {
          this.setControls(this.controls);
          return this.restoreDraft(message);
        }
        this.route(); // open it now rather than on the hashchange
      }
      this.view.send(message);
    }

    restoreDraft(message) {
      if (this.input.value.trim()) return;
      this.input.value = message.content;
      this.images = message.images;
      this.renderAttachments();
      this.autosize();
    }

    async addImages(files) {
      for (const file of files) {
        if (!file.type.startsWith("image/")) {
          this.showComposerError(`${file.name} is not an image.`);
          continue;
        }
        if (this.images.length >= MAX_IMAGES) {
          this.showComposerError(`At most ${MAX_IMAGES} images per message.`);
          return;
        }
        let dataUrl;
        try {
          dataUrl = await readDataUrl(file);
        } catch (err) {
          this.showComposerError(`Could not read ${file.name}.`);
          continue;
        }
        const size = dataUrl.length - dataUrl.indexOf(",") - 1;
        if (size > MAX_IMAGE_BASE64) {
          const mb = (size / 1024 / 1024).toFixed(1);
          this.showComposerError(`${file.name || "The image"} is too large: ${mb} MB as base64; the limit is 5 MB.`);
          continue;
        }
        if (this.images.length >= MAX_IMAGES) {
          this.showComposerError(`At most ${MAX_IMAGES} images per message.`);
          return;
        }
        this.images.push({ name: file.name || "pasted image", dataUrl });
        this.renderAttachments();
      }
    }

    renderAttachments() {
      const items = this.images.map((img, i) => h("div", { class: "attachment" },
        h("img", { src: img.dataUrl, alt: img.name }),
        h("button", {
          class: "remove", type: "button", "aria-label": `Remove ${img.name}`,
          onclick: () => { this.images.splice(i, 1); this.renderAttachments(); },
        }, "×")));
      this.attachmentsEl.replaceChildren(...items);
      this.attachmentsEl.hidden = items.length === 0;
    }

    showComposerError(text) {
      this.composerError.textContent = text || "";
      this.composerError.hidden = !text;
    }

    autosize() {
      this.input.style.height = "auto";
      this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
    }

    // — page state —
    setControls(controls) {
      this.controls = controls;
      this.sendBtn.disabled = controls.running || controls.pending;
      this.stopBtn.hidden = !controls.running;
      this.stopBtn.disabled = controls.stopping;
      this.stopBtn.textContent = controls.stopping ? "Stopping…" : "Stop";
    }

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

    toggleDrawer(open) {
      const next = open ?? !this.root.classList.contains("drawer-open");
      this.root.classList.toggle("drawer-open", next);
      document.getElementById("scrim").hidden = !next;
      document.getElementById("toggle-sidebar").setAttribute("aria-expanded", String(next));
    }

    /** A running turn sends at least a heartbeat now and then; silence means a dead socket. */
    watchdog() {
      const view = this.view;
      if (view && view.live && view.conn.isOpen && Date.now() - view.conn.lastFrameAt > SILENT_TURN_MS) {
        view.conn.kick();
      }
    }
  }

  function readDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  window.naviApp = new App();
})();
