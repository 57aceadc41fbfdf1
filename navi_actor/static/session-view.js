/* One open session: its history, the live turn, the seq bookkeeping, our
 * messages on their way (the outbox: sent once the socket says where the
 * session stands, each with a client_message_id, and sent again after a
 * reconnect until the server answers: stream_start, queued or an error; the
 * server starts nothing twice), and the session's queue (pending bubbles). */
import { renderQueue } from "./dom.js";
import { Connection } from "./connection.js";
import { LATER, SESSION_EVENTS, TURN_EVENTS } from "./events.js";
import { groupByRun, savedUser, turnFromHistory } from "./history.js";
import { TurnView } from "./turn-view.js";

/** The handler for an event type, never one inherited from Object (the type is the agent's to choose). */
function handlerFor(table, type) {
  return Object.hasOwn(table, type) ? table[type] : null;
}

/** A client_message_id: unique per session (docs/protocol.md, "Resending a message"). */
function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One open session: its history, the live turn and the socket. */
export class SessionView {
  constructor(app, id) {
    this.app = app;
    this.id = id;
    this.thread = app.thread;
    this.lastSeq = null; // the highest seq rendered; resumes go from there
    this.live = null; // TurnView of the turn running on the server
    this.outbox = []; // {turn, message, cid, ifBusy, sent}: our messages the server has not answered
    this.queue = []; // {messageId, turn, cid, message}: the session's queued messages, next first
    this.ifBusy = "enqueue"; // the session's effective if_busy (GET /sessions/ID): the composer's default
    this.ready = false; // the socket said where the session stands
    this.stopping = false;
    this.historyGen = 0;
    this.disposed = false;
    // run id → the images we sent with its message: the store keeps only their number, so a
    // history redraw of that turn shows them from here instead of as "1 image attached".
    this.sentImages = new Map();
    this.conn = new Connection(app.api, id, {
      resumeAfter: () => this.lastSeq,
      state: (state) => this.app.setConnState(state),
      event: (ev) => this.onEvent(ev),
      dropped: () => { this.ready = false; this.outbox.forEach((p) => { p.sent = false; }); this.update(); },
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

  // — events (what each type does: events.js) —
  onEvent(ev) {
    if (this.disposed || ev.type === "heartbeat") return;
    if (!this.isNew(ev)) return;
    const session = handlerFor(SESSION_EVENTS, ev.type);
    if (session) return session(this, ev);
    const turn = this.live;
    if (!turn) return; // an event of a turn no longer shown live
    const draw = handlerFor(TURN_EVENTS, ev.type);
    if (!draw) return; // an agent's own event type: nothing to show
    if (draw(turn, ev) !== LATER) this.app.followBottom();
  }

  /** Track the seq. A resume sends stream_start again, and a replay may repeat
   *  what we have: everything up to the last rendered seq is already on screen. */
  isNew(ev) {
    if (typeof ev.seq !== "number") return true;
    if (this.lastSeq !== null && ev.seq <= this.lastSeq) {
      if (ev.type === "stream_start") this.onStreamStart(ev); // the same turn goes on
      return false;
    }
    this.lastSeq = ev.seq;
    return true;
  }

  onReplayStart(ev) {
    if (ev.truncated && this.live) {
      this.live.note("truncated", `The start of this turn is no longer held by the server; it resumes at event ${ev.first_seq}.`);
    }
  }

  onSync(ev) {
    this.ready = true;
    // last_seq: the session's last event. Already rendered (a resume replayed the end of
    // the turn, or we watched it to its end): the page shows it all, and a reload would
    // only redraw it. Otherwise (or without last_seq) the history has what we missed.
    const current = typeof ev.last_seq === "number" && ev.last_seq === this.lastSeq && !this.live
      && !this.outbox.length;
    if (!current) this.loadHistory();
    this.flushOutbox();
    this.update();
  }

  onStreamStart(ev) {
    this.ready = true;
    if (this.live && this.live.runId === ev.run_id) return this.update();
    let turn;
    const queued = this.queue.findIndex((q) => q.messageId === ev.run_id); // a queued turn's run id is its message id
    const sent = this.outbox.findIndex((p) => p.sent);
    if (queued >= 0 || sent >= 0) {
      const entry = queued >= 0 ? this.queue.splice(queued, 1)[0] : this.outbox.splice(sent, 1)[0];
      turn = entry.turn;
      this.keepImages(ev.run_id, entry.message);
      turn.setRunId(ev.run_id);
      turn.setStatus("running");
      this.thread.append(turn.el);
    } else {
      // someone else's turn (another tab), or one that started while we were away
      if (this.live) this.live.finish("interrupted", {});
      turn = new TurnView(ev.run_id);
      this.thread.append(turn.el);
      this.loadHistory();
    }
    this.placeWaiting();
    for (const el of this.thread.querySelectorAll(".turn")) {
      if (el !== turn.el && el.dataset.runId === ev.run_id) el.remove(); // a copy from the history
    }
    this.live = turn;
    this.stopping = false;
    this.app.showEmpty(false);
    this.app.refreshSessions();
    this.update();
    this.app.followBottom(true);
    this.flushOutbox();
  }

  keepImages(runId, message) {
    if (runId && message && message.images && message.images.length) this.sentImages.set(runId, message.images);
  }

  /** Queued bubbles, then our unanswered messages, after everything else. */
  placeWaiting() {
    for (const q of this.queue) this.thread.append(q.turn.el);
    for (const p of this.outbox) this.thread.append(p.turn.el);
  }

  /** A message waits in the session's queue: ours (matched by client_message_id) or another viewer's. */
  onQueued(ev) {
    const known = this.queue.find((q) => q.messageId === ev.message_id);
    if (known) return; // a resend's answer, or one the history showed first
    const at = this.outbox.findIndex((p) => p.cid === ev.client_message_id && ev.client_message_id);
    const mine = at >= 0 ? this.outbox.splice(at, 1)[0] : null;
    const turn = mine ? mine.turn : new TurnView(null);
    if (!mine) turn.setUser({ content: ev.content });
    const entry = { messageId: ev.message_id, turn, cid: ev.client_message_id, message: mine && mine.message };
    this.showQueued(entry);
    this.queue.splice(Math.max(0, Math.min(this.queue.length, (ev.position || 1) - 1)), 0, entry);
    this.placeWaiting();
    this.app.showEmpty(false);
    this.update();
    this.app.followBottom();
  }

  showQueued(entry) {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "btn small cancel-queued";
    cancel.textContent = "Cancel";
    cancel.addEventListener("click", () => {
      cancel.disabled = true;
      if (!this.conn.send({ type: "cancel_queued", message_id: entry.messageId })) cancel.disabled = false;
    });
    entry.turn.el.dataset.messageId = entry.messageId;
    entry.turn.setStatus("queued", [document.createTextNode("Queued: it runs when the turns before it end · "), cancel]);
  }

  onQueueCancelled(ev) {
    const at = this.queue.findIndex((q) => q.messageId === ev.message_id);
    if (at < 0) return;
    const [entry] = this.queue.splice(at, 1);
    entry.turn.el.remove();
    if (entry.message) this.app.restoreDraft(entry.message);
    this.update();
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
    const sent = this.outbox.findIndex((p) => p.sent);
    if (ev.code === "not_queued") {
      this.app.flash(ev.message);
      this.loadHistory(); // the queue changed: it started, or someone cancelled it
    } else if (sent >= 0) {
      const [{ turn, message }] = this.outbox.splice(sent, 1);
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
  /** `ifBusy`: what the message does if a turn is running when it arrives ("enqueue" or "interrupt"). */
  send(message, ifBusy = "enqueue") {
    const turn = new TurnView(null);
    turn.setUser({ content: message.content, images: message.images });
    turn.setStatus("sending");
    turn.setFoot("Sending…", true);
    this.outbox.push({ turn, message, cid: newClientId(), ifBusy, sent: false });
    this.thread.append(turn.el);
    this.app.showEmpty(false);
    this.flushOutbox();
    this.update();
    this.app.followBottom(true);
  }

  /** Send what the server has not got yet (again after a reconnect: the same client_message_id
   *  starts nothing twice). */
  flushOutbox() {
    for (const p of this.outbox) {
      if (p.sent) continue;
      if (!this.ready) {
        p.turn.setFoot("Waiting for the connection…", true);
        continue;
      }
      const wire = { type: "message", content: p.message.content, client_message_id: p.cid, if_busy: p.ifBusy };
      if (p.message.images.length) wire.images = p.message.images.map((img) => img.dataUrl);
      if (this.conn.send(wire)) {
        p.sent = true;
        p.turn.setFoot("Sending…", true);
      }
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
      pending: this.outbox.length > 0,
      ifBusy: this.ifBusy,
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
    if (detail.if_busy) this.ifBusy = detail.if_busy;
    const groups = groupByRun(detail.messages || []);
    const nodes = this.historyNodes(groups, detail.running_run_id);
    this.queue = (detail.queue || []).map((item) => this.queuedFromHistory(item));
    nodes.push(...this.queue.map((q) => q.turn.el), ...this.outbox.map((p) => p.turn.el));
    this.thread.replaceChildren(...nodes);
    this.app.showEmpty(nodes.length === 0);
    this.update();
    renderQueue.flush();
    this.app.followBottom(true);
  }

  /** The saved turns' nodes. The live turn keeps its node; here it may end (the store has its
   *  end) or start (the store shows it running before its stream_start reached us). */
  historyNodes(groups, runningRunId) {
    const nodes = [];
    let livePlaced = false;
    for (const group of groups) {
      const mine = this.takeOutbox(group.user && group.user.client_message_id); // it arrived
      if (this.live && group.runId === this.live.runId) {
        if (!group.assistant) {
          if (!this.live.userEl && group.user) this.live.setUser(savedUser(group.user));
          nodes.push(this.live.el);
          livePlaced = true;
          continue;
        }
        this.live = null; // it ended and was saved while we looked away: the store wins
        this.stopping = false;
      }
      if (!group.assistant && group.runId && group.runId === runningRunId && !this.live) {
        if (mine) {
          // our message's turn, seen here before its stream_start
          this.keepImages(group.runId, mine.message);
          this.live = mine.turn;
          this.live.setRunId(group.runId);
          this.live.setStatus("running");
        } else {
          this.live = turnFromHistory(group);
        }
        nodes.push(this.live.el);
        livePlaced = true;
        continue;
      }
      if (mine) this.keepImages(group.runId, mine.message);
      const turn = turnFromHistory(group, this.sentImages.get(group.runId));
      if (!group.assistant) turn.setFoot("Finishing…", true); // a session_sync will follow
      nodes.push(turn.el);
    }
    if (this.live && !livePlaced) nodes.push(this.live.el);
    return nodes;
  }

  /** Our unanswered message with this client_message_id, taken out of the outbox (the server has it). */
  takeOutbox(cid) {
    const at = cid ? this.outbox.findIndex((p) => p.cid === cid) : -1;
    return at >= 0 ? this.outbox.splice(at, 1)[0] : null;
  }

  /** A queued message of GET /sessions/ID: its bubble, ours or reused when already shown. */
  queuedFromHistory(item) {
    const shown = this.queue.find((q) => q.messageId === item.message_id);
    if (shown) return shown;
    const mine = this.takeOutbox(item.client_message_id);
    const turn = mine ? mine.turn : new TurnView(null);
    if (!mine) turn.setUser(savedUser(item));
    const entry = { messageId: item.message_id, turn, cid: item.client_message_id, message: mine && mine.message };
    this.showQueued(entry);
    return entry;
  }
}
