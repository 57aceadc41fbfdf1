"""The README and --help say what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from navi_actor import config, protocol

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_option_is_in_the_readme_table():
    """Each serve option's flag and environment variable appear in the README's table."""
    for opt in config.OPTIONS:
        assert f"| `{opt.flag}` | `{opt.env}` |" in README, opt.flag


def test_every_error_code_is_documented():
    """Each error code the protocol module defines is in the README."""
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in README, code


def test_help_runs_and_names_serve():
    """`navi-actor --help` and `navi-actor serve --help` run and describe the options."""
    top = subprocess.run([sys.executable, "-m", "navi_actor", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "serve" in top.stdout
    serve = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--help"], capture_output=True, text=True)
    assert serve.returncode == 0
    for opt in config.OPTIONS:
        assert opt.flag in serve.stdout and opt.env in serve.stdout
