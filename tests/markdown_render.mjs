// Renders Markdown with navi_actor/static/markdown.js under Node, for tests/test_markdown.py.
//
// stdin: {"cases": {name: text}, "streams": {name: [chunk, ...]}}
// stdout: {"cases": {name: {html, ms}}, "streams": {name: {html, whole, kept, ms, maxReparsed}}}
//
// The document here is a small fake: elements and text nodes, serialised to
// HTML-like text for comparison. It has no innerHTML / outerHTML /
// insertAdjacentHTML at all, and the renderer works with it: proof that it
// never hands a string to an HTML parser.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const here = new URL(".", import.meta.url);
const md = await import(new URL("../navi_actor/static/markdown.js", here));

const VOID = new Set(["br", "hr"]);
const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

class FakeNode {
  constructor(doc) {
    this.ownerDocument = doc;
    this.parentNode = null;
    this.childNodes = [];
  }
  get firstChild() {
    return this.childNodes[0] || null;
  }
  get isConnected() {
    let n = this;
    while (n.parentNode) n = n.parentNode;
    return n === this.ownerDocument.root;
  }
  appendChild(child) {
    if (child.parentNode) child.parentNode.removeChild(child);
    child.parentNode = this;
    this.childNodes.push(child);
    return child;
  }
  removeChild(child) {
    const i = this.childNodes.indexOf(child);
    if (i < 0) throw new Error("removeChild: not a child");
    this.childNodes.splice(i, 1);
    child.parentNode = null;
    return child;
  }
  insertBefore(child, ref) {
    if (child.parentNode) child.parentNode.removeChild(child);
    const i = this.childNodes.indexOf(ref);
    if (i < 0) throw new Error("insertBefore: not a child");
    this.childNodes.splice(i, 0, child);
    child.parentNode = this;
    return child;
  }
  replaceChild(nu, old) {
    const i = this.childNodes.indexOf(old);
    if (i < 0) throw new Error("replaceChild: not a child");
    if (nu.parentNode) nu.parentNode.removeChild(nu);
    this.childNodes[i] = nu;
    nu.parentNode = this;
    old.parentNode = null;
    return old;
  }
}

class FakeText extends FakeNode {
  constructor(doc, data) {
    super(doc);
    this.data = String(data);
  }
  serialize() {
    return esc(this.data);
  }
}

class FakeElement extends FakeNode {
  constructor(doc, tag) {
    super(doc);
    this.tagName = tag;
    this.attributes = new Map();
    this.listeners = [];
  }
  setAttribute(name, value) {
    if (/^on/i.test(name)) throw new Error(`event handler attribute ${name}`);
    this.attributes.set(name, String(value));
  }
  removeAttribute(name) {
    this.attributes.delete(name);
  }
  addEventListener(type, fn) {
    this.listeners.push(type);
  }
  serialize() {
    if (this.attributes.get("class") === "md-chunk") return this.childNodes.map((c) => c.serialize()).join(""); // layout only
    const attrs = [...this.attributes].map(([k, v]) => ` ${k}="${esc(v).replace(/"/g, "&quot;")}"`).join("");
    if (VOID.has(this.tagName)) return `<${this.tagName}${attrs}>`;
    return `<${this.tagName}${attrs}>${this.childNodes.map((c) => c.serialize()).join("")}</${this.tagName}>`;
  }
}

class FakeDocument {
  constructor() {
    this.root = new FakeElement(this, "body");
  }
  createElement(tag) {
    if (!/^[a-z][a-z0-9]*$/.test(tag)) throw new Error(`bad tag ${tag}`);
    return new FakeElement(this, tag);
  }
  createTextNode(data) {
    return new FakeText(this, data);
  }
}

const inner = (el) => el.childNodes.map((c) => c.serialize()).join("");
/** The top-level blocks, those in chunks included. */
const blocksOf = (el) => el.childNodes.flatMap((c) => (c.attributes && c.attributes.get("class") === "md-chunk" ? c.childNodes : [c]));

const input = JSON.parse(readFileSync(0, "utf8"));
const out = { cases: {}, streams: {} };

for (const [name, text] of Object.entries(input.cases || {})) {
  const doc = new FakeDocument();
  const box = doc.root.appendChild(doc.createElement("div"));
  const t0 = performance.now();
  let html;
  try {
    md.renderMarkdown(box, text);
    html = inner(box);
  } catch (err) {
    html = `ERROR ${err && err.stack}`;
  }
  out.cases[name] = { html, ms: performance.now() - t0 };
}

for (const [name, chunks] of Object.entries(input.streams || {})) {
  const doc = new FakeDocument();
  const box = doc.root.appendChild(doc.createElement("div"));
  const view = new md.MarkdownView(box, doc);
  const held = [];
  let text = "";
  const before = md.stats.maxReparsed;
  md.stats.maxReparsed = 0;
  const t0 = performance.now();
  for (const chunk of chunks) {
    text += chunk;
    view.update(text);
    // every top-level node but the last three must stay as it is until the end
    const blocks = blocksOf(box);
    for (let i = held.length; i < blocks.length - 3; i++) held.push([blocks[i], blocks[i].serialize()]);
  }
  const ms = performance.now() - t0;
  const whole = new FakeDocument();
  const wholeBox = whole.root.appendChild(whole.createElement("div"));
  md.renderMarkdown(wholeBox, text);
  const blocks = blocksOf(box);
  const kept = held.every(([node, html], i) => blocks[i] === node && node.isConnected && node.serialize() === html);
  out.streams[name] = { html: inner(box), whole: inner(wholeBox), kept, held: held.length, ms, maxReparsed: md.stats.maxReparsed };
  md.stats.maxReparsed = Math.max(before, md.stats.maxReparsed);
}

process.stdout.write(JSON.stringify(out));
