"""``python -m bench`` (or ``scripts/bench``): navi-actor and the in-process design, side by side.

Prints one table (metric, navi-actor, baseline, ratio, target, result) and
writes the figures, per repetition, as JSON. Exit code 0 when every
measurement was made (whether or not its target was met), 1 when some could
not be made, 2 on a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import report, servers
from bench.runner import FULL, METRICS, QUICK, Bench, log, machine, run_all


def default_json_out() -> Path:
    """./var/bench-results.json: ./var is the project's (git-ignored) data folder."""
    return Path.cwd() / "var" / "bench-results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark navi-actor against the in-process design (agents as tasks in the web "
                    "process), the same agent and clients on both, in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test, ~30 s)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="repetitions of each measurement; the table shows medians (default 3)")
    parser.add_argument("--only", metavar="METRIC,...",
                        help=f"run only these metrics: {','.join(METRICS)}")
    parser.add_argument("--json-out", type=Path, metavar="PATH",
                        help="where to write the results (default ./var/bench-results.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and data folders")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.only = [m.strip() for m in args.only.split(",") if m.strip()] if args.only else list(METRICS)
    unknown = [m for m in args.only if m not in METRICS]
    if unknown:
        parser.error(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return args


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_out = args.json_out or default_json_out()
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)
    _raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="navi-bench-"))
    cfg = QUICK if args.quick else FULL
    bench = Bench(cfg, args.repeat, workdir, args.quick)
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick, "repeat": args.repeat, "only": args.only, "config": cfg.__dict__,
            "machine": machine()}
    t0 = time.monotonic()
    code = 0
    rows = []
    try:
        bench.has_warm = servers.navi_supports("--warm-actors")
        meta["navi_has_warm_actors"] = bench.has_warm
        if not bench.has_warm:
            log("navi-actor serve has no --warm-actors: the empty-pool row will be n/a")
        rows = run_all(bench, args.only)
    except KeyboardInterrupt:
        log("interrupted; stopping the servers")
        code = 130
    finally:
        problems = servers.stop_all()
        left = servers.leftovers()
        for p in left:
            p.kill()
        if left:
            problems.append(f"processes left behind and killed: {[p.pid for p in left]}")
        for problem in problems:
            log(problem)
        if args.keep_logs or bench.errors or problems:
            log(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if code == 130:
        return code
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["errors"] = bench.errors + problems
    meta["navi_shutdown_s"] = bench.shutdowns
    report.write_json(json_out, rows, meta)
    m = meta["machine"]
    print(f"navi-actor vs in-process baseline — {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
          f"{'quick' if args.quick else 'full'} run, median of {args.repeat}, {meta['duration_s']} s; "
          f"load average at start {m['loadavg_start'][0]:.1f}; "
          f"commit {m['git']['commit'][:10] or '?'}"
          + (f" + {m['git']['modified_files']} modified files" if m["git"]["modified_files"] else ""))
    print()
    print(report.table(rows))
    notes = report.notes(rows)
    if notes:
        print()
        print(notes)
    print()
    print("Targets (this 2-core machine), for orientation:")
    print(report.reference())
    print()
    print(f"results: {json_out}")
    return 1 if meta["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
