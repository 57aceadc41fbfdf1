"""The chat page's Markdown renderer (navi_actor/static/markdown*.js), run under Node.

tests/markdown_render.mjs imports the module and renders into a small fake
document that has no HTML parser at all (no innerHTML and the like), then
serialises what was built. One Node process renders every case of this
module. Without Node these tests skip, saying so.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import warnings
from typing import Any

import pytest

from tests.agents import SAMPLE_MARKDOWN, markdown_tokens
from tests.conftest import ROOT

STATIC = ROOT / "navi_actor" / "static"
HARNESS = ROOT / "tests" / "markdown_render.mjs"
REL = 'rel="noopener noreferrer" target="_blank"'


def code(text: str, lang: str | None = None) -> str:
    head = f' data-lang="{lang}"' if lang else ""
    return (f'<div class="md-code"><div class="md-code-head"{head}><button type="button" class="md-copy" '
            f'aria-label="Copy code" title="Copy code"></button></div><pre><code>{text}</code></pre></div>')


def a(href: str, text: str, extra: str = "") -> str:
    return f'<a href="{href}" {REL}{extra}>{text}</a>'


REFUSED = '<span class="md-link-refused">{}</span>'

#: name → (Markdown, the HTML built from it)
CASES: dict[str, tuple[str, str]] = {
    "paragraphs": ("one\ntwo\n\nthree", "<p>one\ntwo</p><p>three</p>"),
    "emphasis": ("*a* _b_ **c** __d__ ***e*** ~~f~~ snake_case_name *a **b** c*",
                 "<p><em>a</em> <em>b</em> <strong>c</strong> <strong>d</strong> <em><strong>e</strong></em> "
                 "<del>f</del> snake_case_name <em>a <strong>b</strong> c</em></p>"),
    "unclosed emphasis": ("**not closed and *neither", "<p>**not closed and *neither</p>"),
    "inline code": ("`a < b` and `` x`y `` and ` z `", "<p><code>a &lt; b</code> and <code>x`y</code> and <code>z</code></p>"),
    "atx headings": ("# h1\n## h2 ##\n###### h6\n#not\n####### seven",
                     "<h1>h1</h1><h2>h2</h2><h6>h6</h6><p>#not\n####### seven</p>"),
    "setext headings": ("Title\n=====\nSub\n---", "<h1>Title</h1><h2>Sub</h2>"),
    "thematic breaks": ("***\n- - -\n___", "<hr><hr><hr>"),
    "fenced code": ("```py\nif a < b:\n    pass\n```\nafter", code("if a &lt; b:\n    pass\n", "py") + "<p>after</p>"),
    "tilde fence, never closed": ("~~~\nopen\n\nstill", code("open\n\nstill\n")),
    "indented code": ("    a\n      b\n\n    c\n\npara", code("a\n  b\n\nc\n") + "<p>para</p>"),
    "block quote, lazy line": ("> a\nb\n\n> c\n> > d", "<blockquote><p>a\nb</p></blockquote><blockquote><p>c</p>"
                                                      "<blockquote><p>d</p></blockquote></blockquote>"),
    "nested lists": ("- a\n  - b\n    - c\n- d\n\n1. x\n1. y",
                     "<ul><li>a<ul><li>b<ul><li>c</li></ul></li></ul></li><li>d</li></ul><ol><li>x</li><li>y</li></ol>"),
    "ordered list start": ("3. x\n4) new list", '<ol start="3"><li>x</li></ol><ol start="4"><li>new list</li></ol>'),
    "loose list": ("- a\n\n- b\n\n  more", "<ul><li><p>a</p></li><li><p>b</p><p>more</p></li></ul>"),
    "list interrupts a paragraph": ("para\n- item\n\ntext\n2. not a list", "<p>para</p><ul><li>item</li></ul><p>text\n2. not a list</p>"),
    "code in a list item": ("- a\n  ```\n  x\n\n  y\n  ```\n- b", "<ul><li>a" + code("x\n\ny\n") + "</li><li>b</li></ul>"),
    "links": ('[t](https://e.com/x "ti") [r](/a/b?c=1) [m](mailto:x@y.z) [e]()',
              "<p>" + a("https://e.com/x", "t", ' title="ti"') + " " + a("/a/b?c=1", "r") + " " + a("mailto:x@y.z", "m")
              + " " + a("", "e") + "</p>"),
    "autolinks": ("<https://e.com/a?b> <me@e.org>", "<p>" + a("https://e.com/a?b", "https://e.com/a?b") + " "
                  + a("mailto:me@e.org", "me@e.org") + "</p>"),
    "image as a link": ("![a *cat*](https://e.com/c.png)", '<p><a href="https://e.com/c.png" ' + REL
                        + ' class="md-image">a cat</a></p>'),
    "hard breaks": ("a  \nb\\\nc\nd", "<p>a<br>b<br>c\nd</p>"),
    "table": ("| a | b | c |\n|:--|:-:|--:|\n| 1 | **2** |\n| x \\| y | z | w | extra |",
              '<div class="md-table"><table><thead><tr><th data-align="left">a</th><th data-align="center">b</th>'
              '<th data-align="right">c</th></tr></thead><tbody><tr><td data-align="left">1</td>'
              '<td data-align="center"><strong>2</strong></td><td data-align="right"></td></tr>'
              '<tr><td data-align="left">x | y</td><td data-align="center">z</td><td data-align="right">w</td></tr>'
              "</tbody></table></div>"),
    "table after a paragraph": ("intro\na | b\n--|--\n1 | 2", '<p>intro</p><div class="md-table"><table><thead><tr><th>a</th>'
                                "<th>b</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr></tbody></table></div>"),
    "not a table": ("a | b\n--|--|--", "<p>a | b\n--|--|--</p>"),
    "entities": ("&amp; &lt;b&gt; &#65;&#x42; &copy; &bogus; &#0;", "<p>&amp; &lt;b&gt; AB © &amp;bogus; \ufffd</p>"),
    "backslash escapes": ("\\*not em\\* \\[x\\](y) \\a \\<b>", "<p>*not em* [x](y) \\a &lt;b&gt;</p>"),
    "nested brackets": ("[[[x]]](http://a) [a [b](http://in) c](http://out)",
                        "<p>" + a("http://a", "[[x]]") + " [a " + a("http://in", "b") + " c](http://out)</p>"),
    "link destination with parentheses": ("[w](https://e.org/a_(b)) [u](<https://e.org/a b>)",
                                           "<p>" + a("https://e.org/a_(b)", "w") + " " + a("https://e.org/a b", "u") + "</p>"),
    # hostile input
    "script tag": ("<script>alert(1)</script>\n\n<div onclick=alert(1)>x</div>",
                   "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p><p>&lt;div onclick=alert(1)&gt;x&lt;/div&gt;</p>"),
    "img onerror": ('<img src=x onerror="alert(1)"> and <b>bold</b>',
                    '<p>&lt;img src=x onerror="alert(1)"&gt; and &lt;b&gt;bold&lt;/b&gt;</p>'),
    "javascript: link": ("[x](javascript:alert(1))", "<p>" + REFUSED.format("x") + "</p>"),
    "JAVASCRIPT: after a space": ("[x]( JAVASCRIPT:alert(1))", "<p>" + REFUSED.format("x") + "</p>"),
    "mixed case, title": ('[x](JaVaScRiPt:alert(1) "t")', "<p>" + REFUSED.format("x") + "</p>"),
    "tab inside the scheme": ("[x](<java\tscript:alert(1)>)", "<p>" + REFUSED.format("x") + "</p>"),
    "entity-encoded scheme": ("[a](&#106;avascript:alert(1)) [b](javascript&#58;alert(1)) [c](&#x6A;&#x61;vascript:x) "
                              "[d](jav&#x09;ascript:x)",
                              "<p>" + " ".join(REFUSED.format(c) for c in "abcd") + "</p>"),
    "unknown entity stays text": ("[a](javascript&colon;alert(1))", "<p>" + a("javascript&amp;colon;alert(1)", "a") + "</p>"),
    "data: and vbscript:": ("[d](data:text/html,<b>x</b>) [d2](DATA:image/png;base64,AAAA) [v](vbscript:msgbox)",
                            "<p>" + REFUSED.format("d") + " " + REFUSED.format("d2") + " " + REFUSED.format("v") + "</p>"),
    "javascript: autolink and image": ("<javascript:alert(1)> ![i](javascript:alert(2))",
                                       "<p>" + REFUSED.format("javascript:alert(1)") + " " + REFUSED.format("i") + "</p>"),
    "backslash before the scheme is a path": ("[z](\\javascript:alert(1))", "<p>" + a("\\javascript:alert(1)", "z") + "</p>"),
    "link text cannot nest links": ("[[a](http://in)](javascript:x)", "<p>[" + a("http://in", "a") + "](javascript:x)</p>"),
}

#: name → Markdown that must render in bounded time without a stack overflow
HOSTILE: dict[str, str] = {
    "10k nested >": ">" * 10_000 + " deep",
    "10k nested > lines": "\n".join(">" * i + " x" for i in range(0, 2000, 7)),
    "10k nested bullets": "- " * 10_000 + "x",
    "10k nested ordered": "1. " * 10_000 + "x",
    "1k lines of deepening lists": "\n".join("  " * i + "- x" for i in range(1000)),
    "deep emphasis": "*" * 10_000 + "a" + "*" * 10_000,
    "many openers": "*a" * 50_000,
    "underscores": "_a " * 30_000 + " b_" * 30_000,
    "50k [": "[" * 50_000 + "](" * 50_000,
    "50k unclosed links": "[a](" * 50_000,
    "50k unclosed titles": '[a](b "' * 30_000,
    "backtick runs": "".join("`" * (i % 40) + "a" for i in range(20_000)),
    "1 MB line": "word " * 200_000,
    "1 MB of spaces inside a heading": "# a" + " " * 1_000_000 + "b",
    "many <": "<a" * 100_000,
    "many entities": "&#x" * 100_000 + "&amp;" * 10_000,
    "long table": "|a|b|\n|-|-|\n" + "|x|y|\n" * 20_000,
}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        message = "MARKDOWN TESTS SKIPPED — no `node` on PATH (Node 20 runs tests/markdown_render.mjs)"
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)
    return node


def render(cases: dict[str, str] | None = None, streams: dict[str, list[str]] | None = None) -> dict[str, Any]:
    proc = subprocess.run([_node(), str(HARNESS)], input=json.dumps({"cases": cases or {}, "streams": streams or {}}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return render({name: md for name, (md, _) in CASES.items()} | {f"hostile: {n}": md for n, md in HOSTILE.items()})["cases"]


@pytest.mark.parametrize("name", list(CASES))
def test_construct_renders(rendered: dict[str, Any], name: str) -> None:
    """Each construct (and each hostile snippet) builds exactly the elements expected: raw HTML stays text, bad URLs are no links."""
    assert rendered[name]["html"] == CASES[name][1]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_renders_in_bounded_time(rendered: dict[str, Any], name: str) -> None:
    """Deep nesting and huge lines render (no stack overflow) in bounded time, nesting capped, no element made from their text."""
    result = rendered[f"hostile: {name}"]
    html = result["html"]
    assert not html.startswith("ERROR"), html[:2000]
    assert result["ms"] < 5000, f"{name} took {result['ms']:.0f} ms"
    assert html.count("<blockquote>") <= 32 and html.count("<li>") <= 20_000 and html.count("<strong>") <= 32
    depth = max_depth(html)
    assert depth <= 40, f"{name}: elements nested {depth} deep"
    assert not re.search(r"<(?!/?(p|h[1-6]|em|strong|del|code|pre|div|button|blockquote|ul|ol|li|hr|br|table|thead|tbody|tr|th|td|a|span)[ >])", html)


def max_depth(html: str) -> int:
    depth = deepest = 0
    for m in re.finditer(r"<(/?)([a-z0-9]+)", html):
        if m.group(2) in ("br", "hr"):
            continue
        depth += -1 if m.group(1) else 1
        deepest = max(deepest, depth)
    return deepest


def chunked(text: str, seed: int, most: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, most)
        out.append(text[i:i + n])
        i += n
    return out


STREAMED = {
    "sample": SAMPLE_MARKDOWN,
    "tricky": "para\nstill\n===\n\nx | y\n-|-\n1|2\nlazy\n\n- a\n\n- b\n  > q\nlazy\n\n```\nfence\n\n```\n"
              "> quote\n---\n1. one\n10. ten\n\n    code\n\ttab\n\nend  \nbreak *em\nphasis*",
    "long": "".join(markdown_tokens(3000)),
}


def test_streaming_renders_what_one_pass_renders() -> None:
    """Fed in pieces (one character, or up to 40), the view ends with the DOM of one pass, and never touched a finished block."""
    streams = {}
    for name, text in STREAMED.items():
        streams[f"{name}/chars"] = list(text) if len(text) < 5000 else chunked(text, 1, 3)
        streams[f"{name}/chunks"] = chunked(text, 2, 40)
    out = render(streams=streams)["streams"]
    for name, result in out.items():
        assert result["html"] == result["whole"], name
        assert result["kept"], f"{name}: a finished block's node was replaced or changed"
    assert out["long/chunks"]["held"] > 250  # top-level blocks checked


def test_streaming_work_does_not_grow_with_the_answer() -> None:
    """Streaming a 20,000-token answer re-parses at most the open blocks on each update, never the answer so far."""
    tokens = markdown_tokens(20_000)
    text = "".join(tokens)
    chunks = ["".join(tokens[i:i + 7]) for i in range(0, len(tokens), 7)]
    result = render(streams={"20k": chunks})["streams"]["20k"]
    assert result["html"] == result["whole"] and result["kept"]
    assert len(text) > 90_000
    assert result["maxReparsed"] < 2_000, result["maxReparsed"]


def test_the_page_scripts_never_hand_strings_to_the_html_parser() -> None:
    """The page's scripts build DOM nodes only: no innerHTML, outerHTML, insertAdjacentHTML, document.write or eval."""
    names = sorted(p.name for p in STATIC.glob("*.js"))
    assert {"app.js", "markdown.js", "markdown-blocks.js", "markdown-inline.js"} <= set(names), names
    for name in names:
        source = re.sub(r"/\*.*?\*/|//[^\n]*", "", (STATIC / name).read_text(), flags=re.S)  # comments may name them
        for word in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "createContextualFragment", "DOMParser", "srcdoc"):
            assert word not in source, f"{name} uses {word}"
