"""Unit tests of the security pieces that need no server: tokens, tickets, origins, limits, names."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from navi_actor import config, protocol, sandbox
from navi_actor import tokens
from navi_actor.front import auth, uploads
from navi_actor.front.ratelimit import TokenBucket
from navi_actor.protocol import ClientError

TOKEN_A = "a" * 43
TOKEN_B = "b" * 43


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ── tokens ──────────────────────────────────────────────────────────────────


def test_parse_tokens_reads_lines_comments_and_default_role():
    """Entries are 'TOKEN USER [ROLE]' lines; blanks and # comments are skipped; the role defaults to user."""
    text = f"# comment\n\n{TOKEN_A} alice admin\n  {TOKEN_B}   bob  \n"
    assert tokens.parse_tokens(text, "f") == [(TOKEN_A, "alice", "admin"), (TOKEN_B, "bob", "user")]


def test_parse_tokens_semicolons_for_the_environment():
    """NAVI_TOKENS may separate entries with semicolons."""
    assert len(tokens.parse_tokens(f"{TOKEN_A} alice admin;{TOKEN_B} bob", "NAVI_TOKENS", semicolons=True)) == 2


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("onlyoneword", "expected 'TOKEN USER [ROLE]'"),
        (f"{TOKEN_A} alice admin extra", "expected 'TOKEN USER [ROLE]'"),
        ("short alice", "20 to 512 characters"),
        (f"{TOKEN_A} -alice", "the user"),
        (f"{TOKEN_A} alice root", "must be 'user' or 'admin'"),
    ],
)
def test_parse_tokens_refuses_bad_entries_naming_the_entry_not_the_token(line, fragment):
    """A bad entry is refused with its entry number and what is wrong, and the message never holds the token."""
    with pytest.raises(tokens.AuthConfigError) as err:
        tokens.parse_tokens(f"# first\n{line}\n", "tokens file x")
    assert fragment in str(err.value) and "entry 2" in str(err.value)
    assert TOKEN_A not in str(err.value)


def test_parse_tokens_refuses_a_duplicate_token():
    """The same token twice is refused, naming both entries."""
    with pytest.raises(tokens.AuthConfigError, match="entries 1 and 2"):
        tokens.parse_tokens(f"{TOKEN_A} alice\n{TOKEN_A} bob\n", "f")


def test_token_table_looks_up_by_digest_and_keeps_no_token():
    """A table finds each token's principal, refuses others, and holds only digests."""
    table = tokens.TokenTable([(TOKEN_A, "alice", "admin"), (TOKEN_B, "bob", "user")])
    assert table.lookup(TOKEN_A) == tokens.Principal("alice", "admin")
    assert table.lookup(TOKEN_B) == tokens.Principal("bob", "user")
    for wrong in ("", "a" * 42, TOKEN_A + "x", "x" * 5000):
        assert table.lookup(wrong) is None
    assert TOKEN_A.encode() not in repr(table.__dict__).encode()


def test_tokens_file_must_be_private(tmp_path):
    """A tokens file readable by group or others is refused with the chmod to run; 0600 is read."""
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_A} alice admin\n")
    path.chmod(0o644)
    with pytest.raises(tokens.AuthConfigError, match=r"mode 0644\); run: chmod 600"):
        tokens.load_entries(str(path), None)
    path.chmod(0o600)
    assert tokens.load_entries(str(path), None) == [(TOKEN_A, "alice", "admin")]


def test_tokens_file_and_environment_together_or_empty_are_refused(tmp_path):
    """Setting both sources, naming a missing file, or configuring no token at all is refused clearly."""
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n")
    path.chmod(0o600)
    with pytest.raises(tokens.AuthConfigError, match="keep one"):
        tokens.load_entries(str(path), f"{TOKEN_A} a")
    with pytest.raises(tokens.AuthConfigError, match="holds no token"):
        tokens.load_entries(str(path), None)
    with pytest.raises(tokens.AuthConfigError, match="cannot open the tokens file"):
        tokens.load_entries(str(tmp_path / "missing"), None)
    assert tokens.load_entries("", None) is None


def test_new_tokens_are_long_random_and_valid():
    """navi-actor token's tokens are 43 URL-safe characters, all different, accepted by the parser."""
    fresh = {tokens.new_token() for _ in range(50)}
    assert len(fresh) == 50
    for token in fresh:
        assert len(token) == 43 and tokens.TOKEN_RE.match(token)


def test_token_command_prints_a_usable_tokens_file_line(tmp_path):
    """`navi-actor token --user alice --role admin` prints a line that, in a 0600 file, makes alice an admin."""
    out = subprocess.run([sys.executable, "-m", "navi_actor", "token", "--user", "alice", "--role", "admin"],
                         capture_output=True, text=True, check=True).stdout
    path = tmp_path / "tokens"
    path.write_text(out)
    path.chmod(0o600)
    [(token, user, role)] = tokens.load_entries(str(path), None)
    assert (user, role) == ("alice", "admin") and token in out
    bad = subprocess.run([sys.executable, "-m", "navi_actor", "token", "--user", "../x"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--user" in bad.stderr


# ── tickets ─────────────────────────────────────────────────────────────────


def test_ticket_is_single_use_and_expires():
    """A ticket gives its principal once; a second use, an unknown ticket or a late one gives None."""
    clock = Clock()
    book = auth.TicketBook(30.0, clock)
    alice = tokens.Principal("alice", "user")
    ticket = book.issue(alice)
    assert book.redeem(ticket) == alice
    assert book.redeem(ticket) is None
    assert book.redeem("nope") is None and book.redeem("") is None
    late = book.issue(alice)
    clock.now += 30.01
    assert book.redeem(late) is None


def test_ticket_book_stays_bounded():
    """Expired tickets are pruned and outstanding ones are capped, oldest dropped first."""
    clock = Clock()
    book = auth.TicketBook(1.0, clock)
    book.MAX_OUTSTANDING = 5
    first = book.issue(tokens.LOCAL)
    for _ in range(5):
        book.issue(tokens.LOCAL)
    assert len(book) == 5 and book.redeem(first) is None
    clock.now += 2
    book.issue(tokens.LOCAL)
    assert len(book) == 1


# ── hosts and origins ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "text, normal",
    [
        ("http://Example.com", "http://example.com"),
        ("https://example.com:443/", "https://example.com"),
        ("http://example.com:80", "http://example.com"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://[::1]:8765", "http://[::1]:8765"),
    ],
)
def test_origins_are_normalized(text, normal):
    """Origins compare in lower case, without default ports or a trailing slash."""
    assert config.normalize_origin(text) == normal


@pytest.mark.parametrize("bad", ["null", "example.com", "ftp://x", "http://x/path", "http://x:99999", ""])
def test_bad_origins_are_refused(bad):
    """Anything but scheme://host[:port] with http or https is not an origin."""
    with pytest.raises(ValueError):
        config.normalize_origin(bad)


def test_origin_allowed_is_own_origin_or_listed():
    """A page's Origin passes if it is the server's own (http or https) or in the allow-list; null never."""
    allowed = frozenset({"https://app.example.com"})
    host = "127.0.0.1:8765"
    assert auth.origin_allowed("http://127.0.0.1:8765", host, allowed)
    assert auth.origin_allowed("https://127.0.0.1:8765", host, allowed)
    assert auth.origin_allowed("https://app.example.com", host, allowed)
    assert not auth.origin_allowed("http://evil.example", host, allowed)
    assert not auth.origin_allowed("http://127.0.0.1:9999", host, allowed)
    assert not auth.origin_allowed("null", host, allowed)


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.1", False), ("example.com", False),
])
def test_is_loopback(host, local):
    """Only localhost and loopback addresses count as local."""
    assert tokens.is_loopback(host) is local


def test_split_host_strips_ports_and_brackets():
    """The Host header's name is taken without its port, for IPv4, IPv6 and names."""
    assert tokens.split_host("127.0.0.1:8765") == "127.0.0.1"
    assert tokens.split_host("[::1]:8765") == "::1"
    assert tokens.split_host("Example.COM") == "example.com"


# ── rate limit ──────────────────────────────────────────────────────────────


def test_token_bucket_allows_bursts_then_refills():
    """A bucket of 3 a minute lets 3 through at once, then one more every 20 s; 0 means no limit."""
    clock = Clock()
    bucket = TokenBucket(3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert 19 < bucket.retry_after() <= 20
    clock.now += 20
    assert bucket.take() and not bucket.take()
    free = TokenBucket(0, clock)
    assert all(free.take() for _ in range(1000))


# ── options ─────────────────────────────────────────────────────────────────


def test_rlimits_option_is_parsed_and_checked():
    """--actor-rlimits takes name=value pairs with size suffixes; unknown names and bad values are refused."""
    assert config.rlimit_values("nofile=1024, nproc=64,as=2G") == {"nofile": 1024, "nproc": 64, "as": 2 << 30}
    assert config.rlimit_values("") == {}
    for bad in ("cpu=1", "nofile", "nofile=0", "nofile=-1", "as=2X", "nofile=1,nofile=2"):
        with pytest.raises(ValueError):
            config.rlimit_values(bad)


def test_security_options_parse_from_flags_and_environment():
    """The new options come from flags or NAVI_ variables; --insecure-no-auth is a switch."""
    from navi_actor import cli

    ns = cli.build_parser(environ={"NAVI_INSECURE_NO_AUTH": "1", "NAVI_ALLOWED_ORIGINS": "HTTPS://A.example/"}) \
        .parse_args(["serve", "--rate-limit", "5", "--actor-env-allow", "X_KEY,Y_TOKEN"])
    cfg = config.from_namespace(ns)
    assert cfg.insecure_no_auth is True and cfg.allowed_origins == "https://a.example"
    assert cfg.rate_limit == 5 and cfg.actor_env_allow == "X_KEY,Y_TOKEN"
    assert config.from_namespace(cli.build_parser(environ={}).parse_args(["serve", "--insecure-no-auth"])) \
        .insecure_no_auth is True
    assert config.from_namespace(cli.build_parser(environ={}).parse_args(["serve"])).insecure_no_auth is False


# ── the actor's environment and limits ──────────────────────────────────────


@pytest.mark.parametrize("name, value, secret", [
    ("NAVI_TOKENS", b"x", True),
    ("NAVI_TOKENS_FILE", b"/etc/t", True),
    ("GITHUB_TOKEN", b"x", True),
    ("aws_secret_access_key", b"x", True),
    ("PGPASSWORD", b"x", True),
    ("SSH_AUTH_SOCK", b"/tmp/x", True),
    ("DATABASE_URL", b"postgres://user:pw@db/x", True),
    ("DATABASE_URL", b"postgres://db/x", False),
    ("NAVI_OPENAI_API_KEY", b"sk", False),  # allowed below
    ("NAVI_AGENT_TOKENS_PER_SECOND", b"50", False),
    ("HOME", b"/root", False),
    ("PATH", b"/usr/bin", False),
])
def test_which_variables_are_secret(name, value, secret):
    """Names with TOKEN, SECRET, PASSWORD, KEY… and URLs with passwords are secret, unless allowed."""
    assert sandbox.is_secret(name, value, frozenset({"NAVI_OPENAI_API_KEY", "NAVI_TOKENS"})) is secret


def test_scrub_removes_and_wipes_secrets_in_a_child_process():
    """In a fresh process, scrubbing removes secrets from os.environ and from /proc/self/environ, keeping the rest."""
    code = (
        "import os\n"
        "from navi_actor import sandbox\n"
        "dropped = sandbox.scrub_environ(frozenset({'KEEP_KEY'}))\n"
        "env = open('/proc/self/environ', 'rb').read()\n"
        "print(sorted(dropped), 'MY_SECRET' in os.environ, b'hunter2-value' in env, b'keep-value' in env,"
        " os.environ['PLAIN'])\n"
    )
    env = {**os.environ, "MY_SECRET": "hunter2-value", "KEEP_KEY": "keep-value", "PLAIN": "plain-value",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "'MY_SECRET'" in out and "KEEP_KEY" not in out.split("]")[0]
    assert out.strip().endswith("False False True plain-value")


def test_stashed_secret_moves_to_a_memfd_in_a_child_process():
    """NAVI_TOKENS moves into a memory file: gone from the environment and /proc/self/environ, readable from the fd."""
    code = (
        "import os\n"
        "from navi_actor import sandbox\n"
        "fd = sandbox.stash_env_secret('NAVI_TOKENS')\n"
        "env = open('/proc/self/environ', 'rb').read()\n"
        "print(os.pread(fd, 100, 0).decode(), 'NAVI_TOKENS' in os.environ, b'tok-value' in env)\n"
    )
    env = {**os.environ, "NAVI_TOKENS": "tok-value-1234567890 alice",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "tok-value-1234567890 alice False False"


def test_allowed_secrets_move_to_a_sealed_memfd_and_back_in_an_actor_only():
    """The allow-listed secret (not a plain allowed name) leaves the environment for a sealed memfd; restoring
    sets only allowed names, and no process holding the fd can change what the next actor gets."""
    code = (
        "import os\n"
        "from navi_actor import sandbox\n"
        "allow = frozenset({'NAVI_OPENAI_API_KEY', 'PLAIN'})\n"
        "fd, names = sandbox.stash_actor_env(allow)\n"
        "env = open('/proc/self/environ', 'rb').read()\n"
        "print(names, 'NAVI_OPENAI_API_KEY' in os.environ, b'sk-value' in env, os.environ['PLAIN'])\n"
        "try:\n"
        "    os.pwrite(fd, b'LD_PRELOAD=/x.so\\0', 0)\n"
        "    print('writable')\n"
        "except PermissionError:\n"
        "    print('sealed')\n"
        "other = os.dup(fd)\n"
        "print(sandbox.restore_actor_env(other, frozenset({'PLAIN'})), 'NAVI_OPENAI_API_KEY' in os.environ)\n"
        "print(sandbox.restore_actor_env(fd, allow), os.environ['NAVI_OPENAI_API_KEY'])\n"
        "print(sandbox.stash_actor_env(frozenset({'PLAIN', 'NAVI_TOKENS'})))\n"
    )
    env = {**os.environ, "NAVI_OPENAI_API_KEY": "sk-value-123456", "PLAIN": "plain-value",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "['NAVI_OPENAI_API_KEY'] False False plain-value",
        "sealed",
        "[] False",
        "['NAVI_OPENAI_API_KEY'] sk-value-123456",
        "(None, [])",
    ]


def test_rlimits_are_applied_capped_at_the_hard_limit():
    """apply_rlimits sets soft and hard limits, never above the current hard limit (checked in a child)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = (
        "import resource\n"
        "from navi_actor import sandbox\n"
        f"print(sandbox.apply_rlimits('nofile=64,as=4G'), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    expected = min(64, hard) if hard != resource.RLIM_INFINITY else 64
    assert out.strip() == f"{{'nofile': {expected}, 'as': {4 << 30}}} ({expected}, {expected})"


# ── uploads ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("given, safe", [
    ("report.txt", "report.txt"),
    ("../../etc/passwd", "passwd"),
    ("..%2F..%2Fetc%2Fpasswd", "passwd"),
    ("..\\..\\win.ini", "win.ini"),
    (".bashrc", "bashrc"),
    ("..", "upload"),
    ("", "upload"),
    (None, "upload"),
    ("a b;rm -rf $(x).txt", "a_b_rm_-rf_x_.txt"),
    ("ｆｕｌｌ.txt", "full.txt"),
    ("x" * 300 + ".txt", "x" * 96 + ".txt"),
])
def test_safe_names(given, safe):
    """Upload names lose folders, leading dots and unsafe characters, and are cut to 100 characters."""
    assert uploads.safe_name(given) == safe


def test_confine_accepts_uploads_and_refuses_escapes(tmp_path):
    """Message files must resolve inside the session's upload folder: ../, absolute paths and symlinks out are refused."""
    sid = "s1"
    base = Path(uploads.session_dir(tmp_path, sid))
    base.mkdir(parents=True)
    (base / "ok.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("no")
    (base / "link").symlink_to(tmp_path / "secret.txt")
    (base / "sub").mkdir()
    good = uploads.confine(tmp_path, sid, [{"name": "ok", "path": "ok.txt"}, {"name": "abs", "path": str(base / "ok.txt")}])
    assert [f["path"] for f in good] == [str(base / "ok.txt")] * 2
    for path in ("../../secret.txt", str(tmp_path / "secret.txt"), "link", "sub", ".", "missing.txt", "/etc/passwd"):
        with pytest.raises(ClientError) as err:
            uploads.confine(tmp_path, sid, [{"name": "x", "path": path}])
        assert err.value.code == protocol.INVALID_FILE, path


def test_confine_refuses_everything_when_the_session_folder_is_a_symlink(tmp_path):
    """If the session's upload folder itself is a symlink, no path through it is accepted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f.txt").write_text("x")
    Path(uploads.uploads_root(tmp_path)).mkdir()
    Path(uploads.session_dir(tmp_path, "s2")).symlink_to(elsewhere)
    with pytest.raises(ClientError):
        uploads.confine(tmp_path, "s2", [{"name": "f", "path": "f.txt"}])
    with pytest.raises(OSError):
        uploads.open_session_dir(tmp_path, "s2", create=True)


def test_upload_folders_are_made_private(tmp_path):
    """Opening a session's upload folder for writing creates it 0700, and makes an existing looser one 0700."""
    import stat

    fd = uploads.open_session_dir(tmp_path, "s3", create=True)
    os.close(fd)
    folder = Path(uploads.session_dir(tmp_path, "s3"))
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    folder.chmod(0o755)
    os.close(uploads.open_session_dir(tmp_path, "s3", create=True))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
