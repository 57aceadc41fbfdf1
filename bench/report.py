"""The printed table and the JSON file (pure formatting, no measuring)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from bench.runner import Row

HEADER = ("metric", "navi-actor", "baseline", "ratio", "target", "result")

#: The issues' targets (5, then 20) for this 2-core machine, printed for orientation; the run checks them,
#: never assumes them.
REFERENCE = (
    ("time to first event, new session, warm pool", "p50 ≤ 2 ms, p99 ≤ 10 ms"),
    ("time to first event, pool empty (--warm-actors 0)", "p99 ≤ 30 ms"),
    ("one session flooding one client", "≥ 250k events/s, one WS message per event, ≥ 1.5× in-process"),
    ("sparse stream, 1k events/s, end to end", "p50 within +100 µs of in-process, p99 ≤ 1 ms"),
    ("1,000 sessions × 20 events/s, 1,000 clients", "p99 delivery ≤ 50 ms; front CPU µs per event reported"),
    ("idle actor memory", "≤ 4 MiB USS after a GC"),
    ("actors alive at once", "≥ 2,000 idle actors without error"),
    ("actor start rate, pool refilling", "≥ 500 actors/s"),
    ("the sandbox, against --sandbox off", "≤ +0.5 ms CPU per actor start, idle USS ≤ 4 MiB, first event within noise"),
    ("a PostgreSQL store, against SQLite", "flood and sparse within 10 %, first event within +1 ms"),
    # issue 20
    ("time to first event, against the in-process design with the same durable save",
     "p50 ≤ its p50 + 0.5 ms, p99 ≤ its p99 + 2 ms"),
    ("time to first event, 250 idle actors (free slots; at --max-actors)", "p50 ≤ 1.2× a fresh server's"),
    ("sessions carried at 20 events/s with delivery p99 ≤ 50 ms", "≥ 0.7× the in-process design's"),
)


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit in ("events/s", "/s"):
        return f"{value:,.0f}"
    if unit in ("actors", "sessions"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if unit in ("µs", "µs/event"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if unit == "MiB":
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"
    if unit == "msg/event":
        return f"{value:.3f}"
    return f"{value:g}"


def result_text(row: Row) -> str:
    if row.error:
        return "ERROR"
    if row.passed is None:
        return "-" if row.check is None else "n/a"
    return "pass" if row.passed else "FAIL"


def table(rows: Sequence[Row]) -> str:
    lines = [HEADER]
    for row in rows:
        label = f"{row.label} ({row.unit})" if row.unit != "-" else row.label
        ratio = row.ratio
        lines.append((
            label,
            fmt(row.navi, row.unit),
            fmt(row.baseline, row.unit) if row.baseline_applicable else "n/a",
            f"{ratio:.2f}×" if ratio is not None else "-",
            row.target,
            result_text(row),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for k, line in enumerate(lines):
        cells = [cell.ljust(widths[i]) if i == 0 or i >= 4 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        out.append("| " + " | ".join(cells) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def notes(rows: Sequence[Row]) -> str:
    out = []
    for row in rows:
        if row.error:
            out.append(f"- {row.metric}: ERROR {row.error}")
        elif row.note:
            out.append(f"- {row.label}: {row.note}")
    return "\n".join(out)


def reference() -> str:
    return "\n".join(f"- {what}: {target}" for what, target in REFERENCE)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "rows": [row.to_json() for row in rows],
            "reference": [{"metric": m, "target": t} for m, t in REFERENCE]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)


def _clean(obj: Any) -> Any:
    """JSON without NaN: a figure that could not be computed is null."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)
