/* The one place that builds the page's HTTP and WebSocket URLs and headers,
 * and holds the login token. Nothing here touches the DOM. */

export class ApiError extends Error {
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
export class Api {
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
    // ?session= is for balancers hashing on the session id (deploy/): the ticket is kept by the node that issued it.
    if (this.authOn) params.ticket = (await this.request("POST", "/ws-ticket", { params: { session: id } })).ticket;
    return new WebSocket(this.socketUrl(`/ws/sessions/${encodeURIComponent(id)}`, params));
  }
}
