"""``navi-actor``: the command line."""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
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
    if args.command in ("ps", "kill"):
        from navi_actor import ops

        if args.command == "ps":
            return ops.run_ps(args)
        return ops.run_kill(args, args.kill_parser)
    parser.print_help()
    return 2


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


def serve(cfg: config_mod.Config) -> int:
    """Start the supervisor in this process; returns the exit code."""
    from navi_actor import agent_loader
    from navi_actor.store import StoreError, open_store
    from supervisor.causes import EXIT_CANNOT_START
    from supervisor.control import SOCKET_NAME, runtime_dir
    from supervisor.supervisor import Hooks, Supervisor

    logs.configure("supervisor", cfg.log_format)
    log = logs.get("navi.serve")
    _raise_fd_limit()
    try:
        spec = agent_loader.load(cfg.agent)
    except agent_loader.AgentLoadError as exc:
        log.error("serve.agent_unusable", agent=cfg.agent, error=str(exc))
        print(f"navi-actor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    data = cfg.data_path

    def recover(reason: str) -> None:
        store = open_store(data)
        try:
            runs = store.recover_interrupted(reason)
        finally:
            store.close()
        if runs:
            log.warning("serve.turns_interrupted", count=len(runs), reason=reason)

    try:
        recover("server stopped during this turn")
    except (StoreError, OSError) as exc:
        print(f"navi-actor: cannot use data dir {data}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START

    try:
        listener = listen(cfg.host, cfg.port)
    except OSError as exc:
        log.error("serve.cannot_listen", host=cfg.host, port=cfg.port, error=str(exc))
        print(f"navi-actor: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    listen_fd = listener.fileno()

    # Everything an actor needs is imported now; freeze it so forked actors
    # share these pages instead of copying them when the GC touches them.
    import uvloop  # noqa: F401

    from navi_actor import actor as actor_mod
    from navi_actor.front import app as front_app

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

    hooks = Hooks(
        front_main=lambda fd: front_app.front_main(cfg, fd, listen_fd),
        front_fds=(listen_fd,),
        actor_main=lambda actor_id, session_id, fd, life_fd: actor_mod.actor_main(
            agent[0], cfg, actor_id, session_id, fd, life_fd
        ),
        on_give_up=lambda: recover("server stopped during this turn"),
        actor_max_rss=cfg.actor_max_rss * 1024 * 1024,
        stop_term_after=cfg.stop_term_after,
        stop_kill_after=cfg.stop_kill_after,
        control_path=runtime_dir(data) / SOCKET_NAME,
        on_reload=reload_agent,
        warm_actors=cfg.warm_actors,
        shutdown_grace=cfg.drain_timeout + cfg.stop_term_after + cfg.stop_kill_after + 2.0,
    )
    log.info("serve.start", agent=spec.target, data_dir=str(data), host=cfg.host, port=cfg.port,
             pid=os.getpid())
    return Supervisor(hooks, Path(data) / "server.json").run()


if __name__ == "__main__":
    sys.exit(main())
