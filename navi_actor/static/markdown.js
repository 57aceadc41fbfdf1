/* navi-actor chat page: a small Markdown renderer of our own (ES module, no dependencies).
 *
 * What agents write is untrusted. This renderer is safe by construction: it
 * builds elements and text nodes with createElement / createTextNode /
 * setAttribute and never hands a string to the HTML parser (no innerHTML,
 * outerHTML, insertAdjacentHTML, document.write). Raw HTML in the Markdown is
 * shown as the text it is. Links keep only http:, https:, mailto: and relative
 * addresses, and open in a new tab with rel="noopener noreferrer".
 *
 * The subset: paragraphs, ATX and setext headings, emphasis, strong, ~~strike~~,
 * `code`, fenced and indented code (with a copy button), block quotes, ordered
 * and bullet lists (nested, tight or loose), thematic breaks, inline links and
 * images (shown as links), <autolinks>, hard breaks, entities, backslash
 * escapes, GFM tables. Not supported: HTML blocks and link reference
 * definitions (both stay text).
 *
 * Streaming: a MarkdownView keeps the DOM of the blocks that are finished and,
 * on each update, parses only the text from the first unfinished top-level
 * block on, patching that block's DOM in place (same nodes where the output
 * did not change). The cost of an update depends on the open block, not on
 * the length of the answer.
 *
 * Modules: markdown-blocks.js (block structure), markdown-inline.js
 * (inlines); here: URLs, virtual nodes, DOM patch, MarkdownView.
 */


import { BlockParser } from "./markdown-blocks.js";
import { parseInline } from "./markdown-inline.js";

export { MAX_DEPTH, parseBlocks } from "./markdown-blocks.js";
export { parseInline } from "./markdown-inline.js";

/** Emphasis and links nested deeper than this are flattened to their text. */
export const MAX_INLINE_DEPTH = 32;
const SAFE_SCHEMES = new Set(["http", "https", "mailto"]);
/** Finished blocks per chunk (a div.md-chunk): see MarkdownView.finish. */
const CHUNK_SIZE = 32;

/** Counters for the tests: work done since the page loaded (numbers only). */
export const stats = { renders: 0, parsedChars: 0, reparsedChars: 0, maxReparsed: 0, nodesBuilt: 0 };

// ── URLs ──────────────────────────────────────────────────────────────────

/** `url` when it is http(s), mailto or relative; null for anything else (javascript:, data:, vbscript:…).
 *
 *  Browsers drop tabs and newlines anywhere in a URL and spaces and control
 *  characters around it, so the scheme is read with every such character
 *  removed: whatever scheme a browser could see, this sees too. */
export function safeUrl(url) {
  const squashed = String(url).replace(/[\x00-\x20\x7f]+/g, "");
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(squashed);
  if (m && !SAFE_SCHEMES.has(m[1].toLowerCase())) return null;
  return url;
}

// ── virtual nodes ─────────────────────────────────────────────────────────
// {tag, attrs, children, on} for elements, {text} for text; `dom` once built.

function el(tag, attrs, children, on) {
  return { tag, attrs: attrs || null, children: children || [], on: on || null, dom: null };
}
function pushText(out, text) {
  const last = out[out.length - 1];
  if (last && last.tag === undefined) last.text += text;
  else if (text) out.push({ text, dom: null });
}

/** The text of an inline subtree, without recursion. */
function plainText(n) {
  let out = "";
  const stack = [n.first];
  while (stack.length) {
    const cur = stack.pop();
    if (!cur) continue;
    stack.push(cur.next);
    if (cur.type === "text" || cur.type === "code") out += cur.text;
    else if (cur.type === "softbreak") out += "\n";
    else stack.push(cur.first);
  }
  return out;
}

function inlineNodes(parent, depth, out = []) {
  for (let n = parent.first; n; n = n.next) {
    if (n.type === "text") pushText(out, n.text);
    else if (n.type === "softbreak") pushText(out, "\n");
    else if (n.type === "br") out.push(el("br"));
    else if (n.type === "code") out.push(el("code", null, [{ text: n.text, dom: null }]));
    else if (depth >= MAX_INLINE_DEPTH) pushText(out, plainText(n));
    else if (n.type === "link" || n.type === "image") {
      const href = safeUrl(n.dest);
      const kids = n.type === "image" ? [] : inlineNodes(n, depth + 1);
      if (n.type === "image") pushText(kids, plainText(n) || n.dest);
      if (href === null) out.push(el("span", { class: "md-link-refused" }, kids));
      else {
        const attrs = { href, rel: "noopener noreferrer", target: "_blank", title: n.title || null };
        if (n.type === "image") attrs.class = "md-image";
        out.push(el("a", attrs, kids));
      }
    } else out.push(el(n.type, null, inlineNodes(n, depth + 1)));
  }
  return out;
}

const inline = (src) => inlineNodes(parseInline(src), 0);

function codeNode(text, lang) {
  const head = el("div", { class: "md-code-head", "data-lang": lang || null }, [
    el("button", { type: "button", class: "md-copy", "aria-label": "Copy code", title: "Copy code" }, [], { click: onCopy }),
  ]);
  return el("div", { class: "md-code" }, [head, el("pre", null, [el("code", null, text ? [{ text, dom: null }] : [])])]);
}

/** The virtual nodes of one block; `tight`: a paragraph of a tight list item shows without <p>. */
function blockNodes(b, tight) {
  switch (b.type) {
    case "paragraph":
      return tight ? inline(b.content) : [el("p", null, inline(b.content))];
    case "heading":
      return [el(`h${b.level}`, null, inline(b.content))];
    case "hr":
      return [el("hr")];
    case "code":
      return [codeNode(b.lines.length ? `${b.lines.join("\n")}\n` : "", b.info)];
    case "blockquote":
      return [el("blockquote", null, b.children.flatMap((c) => blockNodes(c, false)))];
    case "list": {
      const attrs = b.ordered && b.start !== 1 ? { start: String(b.start) } : null;
      const items = b.children.map((item) => el("li", null, item.children.flatMap((c) => blockNodes(c, b.tight))));
      return [el(b.ordered ? "ol" : "ul", attrs, items)];
    }
    case "table": {
      const row = (cells, tag) => el("tr", null, b.align.map((align, i) =>
        el(tag, align ? { "data-align": align } : null, inline(cells[i] || ""))));
      const body = b.rows.length ? [el("tbody", null, b.rows.map((r) => row(r, "td")))] : [];
      return [el("div", { class: "md-table" }, [el("table", null, [el("thead", null, [row(b.head, "th")]), ...body])])];
    }
    default:
      throw new Error(`no rendering for a ${b.type} block`);
  }
}

// ── DOM ───────────────────────────────────────────────────────────────────

function build(v, doc) {
  stats.nodesBuilt += 1;
  if (v.tag === undefined) {
    v.dom = doc.createTextNode(v.text);
    return v.dom;
  }
  const e = doc.createElement(v.tag);
  if (v.attrs) for (const [k, val] of Object.entries(v.attrs)) if (val !== null) e.setAttribute(k, val);
  if (v.on) for (const [k, fn] of Object.entries(v.on)) e.addEventListener(k, fn);
  for (const c of v.children) e.appendChild(build(c, doc));
  v.dom = e;
  return e;
}

/** Make `old`'s DOM show `nu`, keeping every node whose kind did not change. */
function patch(parent, old, nu, doc) {
  if (old.tag === undefined && nu.tag === undefined) {
    if (old.text !== nu.text) old.dom.data = nu.text;
    nu.dom = old.dom;
    return;
  }
  if (old.tag !== nu.tag || !old.on !== !nu.on) {
    parent.replaceChild(build(nu, doc), old.dom);
    return;
  }
  const e = old.dom;
  nu.dom = e;
  const was = old.attrs || {};
  const now = nu.attrs || {};
  for (const [k, val] of Object.entries(now)) if (val !== null && was[k] !== val) e.setAttribute(k, val);
  for (const [k, val] of Object.entries(was)) if (val !== null && (now[k] === undefined || now[k] === null)) e.removeAttribute(k);
  patchChildren(e, old.children, nu.children, doc);
}

function patchChildren(parent, olds, nus, doc) {
  const n = Math.min(olds.length, nus.length);
  for (let i = 0; i < n; i++) patch(parent, olds[i], nus[i], doc);
  for (let i = n; i < nus.length; i++) parent.appendChild(build(nus[i], doc));
  for (let i = n; i < olds.length; i++) parent.removeChild(olds[i].dom);
}

function onCopy(event) {
  const button = event.currentTarget;
  const code = button.closest(".md-code")?.querySelector("code");
  if (!code) return;
  const win = button.ownerDocument.defaultView;
  const show = (state) => {
    button.dataset.state = state;
    win.clearTimeout(button.mdTimer);
    button.mdTimer = win.setTimeout(() => delete button.dataset.state, 1500);
  };
  copyText(win, code).then(() => show("copied"), () => show("failed"));
}

async function copyText(win, code) {
  if (win.isSecureContext && win.navigator.clipboard) return win.navigator.clipboard.writeText(code.textContent);
  const doc = code.ownerDocument; // plain http: select the code and copy the selection
  const range = doc.createRange();
  range.selectNodeContents(code);
  const selection = win.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  try {
    if (!doc.execCommand("copy")) throw new Error("copy refused");
  } finally {
    selection.removeAllRanges();
  }
}

// ── MarkdownView ──────────────────────────────────────────────────────────

/** Renders a growing Markdown text into `container` (whose children it owns). */
export class MarkdownView {
  constructor(container, doc = container.ownerDocument) {
    this.container = container;
    this.doc = doc;
    this.done = 0; // the text before this offset is in finished blocks, whose DOM stays as it is
    this.seen = 0; // the length of the text of the last update
    this.open = []; // virtual nodes of the blocks after `done`, the container's last children
    this.chunk = null; // the chunk that finished blocks join, until it holds CHUNK_SIZE
    this.chunkSize = 0;
  }

  /** Show `text`: the text of the previous update plus more (a shorter text starts over). */
  update(text) {
    const previous = this.seen;
    if (text.length < previous) this.clear();
    const tail = text.slice(this.done);
    const reparsed = Math.max(0, Math.min(previous, text.length) - this.done); // parsed before, parsed again
    this.seen = text.length;
    stats.renders += 1;
    stats.parsedChars += tail.length;
    stats.reparsedChars += reparsed;
    stats.maxReparsed = Math.max(stats.maxReparsed, reparsed);

    const lines = tail.split("\n");
    const blocks = new BlockParser().parse(lines).children;
    const nodes = blocks.map((b) => blockNodes(b, false)[0]);
    patchChildren(this.container, this.open, nodes, this.doc);
    // Block k is finished once block k+1 has begun and two of its lines are
    // complete (the second settles whether the first is a table's header).
    const complete = lines.length - 1;
    let keep = 0;
    for (let k = blocks.length - 1; k >= 1; k--) {
      if (blocks[k].startLine + 2 <= complete) {
        keep = k;
        break;
      }
    }
    if (keep) {
      let offset = 0;
      for (let i = 0; i < blocks[keep].startLine; i++) offset += lines[i].length + 1;
      this.done += offset;
      this.open = nodes.slice(keep);
      for (const node of nodes.slice(0, keep)) this.finish(node.dom);
    } else {
      this.open = nodes;
    }
  }

  /** A finished block moves (the same node) into a chunk: the browser can skip laying out and
   *  painting a chunk off screen, and the container has few children to lay out. */
  finish(dom) {
    if (!this.chunk || this.chunkSize >= CHUNK_SIZE) {
      this.chunk = this.doc.createElement("div");
      this.chunk.setAttribute("class", "md-chunk");
      this.container.insertBefore(this.chunk, dom);
      this.chunkSize = 0;
    }
    this.chunk.appendChild(dom);
    this.chunkSize += 1;
  }

  clear() {
    while (this.container.firstChild) this.container.removeChild(this.container.firstChild);
    this.done = 0;
    this.seen = 0;
    this.open = [];
    this.chunk = null;
    this.chunkSize = 0;
  }
}

/** Render `text` into `container` once. */
export function renderMarkdown(container, text) {
  const view = new MarkdownView(container);
  view.update(text);
  return view;
}
