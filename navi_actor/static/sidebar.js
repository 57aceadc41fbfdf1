/* The sidebar: the list of chats (GET /sessions), delete, and the drawer it
 * becomes on narrow screens. Opening a chat is a link (#session=ID): App.route. */
import { byId, h, relativeTime } from "./dom.js";

export class Sidebar {
  constructor(app) {
    this.app = app;
    this.root = byId("app");
    this.list = byId("session-list");
    this.note = byId("session-list-note");
    this.scrim = byId("scrim");
    this.toggle = byId("toggle-sidebar");
    this.timer = null;
    this.toggle.addEventListener("click", () => this.toggleDrawer());
    this.scrim.addEventListener("click", () => this.toggleDrawer(false));
  }

  /** Load the list soon: several changes in a row load it once. */
  refresh() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 150);
  }

  async load() {
    let data;
    try {
      data = await this.app.api.listSessions();
    } catch (err) {
      this.showNote(`Could not load chats: ${err.message}`);
      return;
    }
    const items = data.sessions.map((s) => this.item(s));
    this.list.replaceChildren(...items);
    this.note.textContent = "No chats yet.";
    this.note.hidden = items.length > 0;
    this.markActive();
    const view = this.app.view;
    const current = view && data.sessions.find((s) => s.id === view.id);
    if (current && current.title) this.app.setTitle(current.title);
  }

  item(s) {
    const link = h("a", { class: "session-link", href: `#session=${s.id}` },
      h("span", { class: "session-title", text: s.title || "New chat" }),
      h("span", { class: "session-meta" },
        s.running_run_id ? h("span", { class: "running-dot", title: "a turn is running" }) : "",
        relativeTime(s.updated_at)));
    const del = h("button", {
      class: "icon-btn delete", type: "button", title: "Delete chat", "aria-label": `Delete chat ${s.title || ""}`.trim(),
      onclick: () => this.delete(s),
    }, "×");
    return h("li", { class: "session-item", dataset: { id: s.id } }, link, del);
  }

  showNote(text) {
    this.note.textContent = text;
    this.note.hidden = false;
  }

  clear() {
    this.list.replaceChildren();
  }

  markActive() {
    const view = this.app.view;
    for (const li of this.list.children) {
      li.classList.toggle("active", !!view && li.dataset.id === view.id);
    }
  }

  async delete(session) {
    if (!window.confirm(`Delete the chat “${session.title || "New chat"}”? This cannot be undone.`)) return;
    try {
      await this.app.api.deleteSession(session.id);
    } catch (err) {
      if (err.status !== 404) {
        this.app.flash(`Could not delete: ${err.message}`);
        return;
      }
    }
    if (this.app.view && this.app.view.id === session.id) this.app.closeSession();
    this.refresh();
  }

  toggleDrawer(open) {
    const next = open ?? !this.root.classList.contains("drawer-open");
    this.root.classList.toggle("drawer-open", next);
    this.scrim.hidden = !next;
    this.toggle.setAttribute("aria-expanded", String(next));
  }
}
