"""Tests for navi_actor.config and navi_actor.cli (the option table, environment and --help)."""

import dataclasses
import os
from pathlib import Path

import pytest

from navi_actor import cli
from navi_actor.config import OPTIONS, Config, from_namespace

OPT = {o.name: o for o in OPTIONS}


def parse(argv=(), environ=None):
    return cli.build_parser(environ={} if environ is None else environ).parse_args(["serve", *argv])


def exits(capsys, fn, *args, **kwargs):
    """Run fn expecting argparse to exit; return (status, stderr)."""
    with pytest.raises(SystemExit) as info:
        fn(*args, **kwargs)
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def clean_environ(monkeypatch):
    """Remove every NAVI_ variable, so cli.main() reads only the defaults."""
    for name in list(os.environ):
        if name.startswith("NAVI_"):
            monkeypatch.delenv(name)


# ── the option table ────────────────────────────────────────────────────────


def test_config_fields_equal_option_names():
    """Config's field names are the option names, in the same order."""
    assert [f.name for f in dataclasses.fields(Config)] == [o.name for o in OPTIONS]


def test_config_defaults_equal_option_defaults():
    """Each Config field's default is its option's default."""
    assert {f.name: f.default for f in dataclasses.fields(Config)} == {o.name: o.default for o in OPTIONS}


def test_option_flag_and_env_names():
    """An option's flag is --name-with-dashes and its env var NAVI_NAME_UPPER."""
    assert OPT["idle_timeout"].flag == "--idle-timeout"
    assert OPT["idle_timeout"].env == "NAVI_IDLE_TIMEOUT"
    assert OPT["client_max_pending_bytes"].flag == "--client-max-pending-bytes"
    assert OPT["client_max_pending_bytes"].env == "NAVI_CLIENT_MAX_PENDING_BYTES"
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_data_path_is_resolved():
    """Config.data_path is the absolute form of data_dir."""
    assert Config(data_dir="rel/dir").data_path == (Path.cwd() / "rel" / "dir").resolve()


# ── build_parser: defaults, environment, flags ──────────────────────────────


def test_defaults_without_environment():
    """With no flags and an empty environment, serve's options are the defaults and make Config()."""
    ns = parse()
    assert ns.command == "serve"
    assert from_namespace(ns) == Config()
    assert (ns.host, ns.port, ns.agent, ns.log_format) == ("127.0.0.1", 8765, "demo", "auto")
    assert ns.replay_max_bytes == 16 * 1024 * 1024


def test_env_sets_the_default():
    """NAVI_PORT=9000 makes 9000 the port when no flag is given."""
    assert parse(environ={"NAVI_PORT": "9000"}).port == 9000


def test_flag_wins_over_env():
    """--port on the command line wins over NAVI_PORT."""
    assert parse(["--port", "9100"], environ={"NAVI_PORT": "9000"}).port == 9100


def test_empty_env_value_is_ignored():
    """An environment variable set to the empty string leaves the default."""
    assert parse(environ={"NAVI_PORT": "", "NAVI_HOST": ""}).port == 8765


def test_every_option_is_read_from_its_env_var():
    """Each option takes its value, parsed to the option's type, from its NAVI_ variable."""
    environ = {
        "NAVI_HOST": "0.0.0.0",
        "NAVI_PORT": "0",
        "NAVI_AGENT": "pkg.mod:agent",
        "NAVI_DATA_DIR": "/srv/navi",
        "NAVI_STORE": "postgresql://navi@db.example:5432/navi",
        "NAVI_NODE_ID": "node-1",
        "NAVI_ADVERTISE_URL": "http://10.0.0.5:8765/",
        "NAVI_LEASE_TTL": "4.5",
        "NAVI_CLUSTER_SECRET_FILE": "/etc/navi-actor/cluster-secret",
        "NAVI_LOG_FORMAT": "json",
        "NAVI_IDLE_TIMEOUT": "30.5",
        "NAVI_HEARTBEAT_INTERVAL": "5",
        "NAVI_STOP_GRACE": "0.5",
        "NAVI_STOP_TERM_AFTER": "3",
        "NAVI_STOP_KILL_AFTER": "1",
        "NAVI_REPLAY_MAX_BYTES": "1024",
        "NAVI_CLIENT_MAX_PENDING_BYTES": "2048",
        "NAVI_TURN_TIMEOUT": "60",
        "NAVI_ACTOR_MAX_RSS": "512",
        "NAVI_MAX_ACTORS": "8",
        "NAVI_ACTOR_NICE": "0",
        "NAVI_WARM_ACTORS": "0",
        "NAVI_NO_PREBIND": "1",
        "NAVI_TURN_POLL_MS": "0",
        "NAVI_NO_ZYGOTE": "1",
        "NAVI_DRAIN_TIMEOUT": "10",
        "NAVI_TOKENS_FILE": "/etc/navi/tokens",
        "NAVI_INSECURE_NO_AUTH": "1",
        "NAVI_ALLOWED_ORIGINS": "https://a.example",
        "NAVI_WS_TICKET_TTL": "10",
        "NAVI_RATE_LIMIT": "30",
        "NAVI_IF_BUSY": "interrupt",
        "NAVI_MAX_QUEUED": "0",
        "NAVI_UPLOAD_MAX_BYTES": "1048576",
        "NAVI_ACTOR_ENV_ALLOW": "X_KEY",
        "NAVI_ACTOR_RLIMITS": "nofile=64",
        "NAVI_WS_COMPRESS": "1",
        "NAVI_SANDBOX": "strict",
        "NAVI_SANDBOX_READ": "/opt/models:/srv/data",
        "NAVI_SANDBOX_WRITE": "/srv/out",
        "NAVI_SANDBOX_NET_CONNECT": "443, 11434",
        "NAVI_SANDBOX_NET_BIND": "8080",
    }
    assert set(environ) == {o.env for o in OPTIONS}
    assert from_namespace(parse(environ=environ)) == Config(
        host="0.0.0.0", port=0, agent="pkg.mod:agent", data_dir="/srv/navi",
        store="postgresql://navi@db.example:5432/navi", node_id="node-1", advertise_url="http://10.0.0.5:8765", lease_ttl=4.5,
        cluster_secret_file="/etc/navi-actor/cluster-secret", log_format="json",
        idle_timeout=30.5, heartbeat_interval=5.0, stop_grace=0.5, stop_term_after=3.0,
        stop_kill_after=1.0, replay_max_bytes=1024, client_max_pending_bytes=2048, turn_timeout=60.0,
        actor_max_rss=512, max_actors=8, actor_nice=0, warm_actors=0, no_prebind=True, turn_poll_ms=0.0, no_zygote=True, drain_timeout=10.0,
        tokens_file="/etc/navi/tokens", insecure_no_auth=True, allowed_origins="https://a.example",
        ws_ticket_ttl=10.0, rate_limit=30, if_busy="interrupt", max_queued=0, upload_max_bytes=1048576, actor_env_allow="X_KEY",
        actor_rlimits="nofile=64", ws_compress=True, sandbox="strict",
        sandbox_read=("/opt/models", "/srv/data"), sandbox_write=("/srv/out",),
        sandbox_net_connect="443,11434", sandbox_net_bind="8080",
    )


@pytest.mark.parametrize("url, says", [
    ("postgresql://navi:hunter2@db:5432/navi", "no password in the store URL"),
    ("postgresql://navi@db/navi?password=hunter2", "no password in the store URL"),
    ("mysql://navi@db/navi", "use sqlite:///PATH or postgresql://"),
    ("sqlite://relative.db", "absolute path"),
])
def test_store_urls_are_checked_before_the_server_starts(url, says, capsys):
    """--store refuses URLs it cannot open, and any with a password (actors would hold it), saying why."""
    with pytest.raises(SystemExit):
        parse(["--store", url])
    err = capsys.readouterr().err
    assert says in err and "hunter2" not in err


def test_store_urls_that_are_accepted():
    for url in ("sqlite:///srv/navi/db.sqlite3", "postgresql://navi@127.0.0.1:5432/navi",
                "postgres://navi@db/navi?sslmode=require", ""):
        assert from_namespace(parse(["--store", url])).store == url


def test_sandbox_paths_repeat_and_flags_replace_the_environment():
    """--sandbox-read may be given several times; given flags replace NAVI_SANDBOX_READ's list."""
    env = {"NAVI_SANDBOX_READ": "/a:/b"}
    assert from_namespace(parse(environ=env)).sandbox_read == ("/a", "/b")
    cfg = from_namespace(parse(["--sandbox-read", "/x", "--sandbox-read", "/y"], environ=env))
    assert cfg.sandbox_read == ("/x", "/y")
    assert from_namespace(parse([])).sandbox_write == ()


@pytest.mark.parametrize("value", ["0", "65536", "http", "443;80", "-1"])
def test_sandbox_ports_are_checked(value):
    """A port list that is not TCP ports 1..65535 is refused, with the bad item named."""
    with pytest.raises(SystemExit):
        parse(["--sandbox-net-connect", value])


def test_flags_are_parsed_to_their_types():
    """Flags give typed values: ints for ports and byte counts, floats for seconds."""
    ns = parse(["--port", "1234", "--idle-timeout", "7", "--replay-max-bytes", "99", "--log-format", "console"])
    assert ns.port == 1234 and type(ns.port) is int
    assert ns.idle_timeout == 7.0 and type(ns.idle_timeout) is float
    assert ns.replay_max_bytes == 99 and type(ns.replay_max_bytes) is int
    assert ns.log_format == "console"


@pytest.mark.parametrize(
    "var, value",
    [
        ("NAVI_PORT", "abc"),
        ("NAVI_PORT", "70000"),
        ("NAVI_PORT", "-1"),
        ("NAVI_IDLE_TIMEOUT", "-1"),
        ("NAVI_IDLE_TIMEOUT", "0"),
        ("NAVI_IDLE_TIMEOUT", "soon"),
        ("NAVI_REPLAY_MAX_BYTES", "1.5"),
        ("NAVI_REPLAY_MAX_BYTES", "0"),
        ("NAVI_LOG_FORMAT", "xml"),
        ("NAVI_ACTOR_NICE", "20"),
        ("NAVI_ACTOR_NICE", "-5"),
    ],
)
def test_invalid_env_value_exits_2_naming_the_variable(capsys, var, value):
    """An environment value the option cannot parse makes argparse exit with status 2 and a message naming the variable."""
    status, err = exits(capsys, cli.build_parser, environ={var: value})
    assert status == 2
    assert f"environment variable {var}={value!r}" in err


def test_invalid_log_format_env_lists_the_choices(capsys):
    """NAVI_LOG_FORMAT outside the choices names the allowed values."""
    _, err = exits(capsys, cli.build_parser, environ={"NAVI_LOG_FORMAT": "xml"})
    assert "choose from auto, console, json" in err


def test_nan_is_not_a_positive_number(capsys):
    """NaN is refused for a must-be-positive option, from the environment and from the flag."""
    status, err = exits(capsys, cli.build_parser, environ={"NAVI_IDLE_TIMEOUT": "nan"})
    assert status == 2 and "NAVI_IDLE_TIMEOUT" in err
    status, _ = exits(capsys, parse, ["--stop-grace", "nan"])
    assert status == 2


@pytest.mark.parametrize("value", ["auto", "console", "json"])
def test_log_format_accepts_its_choices(value):
    """--log-format accepts auto, console and json."""
    assert parse(["--log-format", value]).log_format == value


@pytest.mark.parametrize("value", ["xml", "JSON", "", "text"])
def test_log_format_refuses_other_values(capsys, value):
    """--log-format refuses anything but auto, console and json with exit status 2."""
    status, err = exits(capsys, parse, ["--log-format", value])
    assert status == 2
    assert "--log-format" in err and "invalid choice" in err


@pytest.mark.parametrize(
    "argv",
    [["--port", "abc"], ["--port", "65536"], ["--idle-timeout", "0"], ["--drain-timeout", "-3"],
     ["--client-max-pending-bytes", "1e6"], ["--actor-nice", "20"], ["--actor-nice", "-1"]],
)
def test_invalid_flag_value_exits_2_naming_the_flag(capsys, argv):
    """A flag value the option cannot parse makes argparse exit with status 2 naming the flag."""
    status, err = exits(capsys, parse, argv)
    assert status == 2
    assert f"argument {argv[0]}" in err


# ── --help ─────────────────────────────────────────────────────────────────


def test_serve_help_lists_every_option_with_its_env_var(capsys):
    """navi-actor serve --help shows every option's flag and its environment variable."""
    with pytest.raises(SystemExit) as info:
        parse(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for opt in OPTIONS:
        assert opt.flag in text, opt.name
        shown = "(none)" if opt.repeat or opt.default in ("", None) else opt.default
        assert f"[env {opt.env}; default {shown}]" in text, opt.name
    assert "{auto,console,json}" in text


def test_top_level_help_lists_serve(capsys):
    """navi-actor --help names the serve command."""
    with pytest.raises(SystemExit) as info:
        cli.build_parser(environ={}).parse_args(["--help"])
    assert info.value.code == 0
    assert "serve" in capsys.readouterr().out


# ── main ────────────────────────────────────────────────────────────────────


def test_main_without_command_prints_help_and_returns_2(capsys, clean_environ):
    """navi-actor with no command prints its help and returns 2."""
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_main_refuses_stop_grace_not_shorter_than_term_after(capsys, clean_environ):
    """serve exits 2 before starting when --stop-grace is not shorter than --stop-term-after."""
    status, err = exits(capsys, cli.main, ["serve", "--stop-grace", "5", "--stop-term-after", "5"])
    assert status == 2
    assert "--stop-grace (5.0) must be shorter than --stop-term-after (5.0)" in err
