"""Smoke test of the benchmark: ``scripts/bench --quick`` measures both servers and reports every row.

It checks that the benchmark runs and reports, not that navi-actor meets
its targets: a missed target is a result, printed as FAIL, not a broken
benchmark.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

ROWS = {
    "ttfe_warm_p50", "ttfe_warm_p99", "ttfe_warm_durable_p50", "ttfe_warm_durable_p99", "ttfe_cold_p50",
    "ttfe_cold_p99", "ttfe_loaded_fresh_p50", "ttfe_loaded_fresh_p99", "ttfe_loaded_idle_p50",
    "ttfe_loaded_idle_p99", "ttfe_loaded_full_p50", "ttfe_loaded_full_p99",
    "flood_rate", "flood_messages_per_event", "sparse_p50", "sparse_p99",
    "many_p99", "many_p50", "many_rate", "many_front_cpu", "many_total_cpu",
    "carry_sessions", "carry_cpu_front", "carry_cpu_supervisor", "carry_cpu_zygote", "carry_cpu_actors",
    "carry_cpu_total",
    "memory_idle_uss", "alive", "spawn_rate", "sandbox_start_cpu", "sandbox_idle_uss", "sandbox_ttfe_p50",
    "store_ttfe_p50", "store_flood_rate", "store_sparse_p50", "relay_flood_rate", "relay_sparse_p50",
}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_quick_bench_measures_both_sides_of_every_metric(tmp_path: Path) -> None:
    """A quick run exits 0, prints the table, and writes a figure for each side of each row."""
    out = tmp_path / "results.json"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    proc = subprocess.run([str(ROOT / "scripts" / "bench"), "--quick", "--repeat", "1", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    header = next((line for line in proc.stdout.splitlines() if line.startswith("| metric")), "")
    for column in ("navi-actor", "baseline", "ratio", "target", "result"):
        assert column in header, proc.stdout

    data = json.loads(out.read_text())
    rows = {row["id"]: row for row in data["rows"]}
    assert set(rows) == ROWS
    assert data["errors"] == []
    for rid, row in rows.items():
        assert row["error"] is None, row
        assert row["pass"] in (True, False, None), row
        if rid.startswith("ttfe_cold") and not data["navi_has_warm_actors"]:
            assert row["navi"] is None and row["note"].startswith("n/a"), row
            continue
        assert _number(row["navi"]), row
        if row["baseline_applicable"]:
            assert _number(row["baseline"]), row
        else:
            assert row["baseline"] is None, row

    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], left
