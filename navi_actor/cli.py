"""``navi-actor``: the command line."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import socket
import sys
from typing import Any, Callable
from pathlib import Path

from navi_actor import __version__, config as config_mod, logs

DESCRIPTION = """\
navi-actor hosts streaming AI-agent sessions, each active session's agent in
its own OS process, behind one WebSocket/HTTP server."""

SERVE_DESCRIPTION = """\
Run the server: a supervisor process that starts the web front and one actor
process per active session. Sessions are stored in SQLite under --data-dir.
Every option can also be set by the environment variable shown with it.
SIGTERM or Ctrl-C shuts down gracefully (running turns get --drain-timeout to
finish); a second Ctrl-C skips the drain."""


TOKEN_DESCRIPTION = """\
Print a new random bearer token for --user, as a line for the tokens file
(TOKEN USER ROLE). Append it to the file the server reads (--tokens-file,
mode 0600) and give the token to the user; the server reads the file when it
starts (restart it, or its front, to pick up changes). Example:

    navi-actor token --user alice --role admin >> tokens.txt && chmod 600 tokens.txt"""

REFUSE_NO_AUTH = """\
navi-actor: refusing to serve {host} without authentication: anyone who can
reach that address could read and drive every session. Either
  - configure tokens: navi-actor token --user NAME >> tokens.txt; chmod 600 tokens.txt;
    then --tokens-file tokens.txt (or NAVI_TOKENS_FILE, or the lines in NAVI_TOKENS), or
  - listen on a loopback address (--host 127.0.0.1), or
  - if a proxy in front of it authenticates every request, pass --insecure-no-auth."""


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navi-actor", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"navi-actor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the server (supervisor, front, actors)",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_mod.add_arguments(serve, environ)
    from navi_actor import ops

    ops.ps_parser(sub.add_parser("ps", help="list the server's actors (navi-ps)"))
    kill = ops.kill_parser(sub.add_parser("kill", help="stop or kill runs (navi-kill)"))
    kill.set_defaults(kill_parser=kill)
    token = sub.add_parser(
        "token",
        help="make a bearer token for a user (prints the tokens-file line)",
        description=TOKEN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("--user", required=True, help="the user id: 1 to 64 of A-Z a-z 0-9 _ . @ -")
    token.add_argument("--role", choices=("user", "admin"), default="user",
                       help="admin may also use GET /runs, POST /runs/ID/kill, GET /metrics and every session")
    token.set_defaults(token_parser=token)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        cfg = config_mod.from_namespace(args)
        if cfg.stop_grace >= cfg.stop_term_after:
            parser.error(
                f"--stop-grace ({cfg.stop_grace}) must be shorter than --stop-term-after "
                f"({cfg.stop_term_after}): the task is cancelled before the process is signalled"
            )
        return serve(cfg)
    if args.command == "token":
        return make_token(args.user, args.role, args.token_parser)
    if args.command in ("ps", "kill"):
        from navi_actor import ops

        if args.command == "ps":
            return ops.run_ps(args)
        return ops.run_kill(args, args.kill_parser)
    parser.print_help()
    return 2


def make_token(user: str, role: str, parser: argparse.ArgumentParser) -> int:
    """``navi-actor token``: print a comment and the tokens-file line for a new token."""
    from navi_actor import tokens

    if not tokens.USER_RE.match(user):
        parser.error(f"--user {user!r}: use 1 to 64 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit")
    print(f"# bearer token for {user} ({role}); give the first word to the user, keep this line "
          "in the tokens file (mode 0600)")
    print(f"{tokens.new_token()} {user} {role}")
    return 0


def _sandbox_plan(cfg: config_mod.Config, spec: Any, log: Any) -> Any:
    """Work out the actors' sandbox and try it in a child; an exit code if the server must not start."""
    from navi_actor.sandbox import policy
    from navi_actor.sandbox.probe import probe
    from supervisor.causes import EXIT_CANNOT_START

    module = sys.modules.get(getattr(spec.obj, "__module__", "") or "")
    try:
        plan = policy.prepare(
            cfg.sandbox, str(cfg.data_path), extra_read=cfg.sandbox_read, extra_write=cfg.sandbox_write,
            connect_ports=config_mod.ports(cfg.sandbox_net_connect),
            bind_ports=config_mod.ports(cfg.sandbox_net_bind), tokens_file=cfg.tokens_file,
            agent_file=getattr(module, "__file__", None),
            secret_files=[os.environ.get("PGPASSFILE", ""), cfg.cluster_secret_file] if cfg.store else [])
        if plan.on:
            probe(plan)
    except policy.SandboxConfigError as exc:
        log.error("serve.sandbox_refused", error=str(exc))
        print(f"navi-actor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    if not plan.on:
        log.warning("serve.sandbox_off", message="agents run unconfined: they can read the session "
                    "database, other sessions' uploads and the server user's files (--sandbox off)")
    elif plan.missing:
        log.warning("serve.sandbox_partial", **plan.summary())
    else:
        log.info("serve.sandbox", **plan.summary(), rules=plan.base_rules, session_rules=len(plan.coarse) + 1)
    return plan


REFUSE_NO_CLUSTER_SECRET = """\
navi-actor: a PostgreSQL store (--store {store}) needs the secret the nodes
share, the same on every node: it authenticates the requests one node makes
of another, so that a client cannot pass as a node. Give it one way:
  - in the environment: NAVI_CLUSTER_SECRET=..., or
  - in a file (mode 0600): --cluster-secret-file FILE (or NAVI_CLUSTER_SECRET_FILE).
Make one with: head -c 32 /dev/urandom | base64"""

REFUSE_TWO_CLUSTER_SECRETS = """\
navi-actor: the cluster secret is given twice, in NAVI_CLUSTER_SECRET and in
--cluster-secret-file {path}; give it one way only (unset one of them), so
that which secret is in force is never in doubt."""


def _check_cluster_secret(cfg: config_mod.Config) -> str | None:
    """With a PostgreSQL store: why the cluster secret is missing, given twice or unusable (None: usable).

    Read in a child, as the tokens are: the supervisor, which actors are forked
    from, never holds it (NAVI_CLUSTER_SECRET is then moved to a memfd for the front).
    """
    from navi_actor import sandbox
    from navi_actor.front import relayauth
    from navi_actor.store import redact

    if not cfg.shared_store:
        return None  # (NAVI_CLUSTER_SECRET, if set, is dropped from the environment like any secret)
    in_env = sandbox.env_is_set("NAVI_CLUSTER_SECRET")
    if not in_env and not cfg.cluster_secret_file:
        return REFUSE_NO_CLUSTER_SECRET.format(store=redact(cfg.store))
    if in_env and cfg.cluster_secret_file:
        return REFUSE_TWO_CLUSTER_SECRETS.format(path=cfg.cluster_secret_file)

    def check() -> str:  # runs in a child
        if in_env:
            relayauth.parse_secret(os.environb[b"NAVI_CLUSTER_SECRET"], "NAVI_CLUSTER_SECRET")
            return "ok"
        from navi_actor.front.auth import read_secret_file  # (aiohttp's modules stay out of the supervisor)

        try:
            read_secret_file(cfg.cluster_secret_file)
        except OSError as exc:
            raise relayauth.SecretError(f"cannot read {cfg.cluster_secret_file}: {exc.strerror or exc}") from None
        return "ok"

    try:
        sandbox.check_in_child(check)
    except RuntimeError as exc:
        where = "NAVI_CLUSTER_SECRET" if in_env else "--cluster-secret-file"
        return f"navi-actor: {where}: {exc}"
    return None


def _secure(cfg: config_mod.Config) -> tuple[int | None, int | None, int | None, bool] | int:
    """The supervisor's security set-up, before anything is forked (see navi_actor/sandbox.py).

    Returns (descriptor of NAVI_TOKENS for the front, descriptor of
    NAVI_CLUSTER_SECRET for the front, descriptor of the allow-listed secrets
    for actors, authentication on), or an exit code when the server must not start.
    """
    from navi_actor import sandbox
    from navi_actor import tokens
    from supervisor.causes import EXIT_CANNOT_START

    log = logs.get("navi.serve")
    # os.environb hands out the stored bytes object itself: no copy of a token is made here.
    configured = bool(cfg.tokens_file) or sandbox.env_is_set("NAVI_TOKENS")
    count = 0
    if configured:
        def summary() -> str:  # runs in a child: the supervisor never holds the tokens
            raw = os.environb.get(b"NAVI_TOKENS") if sandbox.env_is_set("NAVI_TOKENS") else None
            text = None if raw is None else raw.decode("utf-8", "replace")
            return str(len(tokens.load_entries(cfg.tokens_file, text) or ()))

        try:
            count = int(sandbox.check_in_child(summary))
        except (RuntimeError, ValueError) as exc:
            log.error("serve.tokens_unusable", error=str(exc))
            print(f"navi-actor: {exc}", file=sys.stderr)
            return EXIT_CANNOT_START
    if not configured and not tokens.is_loopback(cfg.host) and not cfg.insecure_no_auth:
        log.error("serve.refused_no_auth", host=cfg.host)
        print(REFUSE_NO_AUTH.format(host=cfg.host or "every address"), file=sys.stderr)
        return EXIT_CANNOT_START
    if cfg.insecure_no_auth and configured:
        log.warning("serve.insecure_no_auth_ignored", tokens=count,
                    note="tokens are configured, so authentication stays on")
    elif cfg.insecure_no_auth:
        log.warning("serve.insecure_no_auth", host=cfg.host,
                    note="no authentication: anyone who reaches this address can use every session; "
                         "a proxy in front must authenticate")
    refused = _check_cluster_secret(cfg)
    if refused is not None:
        log.error("serve.cluster_secret_refused", error=refused.partition("\n")[0])
        print(refused, file=sys.stderr)
        return EXIT_CANNOT_START
    secured = sandbox.secure_supervisor(cfg)
    if configured or cfg.shared_store:
        sandbox.set_dumpable(False)  # the front forked from it holds a secret: kept out of /proc and ptrace
    log.info("serve.security", auth="on" if configured else "off", tokens=count,
             cluster_secret="env" if secured.cluster_secret_fd is not None else
             ("file" if cfg.shared_store else None),
             env_dropped=secured.dropped, actor_env_allow=cfg.actor_env_allow,
             actor_rlimits=cfg.actor_rlimits or None)
    return secured.tokens_fd, secured.cluster_secret_fd, secured.env_fd, configured


def _raise_fd_limit() -> None:
    """Each actor costs a few descriptors in the supervisor and the front: use the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket here, in the supervisor, so it outlives front restarts.

    Connections that arrive while a front restarts wait in the backlog instead
    of being refused, and the port never changes (not even with ``--port 0``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def _in_child(fn: Callable[[], None], error: type[Exception]) -> None:
    """Run ``fn`` in a forked child and wait for it; its exception's message comes back as ``error``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 — reported to the parent
            os.write(write, str(exc).encode(errors="replace")[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise error(message or f"the child exited with status {os.waitstatus_to_exitcode(status)}")


def serve(cfg: config_mod.Config) -> int:
    """Start the supervisor in this process; returns the exit code."""
    from navi_actor import agent_loader
    from navi_actor.store import StoreError, open_store, redact
    from supervisor.causes import EXIT_CANNOT_START
    from supervisor.control import SOCKET_NAME, runtime_dir
    from supervisor.supervisor import Hooks, Supervisor

    logs.configure("supervisor", cfg.log_format)
    log = logs.get("navi.serve")
    secured = _secure(cfg)
    if isinstance(secured, int):
        return secured
    tokens_fd, secret_fd, env_fd, _auth_on = secured
    _raise_fd_limit()
    try:
        spec = agent_loader.load(cfg.agent)
    except agent_loader.AgentLoadError as exc:
        log.error("serve.agent_unusable", agent=cfg.agent, error=str(exc))
        print(f"navi-actor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    data = cfg.data_path
    plan = _sandbox_plan(cfg, spec, log)
    if isinstance(plan, int):
        return plan

    def recover_here(reason: str) -> None:
        store = open_store(data, cfg.store or None, node_id=cfg.node_id)
        try:
            runs = store.recover_interrupted(reason)
        finally:
            store.close()
        if runs:
            log.warning("serve.turns_interrupted", count=len(runs), reason=reason)

    def recover(reason: str) -> None:
        # A database server's password (libpq reads PGPASSFILE) must never be in the memory actors are
        # forked from: the supervisor's. So a connection to one is made in a child of its own.
        if cfg.store and not cfg.store.lower().startswith("sqlite:"):
            _in_child(lambda: recover_here(reason), StoreError)
        else:
            recover_here(reason)

    try:
        listener = listen(cfg.host, cfg.port)
    except OSError as exc:
        log.error("serve.cannot_listen", host=cfg.host, port=cfg.port, error=str(exc))
        print(f"navi-actor: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    listen_fd = listener.fileno()
    if not cfg.node_id:  # the host name and the port bound (--port 0 picks one)
        cfg = dataclasses.replace(cfg, node_id=f"{socket.gethostname()}:{listener.getsockname()[1]}")

    try:
        recover("server stopped during this turn")
    except (StoreError, OSError) as exc:
        listener.close()
        where = f"store {redact(cfg.store)}" if cfg.store else f"data dir {data}"
        print(f"navi-actor: cannot use {where}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START

    # Everything an actor needs is imported now; freeze it so forked actors
    # share these pages instead of copying them when the GC touches them.
    # The front's own modules (aiohttp, prometheus_client, …: a third of the
    # template's memory) come later, after the zygote is forked: see preload_front.
    import uvloop  # noqa: F401

    from navi_actor import actor as actor_mod

    actor_mod.prewarm(cfg.log_format)
    logs.configure("supervisor", cfg.log_format)  # the rehearsal logged to nowhere
    gc.collect()
    gc.freeze()
    agent = [spec]  # replaced on SIGHUP; actors forked later run the new code

    def reload_agent() -> str | None:
        """Re-import the agent module; None on success, else why it failed (old code stays)."""
        try:
            fresh = agent_loader.load(cfg.agent, reload=True)
        except agent_loader.AgentLoadError as exc:
            return str(exc)
        agent[0] = fresh
        gc.collect()
        gc.freeze()
        return None

    def preload_front() -> None:
        """Import the front's modules once the zygote is forked, so it and its actors do without them."""
        from navi_actor.front import app  # noqa: F401

        gc.collect()
        gc.freeze()  # actors forked from here (--no-zygote) must not have the GC walk these

    def front_main(fd: int) -> int:
        from navi_actor.front import app as front_app

        return front_app.front_main(cfg, fd, listen_fd, tokens_fd, secret_fd)

    from navi_actor import sandbox

    def run_actor(actor_id: str, session_id: str, fd: int, life_fd: int) -> int:
        """In the forked actor: shed secrets and privileges, apply limits, then serve (and confine)."""
        sandbox.enter_actor(cfg, env_fd)
        return actor_mod.actor_main(agent[0], cfg, actor_id, session_id, fd, life_fd)

    hooks = Hooks(
        front_main=front_main,
        preload_front=preload_front,
        front_fds=(listen_fd, *(fd for fd in (tokens_fd, secret_fd) if fd is not None)),
        actor_main=run_actor,
        on_give_up=lambda: recover("server stopped during this turn"),
        actor_max_rss=cfg.actor_max_rss * 1024 * 1024,
        stop_term_after=cfg.stop_term_after,
        stop_kill_after=cfg.stop_kill_after,
        control_path=runtime_dir(data) / SOCKET_NAME,
        on_reload=reload_agent,
        warm_actors=cfg.warm_actors,
        use_zygote=not cfg.no_zygote,
        shutdown_grace=cfg.drain_timeout + cfg.stop_term_after + cfg.stop_kill_after + 2.0,
        actor_fds=(*plan.fds(), *(() if env_fd is None else (env_fd,))),  # the sandbox's rules, the secrets
        sandbox=plan.summary(),
    )
    log.info("serve.start", agent=spec.target, data_dir=str(data), host=cfg.host, port=cfg.port,
             pid=os.getpid())
    return Supervisor(hooks, Path(data) / "server.json").run()


if __name__ == "__main__":
    sys.exit(main())
