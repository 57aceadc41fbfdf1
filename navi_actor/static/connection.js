/* A session's WebSocket: connect (with a ticket when authentication is on),
 * reconnect with backoff, resume after the last rendered seq (?after=SEQ).
 * It parses frames and hands them on; what they mean is the SessionView's. */

const RECONNECT_FIRST_MS = 1000;
const RECONNECT_MAX_MS = 15000;
const CLOSE_GONE = 4004; // the session was deleted
const CLOSE_TOO_SLOW = 4008; // this client fell behind: resume at once

/** A session's WebSocket. Reconnects with backoff; each attempt asks the
 *  handlers where to resume (`resumeAfter()` → the last rendered seq). */
export class Connection {
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
    this.attach(ws);
  }

  attach(ws) {
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
      if (close.code === CLOSE_GONE) {
        this.closed = true;
        this.handlers.state("gone");
        this.handlers.gone();
        return;
      }
      this.retry(close.code === CLOSE_TOO_SLOW ? 0 : undefined);
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

