/* One open session: its history, the live turn, the seq bookkeeping, and
 * our message on its way (the outbox: at most one, sent once the socket says
 * where the session stands and no turn is running). */
import { renderQueue } from "./dom.js";
import { Connection } from "./connection.js";
import { LATER, SESSION_EVENTS, TURN_EVENTS } from "./events.js";
import { groupByRun, savedUser, turnFromHistory } from "./history.js";
import { TurnView } from "./turn-view.js";

/** The handler for an event type, never one inherited from Object (the type is the agent's to choose). */
function handlerFor(table, type) {
  return Object.hasOwn(table, type) ? table[type] : null;
}

/** One open session: its history, the live turn and the socket. */
export class SessionView {
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
    const groups = groupByRun(detail.messages || []);
    const nodes = this.historyNodes(groups, detail.running_run_id);
    const lost = this.settleLost(groups[groups.length - 1]);
    if (lost) nodes.push(lost.el);
    if (this.pending) nodes.push(this.pending.turn.el);
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
        if (this.pending && this.pending.sent) {
          // our message's turn, seen here before its stream_start
          this.live = this.pending.turn;
          this.pending = null;
          this.live.setRunId(group.runId);
          this.live.setStatus("running");
        } else {
          this.live = turnFromHistory(group);
        }
        nodes.push(this.live.el);
        livePlaced = true;
        continue;
      }
      const turn = turnFromHistory(group);
      if (!group.assistant) turn.setFoot("Finishing…", true); // a session_sync will follow
      nodes.push(turn.el);
    }
    if (this.live && !livePlaced) nodes.push(this.live.el);
    return nodes;
  }

  /** We sent a message, the socket dropped, and no turn is running now. If the history's
   *  last turn is not ours, it never arrived: that turn is shown rejected, the draft restored. */
  settleLost(lastGroup) {
    const lost = this.lost;
    this.lost = null;
    if (!lost || this.pending !== lost) return null;
    this.pending = null;
    if (lastGroup && lastGroup.user && lastGroup.user.content === lost.message.content) return null;
    lost.turn.finish("rejected", { error: "The connection dropped before the server got this message." });
    this.app.restoreDraft(lost.message);
    return lost.turn;
  }
}
