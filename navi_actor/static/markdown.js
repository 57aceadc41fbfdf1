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
 * Reading order: block parser, inline parser, URLs, virtual nodes, DOM patch,
 * MarkdownView.
 */

/** Block quotes and list items nested deeper than this are text. */
export const MAX_DEPTH = 32;
/** Emphasis and links nested deeper than this are flattened to their text. */
export const MAX_INLINE_DEPTH = 32;
const SAFE_SCHEMES = new Set(["http", "https", "mailto"]);
const MAX_LINK_PARENS = 32;
/** Finished blocks per chunk (a div.md-chunk): see MarkdownView.finish. */
const CHUNK_SIZE = 32;

/** Counters for the tests: work done since the page loaded (numbers only). */
export const stats = { renders: 0, parsedChars: 0, reparsedChars: 0, maxReparsed: 0, nodesBuilt: 0 };

// ── block parser ──────────────────────────────────────────────────────────

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
class BlockParser {
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

// ── inline parser ─────────────────────────────────────────────────────────

const ESCAPABLE = /^[!-/:-@[-`{-~]$/;
const PUNCT = /[!-/:-@[-`{-~\p{P}\p{S}]/u;
const WS = /\s/u;
const RE_TEXT = /[^\\`*_~[\]!<&\n]+/y;
const RE_ENTITY = /&(#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,7}|[A-Za-z][A-Za-z0-9]{1,31});/y;
const RE_AUTOLINK = /<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\x00-\x20<>]*)>/y;
const RE_EMAIL = /<([a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*)>/y;
const NAMED = {
  amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0", copy: "©", reg: "®", trade: "™",
  hellip: "…", mdash: "—", ndash: "–", lsquo: "‘", rsquo: "’", ldquo: "“", rdquo: "”", laquo: "«",
  raquo: "»", times: "×", divide: "÷", deg: "°", plusmn: "±", middot: "·", bull: "•", euro: "€",
  pound: "£", yen: "¥", cent: "¢", sect: "§", para: "¶", larr: "←", rarr: "→", uarr: "↑", darr: "↓",
  harr: "↔", le: "≤", ge: "≥", ne: "≠", asymp: "≈", infin: "∞", minus: "−", shy: "\u00ad",
};

function decodeEntity(name) {
  if (name[0] !== "#") return Object.hasOwn(NAMED, name) ? NAMED[name] : null;
  const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
  return code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff) ? "\ufffd" : String.fromCodePoint(code);
}

/** Backslash escapes and entities resolved (link destinations, titles, info strings). */
function unescapeText(s) {
  if (!/[\\&]/.test(s)) return s;
  return s.replace(/\\([!-/:-@[-`{-~])|&(#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,7}|[A-Za-z][A-Za-z0-9]{1,31});/g,
    (whole, escaped, entity) => escaped || (decodeEntity(entity) ?? whole));
}

// Inline nodes form doubly linked lists, so that emphasis can wrap a run of siblings cheaply.
function inl(type, text) {
  return { type, text, parent: null, prev: null, next: null, first: null, last: null };
}
function append(parent, n) {
  n.parent = parent;
  n.prev = parent.last;
  n.next = null;
  if (parent.last) parent.last.next = n;
  else parent.first = n;
  parent.last = n;
}
function unlink(n) {
  if (n.prev) n.prev.next = n.next;
  else n.parent.first = n.next;
  if (n.next) n.next.prev = n.prev;
  else n.parent.last = n.prev;
  n.prev = n.next = n.parent = null;
}
function insertAfter(ref, n) {
  n.parent = ref.parent;
  n.prev = ref;
  n.next = ref.next;
  if (ref.next) ref.next.prev = n;
  else ref.parent.last = n;
  ref.next = n;
}

class InlineParser {
  constructor(src) {
    this.src = src;
    this.pos = 0;
    this.root = inl("root");
    this.delims = null; // top of the delimiter stack (a linked list)
    this.brackets = [];
    this.inactiveBelow = 0; // brackets below this index cannot open a link (no links in links)
    this.noCloser = new Set(); // backtick run lengths with no closing run further on
    this.budget = 16 * src.length + 4096; // characters the look-aheads may scan in all: bounded time
  }

  text(s) {
    append(this.root, inl("text", s));
  }

  parse() {
    const src = this.src;
    while (this.pos < src.length) {
      const c = src[this.pos];
      if (c === "\n") this.newline();
      else if (c === "\\") this.backslash();
      else if (c === "`") this.codeSpan();
      else if (c === "*" || c === "_" || c === "~") this.delimRun(c);
      else if (c === "[") this.openBracket(false, 1);
      else if (c === "!" && src[this.pos + 1] === "[") this.openBracket(true, 2);
      else if (c === "]") this.closeBracket();
      else if (c === "<") this.autolink();
      else if (c === "&") this.entity();
      else if (c === "!") {
        this.text("!");
        this.pos += 1;
      } else {
        RE_TEXT.lastIndex = this.pos;
        const m = RE_TEXT.exec(src);
        this.text(m[0]);
        this.pos += m[0].length;
      }
    }
    this.processEmphasis(null);
    return this.root;
  }

  newline() {
    const last = this.root.last;
    let hard = false;
    if (last && last.type === "text" && !last.delim) {
      let end = last.text.length;
      while (end > 0 && last.text[end - 1] === " ") end -= 1;
      hard = last.text.length - end >= 2;
      last.text = last.text.slice(0, end);
    }
    append(this.root, inl(hard ? "br" : "softbreak"));
    this.pos += 1;
    while (this.src[this.pos] === " " || this.src[this.pos] === "\t") this.pos += 1;
  }

  backslash() {
    const next = this.src[this.pos + 1];
    if (next === "\n") {
      append(this.root, inl("br"));
      this.pos += 2;
      while (this.src[this.pos] === " ") this.pos += 1;
    } else if (next !== undefined && ESCAPABLE.test(next)) {
      this.text(next);
      this.pos += 2;
    } else {
      this.text("\\");
      this.pos += 1;
    }
  }

  runLength(at, ch) {
    let end = at;
    while (this.src[end] === ch) end += 1;
    return end - at;
  }

  codeSpan() {
    const src = this.src;
    const n = this.runLength(this.pos, "`");
    const from = this.pos + n;
    let found = -1;
    if (!this.noCloser.has(n)) {
      let i = from;
      while ((i = src.indexOf("`", i)) !== -1) {
        const len = this.runLength(i, "`");
        if (len === n) {
          found = i;
          break;
        }
        i += len;
      }
      if (found === -1) this.noCloser.add(n);
    }
    if (found === -1) {
      this.text("`".repeat(n));
      this.pos = from;
      return;
    }
    let code = src.slice(from, found).replace(/\n/g, " ");
    if (code.length > 2 && code[0] === " " && code[code.length - 1] === " " && /[^ ]/.test(code)) code = code.slice(1, -1);
    append(this.root, inl("code", code));
    this.pos = found + n;
  }

  delimRun(ch) {
    const src = this.src;
    const n = this.runLength(this.pos, ch);
    const before = this.pos > 0 ? src[this.pos - 1] : "\n";
    const after = this.pos + n < src.length ? src[this.pos + n] : "\n";
    const node = inl("text", src.slice(this.pos, this.pos + n));
    append(this.root, node);
    this.pos += n;
    if (ch === "~" && n > 2) return; // GFM strikethrough is ~ or ~~
    const wsA = WS.test(after);
    const wsB = WS.test(before);
    const pA = PUNCT.test(after);
    const pB = PUNCT.test(before);
    const left = !wsA && (!pA || wsB || pB);
    const right = !wsB && (!pB || wsA || pA);
    const canOpen = ch === "_" ? left && (!right || pB) : left;
    const canClose = ch === "_" ? right && (!left || pA) : right;
    if (!canOpen && !canClose) return;
    node.delim = true;
    const d = { node, ch, count: n, orig: n, canOpen, canClose, prev: this.delims, next: null };
    if (this.delims) this.delims.next = d;
    this.delims = d;
  }

  removeDelim(d) {
    if (d.prev) d.prev.next = d.next;
    if (d.next) d.next.prev = d.prev;
    else this.delims = d.prev;
  }

  openBracket(image, width) {
    const node = inl("text", image ? "![" : "[");
    append(this.root, node);
    this.brackets.push({ node, image, prevDelim: this.delims });
    this.pos += width;
  }

  popBracket() {
    this.brackets.pop();
    this.inactiveBelow = Math.min(this.inactiveBelow, this.brackets.length);
  }

  closeBracket() {
    this.pos += 1;
    const opener = this.brackets[this.brackets.length - 1];
    if (!opener) return this.text("]");
    const active = opener.image || this.brackets.length - 1 >= this.inactiveBelow;
    const tail = active ? this.linkTail(this.pos) : null;
    if (!tail) {
      this.popBracket();
      return this.text("]");
    }
    this.pos = tail.end;
    const link = inl(opener.image ? "image" : "link");
    link.dest = tail.dest;
    link.title = tail.title;
    for (let n = opener.node.next; n; ) {
      const next = n.next;
      unlink(n);
      append(link, n);
      n = next;
    }
    this.processEmphasis(opener.prevDelim);
    this.popBracket();
    insertAfter(opener.node, link);
    unlink(opener.node);
    if (!opener.image) this.inactiveBelow = this.brackets.length;
  }

  /** `(destination "title")` at `at`: {dest, title, end} or null. */
  linkTail(at) {
    const src = this.src;
    if (src[at] !== "(") return null;
    const skip = (i) => {
      let newlines = 0;
      while (src[i] === " " || src[i] === "\t" || (src[i] === "\n" && newlines++ === 0)) i += 1;
      return i;
    };
    let i = skip(at + 1);
    const limit = Math.min(src.length, i + Math.max(0, this.budget));
    const begin = i;
    let dest;
    if (src[i] === "<") {
      let j = i + 1;
      while (j < limit && src[j] !== ">" && src[j] !== "<" && src[j] !== "\n") j += src[j] === "\\" ? 2 : 1;
      this.budget -= j - begin;
      if (src[j] !== ">") return null;
      dest = src.slice(i + 1, j);
      i = j + 1;
    } else {
      let depth = 0;
      while (i < limit) {
        const c = src[i];
        if (c === "\\" && ESCAPABLE.test(src[i + 1] || "")) {
          i += 2;
          continue;
        }
        if (c === "(" && ++depth > MAX_LINK_PARENS) break;
        if (c === ")" && depth-- === 0) break;
        if (c <= " ") break;
        i += 1;
      }
      this.budget -= i - begin;
      if (i >= limit || (src[i] !== ")" && src[i] > " ")) return null;
      dest = src.slice(begin, i);
    }
    let j = skip(i);
    let title = null;
    if (j > i && (src[j] === '"' || src[j] === "'" || src[j] === "(")) {
      const close = src[j] === "(" ? ")" : src[j];
      let k = j + 1;
      const tlimit = Math.min(src.length, k + Math.max(0, this.budget));
      while (k < tlimit && src[k] !== close) k += src[k] === "\\" ? 2 : 1;
      this.budget -= k - j;
      if (k >= tlimit) return null;
      title = unescapeText(src.slice(j + 1, k));
      j = skip(k + 1);
    }
    if (src[j] !== ")") return null;
    return { dest: unescapeText(dest), title, end: j + 1 };
  }

  autolink() {
    let m;
    RE_AUTOLINK.lastIndex = this.pos;
    if ((m = RE_AUTOLINK.exec(this.src))) {
      const link = inl("link");
      link.dest = m[1];
      append(link, inl("text", m[1]));
      append(this.root, link);
      this.pos += m[0].length;
      return;
    }
    RE_EMAIL.lastIndex = this.pos;
    if ((m = RE_EMAIL.exec(this.src))) {
      const link = inl("link");
      link.dest = `mailto:${m[1]}`;
      append(link, inl("text", m[1]));
      append(this.root, link);
      this.pos += m[0].length;
      return;
    }
    this.text("<");
    this.pos += 1;
  }

  entity() {
    RE_ENTITY.lastIndex = this.pos;
    const m = RE_ENTITY.exec(this.src);
    const decoded = m && decodeEntity(m[1]);
    if (decoded === null || decoded === undefined) {
      this.text("&");
      this.pos += 1;
    } else {
      this.text(decoded);
      this.pos += m[0].length;
    }
  }

  /** CommonMark's "process emphasis" on the delimiters above `bottom`. */
  processEmphasis(bottom) {
    if (this.delims === bottom) return;
    const openersBottom = new Map();
    let closer = this.delims;
    while (closer.prev && closer.prev !== bottom) closer = closer.prev;
    while (closer) {
      if (!closer.canClose) {
        closer = closer.next;
        continue;
      }
      const key = `${closer.ch}${closer.canOpen ? 1 : 0}${closer.ch === "~" ? closer.orig : closer.orig % 3}`;
      const floor = openersBottom.has(key) ? openersBottom.get(key) : bottom;
      let opener = closer.prev;
      let found = false;
      while (opener && opener !== bottom && opener !== floor) {
        if (opener.ch === closer.ch && opener.canOpen) {
          if (closer.ch === "~") {
            if (opener.count === closer.count) {
              found = true;
              break;
            }
          } else {
            const odd = (closer.canOpen || opener.canClose) && closer.orig % 3 !== 0 && (opener.orig + closer.orig) % 3 === 0;
            if (!odd) {
              found = true;
              break;
            }
          }
        }
        opener = opener.prev;
      }
      if (!found) {
        openersBottom.set(key, closer.prev);
        const next = closer.next;
        if (!closer.canOpen) this.removeDelim(closer);
        closer = next;
        continue;
      }
      const use = closer.ch === "~" ? closer.count : closer.count >= 2 && opener.count >= 2 ? 2 : 1;
      opener.count -= use;
      closer.count -= use;
      opener.node.text = opener.node.text.slice(0, opener.count);
      closer.node.text = closer.node.text.slice(0, closer.count);
      const wrap = inl(closer.ch === "~" ? "del" : use === 1 ? "em" : "strong");
      for (let n = opener.node.next; n && n !== closer.node; ) {
        const next = n.next;
        unlink(n);
        append(wrap, n);
        n = next;
      }
      insertAfter(opener.node, wrap);
      for (let d = closer.prev; d && d !== opener; ) {
        const prev = d.prev;
        this.removeDelim(d);
        d = prev;
      }
      if (opener.count === 0) {
        unlink(opener.node);
        this.removeDelim(opener);
      }
      if (closer.count === 0) {
        const next = closer.next;
        unlink(closer.node);
        this.removeDelim(closer);
        closer = next;
      }
    }
    while (this.delims && this.delims !== bottom) this.removeDelim(this.delims);
  }
}

/** Parse inline Markdown into a tree of inline nodes (linked lists: first/next). */
export function parseInline(src) {
  return new InlineParser(src).parse();
}

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
