/* DOM helpers. Every piece of agent text goes through textContent or text
 * nodes, never innerHTML: agent output is untrusted. Answers are Markdown,
 * rendered by markdown.js (DOM nodes only, too). */

/** Create an element. Children that are strings become text nodes. */
export function h(tag, attrs, ...children) {
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

export function asText(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** A tool result stored in the history is a string; pretty-print it when it is JSON. */
export function storedResult(text) {
  try {
    return asText(JSON.parse(text));
  } catch {
    return text;
  }
}

export function oneLine(value, max = 90) {
  let text = typeof value === "string" ? value : JSON.stringify(value) ?? "";
  text = text.replace(/\s+/g, " ").trim();
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function relativeTime(epochSeconds) {
  if (!epochSeconds) return "";
  const seconds = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

/** Text blocks re-render at most once per frame while deltas stream in. */
export const renderQueue = {
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

/** The page's element with this id (index.html has them all). */
export const byId = (id) => document.getElementById(id);
