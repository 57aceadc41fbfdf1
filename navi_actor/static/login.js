/* The login, shown only when the server has authentication on: the token is
 * kept by Api (sessionStorage, this tab only); the WebSocket ticket is Api's too. */
import { byId } from "./dom.js";

export class Login {
  constructor(app) {
    this.app = app;
    this.el = byId("login");
    this.form = byId("login-form");
    this.tokenInput = byId("token-input");
    this.error = byId("login-error");
    this.whoEl = byId("whoami");
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.login(); });
    byId("sign-out").addEventListener("click", () => this.logout());
    app.api.onUnauthorized = (message) => this.show(message);
  }

  /** Ask the server who we are; without a token it accepts, show the login first. */
  async boot() {
    const app = this.app;
    let me;
    try {
      me = await app.api.whoami();
    } catch (err) {
      if (err.status === 401) return this.show(app.api.token ? "That token was not accepted." : null);
      app.sidebar.showNote(`Could not reach the server: ${err.message}`);
      return;
    }
    this.el.hidden = true;
    this.whoEl.hidden = !me.auth;
    byId("user-name").textContent = me.auth ? `${me.user} (${me.role})` : "";
    app.booted = true;
    app.sidebar.load();
    app.route();
  }

  show(message) {
    const app = this.app;
    app.booted = false;
    app.closeSession(false);
    app.sidebar.clear();
    this.whoEl.hidden = true;
    this.error.textContent = message || "";
    this.error.hidden = !message;
    this.el.hidden = false;
    this.tokenInput.focus();
  }

  login() {
    const token = this.tokenInput.value.trim();
    if (!token) return;
    this.tokenInput.value = "";
    this.app.api.setToken(token);
    this.boot();
  }

  logout() {
    this.app.api.setToken(null);
    this.show(null);
  }
}
