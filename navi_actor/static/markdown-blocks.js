/* navi-actor chat page: the block phase of the Markdown renderer (see markdown.js).
 *
 * CommonMark's block structure, line by line, in the design of commonmark.js
 * (smaller): block quotes, lists and items, paragraphs (with GFM tables and
 * setext headings), ATX headings, fenced and indented code, thematic breaks.
 * HTML blocks and link reference definitions are not recognised: they stay
 * paragraph text. Pure: no DOM.
 */

import { unescapeText } from "./markdown-inline.js";

/** Block quotes and list items nested deeper than this are text. */
export const MAX_DEPTH = 32;

const isBlank = (s) => /^[ \t]*$/.test(s);
/** `s` without trailing spaces and tabs (a loop: an end-anchored regex can take quadratic time). */
function trimEnd(s) {
  let end = s.length;
  while (end > 0 && (s[end - 1] === " " || s[end - 1] === "\t")) end -= 1;
  return s.slice(0, end);
}
/** An ATX heading's text: without its closing sequence of #s. */
function atxText(s) {
  const text = trimEnd(s.trim());
  let end = text.length;
  while (end > 0 && text[end - 1] === "#") end -= 1;
  if (end === 0) return "";
  return end === text.length || (text[end - 1] !== " " && text[end - 1] !== "\t") ? text : trimEnd(text.slice(0, end));
}
const RE_BQ = /^ {0,3}>/;
const RE_ATX = /^ {0,3}(#{1,6})(?=[ \t]|$)/;
const RE_FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const RE_CLOSE_FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*$/;
const RE_HR = /^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const RE_SETEXT = /^ {0,3}(?:=+|-+)[ \t]*$/;
const RE_BULLET = /^ {0,3}([-+*])(?=[ \t]|$)/;
const RE_ORDERED = /^ {0,3}(\d{1,9})([.)])(?=[ \t]|$)/;
const RE_TABLE_DELIM = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
/** A line that ends a table: it starts another block. */
const RE_TABLE_END = /^ {0,3}(?:>|#{1,6}(?:[ \t]|$)|`{3}|~{3})/;

/** Columns of leading whitespace (tabs to the next multiple of 4). */
function indentOf(s) {
  let col = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === " ") col += 1;
    else if (s[i] === "\t") col += 4 - (col % 4);
    else break;
  }
  return col;
}

/** `s` without `n` columns of leading whitespace (fewer if it has fewer); a split tab becomes spaces. */
function stripCols(s, n) {
  let col = 0;
  let i = 0;
  while (i < s.length && col < n) {
    if (s[i] === " ") {
      col += 1;
      i += 1;
    } else if (s[i] === "\t") {
      const width = 4 - (col % 4);
      if (col + width > n) return " ".repeat(col + width - n) + s.slice(i + 1);
      col += width;
      i += 1;
    } else {
      break;
    }
  }
  return s.slice(i);
}

function block(type, extra) {
  return { type, parent: null, children: [], open: true, depth: 0, sawBlank: false, gap: false, ...extra };
}

const canContain = (parent, type) =>
  parent.type === "list" ? type === "item" : ["document", "blockquote", "item"].includes(parent.type) && type !== "item";

/** Splits a table row into its cells: unescaped pipes separate them; `\|` is a pipe. */
function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let start = 0;
  let cell = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "|") {
      cell += s.slice(start, i) + "|";
      i += 1;
      start = i + 1;
    } else if (s[i] === "|") {
      cells.push((cell + s.slice(start, i)).trim());
      cell = "";
      start = i + 1;
    }
  }
  cells.push((cell + s.slice(start)).trim());
  return cells;
}

const CONSUMED = Symbol("consumed");

/** CommonMark's block phase, line by line (the design of commonmark.js, smaller). */
export class BlockParser {
  constructor() {
    this.root = block("document");
    this.tip = this.root; // the deepest open block
    this.lineNo = 0;
  }

  /** The document tree of `lines`; each top-level block has `startLine`. */
  parse(lines) {
    for (this.lineNo = 0; this.lineNo < lines.length; this.lineNo++) this.addLine(lines[this.lineNo]);
    while (this.tip) this.close(this.tip);
    return this.root;
  }

  close(b) {
    b.open = false;
    if (b.type === "paragraph") b.content = trimEnd(b.lines.join("\n"));
    else if (b.type === "code" && !b.fence) {
      while (b.lines.length && isBlank(b.lines[b.lines.length - 1])) b.lines.pop();
    } else if (b.type === "list") {
      b.tight = !(b.gap || b.children.some((item) => item.gap));
    }
    this.tip = b.parent;
  }

  closeUnmatched(container) {
    while (this.tip !== container) this.close(this.tip);
  }

  add(parent, child) {
    while (!canContain(parent, child.type)) {
      this.close(parent);
      parent = parent.parent;
    }
    if (parent.sawBlank && parent.children.length) parent.gap = true; // a blank line between two children
    child.parent = parent;
    child.depth = parent.depth + 1;
    if (parent === this.root) child.startLine = this.lineNo;
    parent.children.push(child);
    this.tip = child;
    return child;
  }

  /** The rest of `line` inside open block `b`, or null when the line does not continue it. */
  continues(b, rest) {
    switch (b.type) {
      case "list":
        return rest;
      case "blockquote": {
        const m = RE_BQ.exec(rest);
        if (!m) return null;
        rest = rest.slice(m[0].length);
        return rest[0] === " " || rest[0] === "\t" ? stripCols(rest, 1) : rest;
      }
      case "item":
        if (isBlank(rest)) return b.children.length ? "" : null; // an item starts with at most one blank line
        return indentOf(rest) >= b.indent ? stripCols(rest, b.indent) : null;
      case "paragraph":
      case "table":
        return isBlank(rest) || (b.type === "table" && RE_TABLE_END.test(rest)) ? null : rest;
      case "code":
        if (b.fence) {
          const m = RE_CLOSE_FENCE.exec(rest);
          if (m && m[1][0] === b.fence[0] && m[1].length >= b.fence.length) {
            this.close(b);
            return CONSUMED;
          }
          let strip = 0;
          while (strip < b.fenceIndent && rest[strip] === " ") strip += 1;
          return rest.slice(strip);
        }
        if (indentOf(rest) >= 4) return stripCols(rest, 4);
        return isBlank(rest) ? stripCols(rest, 4) : null;
      default:
        return null; // headings and thematic breaks are one line
    }
  }

  addLine(line) {
    let rest = line;
    let container = this.root;
    let allMatched = true;
    const blankIn = [];
    for (;;) {
      const child = container.children[container.children.length - 1];
      if (!child || !child.open) break;
      const next = this.continues(child, rest);
      if (next === CONSUMED) return;
      if (next === null) {
        allMatched = false;
        break;
      }
      rest = next;
      container = child;
      if (isBlank(rest)) blankIn.push(child);
    }

    let leafDone = false;
    let started = false;
    while (container.type !== "code" && container.type !== "table") {
      if (indentOf(rest) >= 4) {
        if (this.tip.type !== "paragraph" && !isBlank(rest)) {
          this.closeUnmatched(container);
          container = this.add(container, block("code", { fence: null, lines: [] }));
          rest = stripCols(rest, 4);
          started = true;
        }
        break;
      }
      const deepEnough = container.depth >= MAX_DEPTH;
      let m;
      if (!deepEnough && (m = RE_BQ.exec(rest))) {
        this.closeUnmatched(container);
        container = this.add(container, block("blockquote"));
        rest = rest.slice(m[0].length);
        if (rest[0] === " " || rest[0] === "\t") rest = stripCols(rest, 1);
        started = true;
      } else if ((m = RE_ATX.exec(rest))) {
        this.closeUnmatched(container);
        this.close(this.add(container, block("heading", { level: m[1].length, content: atxText(rest.slice(m[0].length)) })));
        leafDone = true;
        break;
      } else if ((m = RE_FENCE.exec(rest)) && !(m[2][0] === "`" && m[3].includes("`"))) {
        this.closeUnmatched(container);
        const info = m[3].trim().split(/[ \t]/)[0];
        container = this.add(container, block("code", { fence: m[2], fenceIndent: m[1].length, info: unescapeText(info), lines: [] }));
        leafDone = true;
        break;
      } else if (container.type === "paragraph" && RE_TABLE_DELIM.test(rest) && this.startTable(container, rest)) {
        leafDone = true;
        break;
      } else if (container.type === "paragraph" && RE_SETEXT.test(rest)) {
        container.content = trimEnd(container.lines.join("\n"));
        container.type = "heading";
        container.level = rest.trim()[0] === "=" ? 1 : 2;
        this.close(container);
        leafDone = true;
        break;
      } else if (RE_HR.test(rest)) {
        this.closeUnmatched(container);
        this.close(this.add(container, block("hr")));
        leafDone = true;
        break;
      } else if (!deepEnough && (m = RE_BULLET.exec(rest) || RE_ORDERED.exec(rest))) {
        const ordered = m.length === 3;
        const after = rest.slice(m[0].length);
        const empty = isBlank(after);
        if (container.type === "paragraph" && (empty || (ordered && Number(m[1]) !== 1))) break;
        this.closeUnmatched(container);
        const spaces = indentOf(after);
        const width = m[0].length;
        const indent = empty || spaces >= 5 ? width + 1 : width + spaces;
        const kind = ordered ? m[2] : m[1];
        if (!(container.type === "list" && container.kind === kind && container.open)) {
          container = this.add(container, block("list", { ordered, kind, start: ordered ? Number(m[1]) : 1 }));
        }
        container = this.add(container, block("item", { indent }));
        rest = empty ? "" : stripCols(after, spaces >= 5 ? 1 : spaces);
        started = true;
        if (empty) break;
      } else {
        break;
      }
    }
    if (leafDone) return;

    if (!started && !allMatched && !isBlank(rest) && this.tip.type === "paragraph") {
      this.tip.lines.push(rest.replace(/^[ \t]+/, "")); // a lazy continuation line
      return;
    }
    this.closeUnmatched(container);
    if (container.type === "code") {
      container.lines.push(rest);
    } else if (isBlank(rest)) {
      for (const b of blankIn) b.sawBlank = true;
      if (started) container.sawBlank = false;
      return;
    } else if (container.type === "paragraph") {
      container.lines.push(rest.replace(/^[ \t]+/, ""));
    } else if (container.type === "table") {
      container.rows.push(splitRow(rest));
    } else {
      this.add(container, block("paragraph", { lines: [rest.replace(/^[ \t]+/, "")] }));
    }
    for (let b = container; b; b = b.parent) b.sawBlank = false;
  }

  /** GFM: the paragraph's last line is a table's header when `delim` is its delimiter row. */
  startTable(para, delim) {
    const header = para.lines[para.lines.length - 1];
    if (!header.includes("|") && !delim.includes("|")) return false;
    const cells = splitRow(header);
    const align = splitRow(delim).map((c) => {
      const left = c.startsWith(":");
      const right = c.endsWith(":");
      return left && right ? "center" : right ? "right" : left ? "left" : null;
    });
    if (cells.length !== align.length) return false;
    const parent = para.parent;
    para.lines.pop();
    if (para.lines.length) this.close(para);
    else {
      parent.children.pop();
      this.tip = parent;
    }
    this.closeUnmatched(parent);
    const table = this.add(parent, block("table", { align, head: cells, rows: [] }));
    if (parent === this.root) table.startLine = this.lineNo - 1;
    return true;
  }
}

/** Parse Markdown into a tree of blocks (paragraph and heading content is still inline source). */
export function parseBlocks(text) {
  return new BlockParser().parse(text.split("\n"));
}
