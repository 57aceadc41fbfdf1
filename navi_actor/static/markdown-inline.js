/* navi-actor chat page: the inline phase of the Markdown renderer (see markdown.js).
 *
 * CommonMark inlines: code spans, emphasis and strong (the delimiter-run
 * algorithm), GFM ~~strikethrough~~, inline links and images, <autolinks>,
 * entities, backslash escapes, hard and soft breaks. Raw HTML is text. Every
 * look-ahead draws on a budget proportional to the input, so hostile text
 * takes linear time. Pure: no DOM.
 */

const MAX_LINK_PARENS = 32;

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
export function unescapeText(s) {
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
