/* One turn on screen: the user's message, then the agent's blocks (thinking,
 * tool cards, text, notes) in the order they arrived. How a turn's end is
 * shown (notices, footer) is in turn-end.js; which server event draws what is
 * in events.js. */
import { h, asText, storedResult, oneLine, renderQueue } from "./dom.js";
import { endFooter, endNotices } from "./turn-end.js";
import { MarkdownView } from "./markdown.js";

/** One turn: the user's message, then the agent's blocks in arrival order. */
export class TurnView {
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

  /** End the turn. `info`: {error, code, stopStep, message, reason, stats, content}. */
  finish(status, info = {}) {
    renderQueue.flush();
    if (typeof info.content === "string" && info.content !== this.streamedText && status === "done") {
      this.replaceText(info.content); // the agent's StreamEnd.full_content replaces the streamed text
    }
    this.settle();
    endNotices(this, status, info);
    if (status === "stopped" && info.stopStep) this.el.dataset.stopStep = info.stopStep;
    this.setStatus(status, endFooter(status, info));
  }

  replaceText(content) {
    for (const b of this.blocks.filter((x) => x.kind === "text")) b.el.remove();
    this.blocks = this.blocks.filter((x) => x.kind !== "text");
    this.appendText(content);
    renderQueue.flush();
  }

  /** An ended turn does nothing more: drop the planning line, close thoughts, mark tools left without a result. */
  settle() {
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
  }
}
