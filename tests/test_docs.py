"""The README, docs/ and --help say what the code does, and their links lead somewhere."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from navi_actor import cli, config, protocol

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Every document a reader follows links through.
DOCUMENTS = [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def read(name: str) -> str:
    return (ROOT / name).read_text()


# ── the documents against the code ──────────────────────────────────────────


def _table_rows(text: str) -> dict[str, list[str]]:
    """``| `--flag` | `NAVI_X` | default | meaning |`` rows of a document, by flag."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `--"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_serve_option_is_in_the_configuration_tables():
    """Each serve option's flag and environment variable appear in docs/configuration.md's tables."""
    text = read("docs/configuration.md")
    for opt in config.OPTIONS:
        assert f"| `{opt.flag}` | `{opt.env}` |" in text, opt.flag


def test_configuration_defaults_are_the_codes():
    """The default column of each option is the default config.py applies, and no option is listed twice."""
    text = read("docs/configuration.md")
    rows = _table_rows(text)
    flags = [line.split("`")[1] for line in text.splitlines() if line.startswith("| `--")]
    serve_flags = {opt.flag for opt in config.OPTIONS}
    assert len([f for f in flags if f in serve_flags]) == len(serve_flags), "an option is listed twice"
    for opt in config.OPTIONS:
        shown = rows[opt.flag][2]
        if opt.switch:
            assert shown == "off" and opt.default is False, (opt.flag, shown)
        elif opt.default in ("", ()):
            assert shown.startswith("none"), (opt.flag, shown)
        else:
            value = shown.split("`")[1]
            assert opt.parse(value) == opt.default, (opt.flag, shown, opt.default)


def _subcommand_flags(name: str) -> list[str]:
    parser = cli.build_parser({})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [s for a in sub.choices[name]._actions for s in a.option_strings if s.startswith("--") and s != "--help"]


@pytest.mark.parametrize("command", ["ps", "kill", "token"])
def test_every_option_of_the_other_commands_is_documented(command):
    """`navi-actor ps`, `kill` and `token`: every flag is in docs/configuration.md's section of that command."""
    text = read("docs/configuration.md")
    section = text.split(f"### navi-actor {command}\n", 1)[1].split("\n### ", 1)[0]
    for flag in _subcommand_flags(command):
        assert f"`{flag}" in section, (command, flag)


def test_every_error_code_is_documented():
    """Each error code the protocol module defines is in docs/protocol.md's table, once."""
    text = read("docs/protocol.md")
    for code in protocol.ERROR_CODES:
        assert text.count(f"| `{code}` |") == 1, code


def test_every_openai_variable_is_documented():
    """Each NAVI_OPENAI_* variable the openai agent reads is in docs/agents.md's settings table."""
    source = read("navi_actor/agents/openai/settings.py")
    variables = set(re.findall(r'"(NAVI_OPENAI_[A-Z_]*[A-Z])"', source))  # env.get("NAVI_OPENAI_X")
    variables |= {"NAVI_OPENAI_" + name for name in re.findall(r'\b(?:get|number)\("([A-Z][A-Z_]*[A-Z])"', source)
                  if not name.startswith("NAVI_")}  # get("X") and number("X", …): the prefix is added
    assert len(variables) >= 10, variables  # the pattern still finds what the agent reads
    text = read("docs/agents.md")
    for var in variables:
        assert f"| `{var}` |" in text, var


def test_the_readme_commands_exist():
    """The two commands the README starts with are there and executable."""
    readme = read("README.md")
    for script in ("scripts/serve", "scripts/test"):
        assert f"\n{script} " in readme, script
        assert os.access(ROOT / script, os.X_OK), script


def test_help_runs_and_names_serve():
    """`navi-actor --help` and `navi-actor serve --help` run and describe the options."""
    top = subprocess.run([sys.executable, "-m", "navi_actor", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "serve" in top.stdout
    serve = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--help"], capture_output=True, text=True)
    assert serve.returncode == 0
    for opt in config.OPTIONS:
        assert opt.flag in serve.stdout and opt.env in serve.stdout


def _readme_client() -> str:
    section = read("README.md").split("## A first turn\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_client_streams_a_first_turn(make_server):
    """The README's Python client, run as it is against a real server, prints the demo agent's answer."""
    server = make_server("demo", env={"NAVI_AGENT_TOKENS_PER_SECOND": "0"})
    env = {**os.environ, "NAVI_URL": server.url}
    done = subprocess.run([sys.executable, "-c", _readme_client(), "what is 2 + 40?"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "add up to 42" in done.stdout, done.stdout
    assert done.stdout.endswith("\n")


# ── the documents themselves ────────────────────────────────────────────────


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = _anchor(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_a_file_and_an_anchor(doc):
    """Every relative link in README.md, SECURITY.md, CHANGELOG.md and docs/*.md names an existing file and heading."""
    assert doc.exists(), doc
    for link in _links(doc):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {link} leads to no file"
        if anchor:
            assert path.suffix == ".md", f"{doc.name}: {link} has an anchor in a file that has none"
            assert anchor in _anchors(path), f"{doc.name}: {link}: no such heading in {path.name}"


def test_the_readme_links_every_topic():
    """The README is the front door: it links each docs/ file, and stays short."""
    readme = read("README.md")
    for doc in sorted(DOCS.glob("*.md")):
        assert f"](docs/{doc.name})" in readme, doc.name
    assert len(readme.splitlines()) <= 220


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_headings_are_unique_and_words_are_public(doc):
    """No two sections of a document share a heading, no table repeats its header row,
    and no document speaks in words only the team knows (issue numbers, numbered invariants)."""
    text = doc.read_text()
    if doc.name != "CHANGELOG.md":  # a changelog repeats "### Added" under each release
        headings = [line for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines()
                    if re.match(r"#{1,6} ", line)]
        assert len(headings) == len(set(headings)), [h for h in headings if headings.count(h) > 1]
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            table = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                table.append(row)
            assert line not in table, f"{doc.name}: the header row {line!r} repeats inside its table"
    for word in (r"\bissue \d+", r"\bInvariant \d+", r"\boriginal single-process endpoint\b"):
        assert not re.search(word, text), f"{doc.name}: {word}"
