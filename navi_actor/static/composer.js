/* The composer: the message box, Send and Stop, and what a sent message
 * becomes (SessionView.send puts it in the session's outbox). While a turn
 * runs, Queue and "Stop and send" take Send's place; Enter does the one the
 * session's if_busy prefers (interrupt: "Stop and send"; otherwise Queue). */
import { byId } from "./dom.js";
import { Attachments } from "./uploads.js";

export class Composer {
  constructor(app) {
    this.app = app;
    this.form = byId("composer");
    this.input = byId("input");
    this.sendBtn = byId("send");
    this.stopBtn = byId("stop");
    this.queueBtn = byId("queue");
    this.interruptBtn = byId("interrupt");
    this.errorEl = byId("composer-error");
    this.controls = { running: false, stopping: false, pending: false, ifBusy: "enqueue" };
    this.attachments = new Attachments(
      { form: this.form, input: this.input, fileInput: byId("file-input"), list: byId("attachments") },
      (text) => this.showError(text),
    );
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
    this.queueBtn.addEventListener("click", () => this.submit("enqueue"));
    this.interruptBtn.addEventListener("click", () => this.submit("interrupt"));
    this.stopBtn.addEventListener("click", () => app.view && app.view.stop());
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.input.addEventListener("input", () => this.autosize());
  }

  /** `mode`: "enqueue" or "interrupt" while a turn runs; by default, the session's preference. */
  async submit(mode) {
    const content = this.input.value.trim();
    if (!content) {
      if (this.attachments.count) this.showError("Write a message to go with the images.");
      return;
    }
    const running = this.controls.running;
    if (!running && this.controls.pending) return;
    const ifBusy = running ? (mode || this.busyDefault()) : "enqueue";
    const message = { content, images: this.attachments.take() };
    this.input.value = "";
    this.autosize();
    this.showError(null);
    const app = this.app;
    if (!app.view) {
      this.sendBtn.disabled = true;
      const id = await app.newSession();
      if (!id) {
        this.setControls(this.controls);
        return this.restoreDraft(message);
      }
      app.route(); // open it now rather than on the hashchange
    }
    app.view.send(message, ifBusy);
  }

  /** What Enter does while a turn runs: the session's if_busy, "enqueue" for reject. */
  busyDefault() {
    return this.controls.ifBusy === "interrupt" ? "interrupt" : "enqueue";
  }

  /** Put a message that was not sent back in the composer, unless the user has typed another. */
  restoreDraft(message) {
    if (this.input.value.trim()) return;
    this.input.value = message.content;
    this.attachments.restore(message.images);
    this.autosize();
  }

  showError(text) {
    this.errorEl.textContent = text || "";
    this.errorEl.hidden = !text;
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
  }

  /** `{running, stopping, pending, ifBusy}`: what the open session is doing (SessionView.update). */
  setControls(controls) {
    this.controls = { ifBusy: "enqueue", ...controls };
    this.sendBtn.disabled = controls.running || controls.pending;
    this.sendBtn.hidden = controls.running;
    this.queueBtn.hidden = this.interruptBtn.hidden = !controls.running;
    const interrupt = this.busyDefault() === "interrupt";
    this.queueBtn.classList.toggle("primary", !interrupt);
    this.interruptBtn.classList.toggle("primary", interrupt);
    this.stopBtn.hidden = !controls.running;
    this.stopBtn.disabled = controls.stopping;
    this.stopBtn.textContent = controls.stopping ? "Stopping…" : "Stop";
  }

  focus() {
    this.input.focus();
  }
}
