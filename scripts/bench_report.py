"""The benchmark's figures: per-phase records, (c)/(b) ratios, targets, table, JSON.

Ratios come from the same run: throughput as the median over rounds of each round's
(c)/(b), latencies as differences of percentiles pooled over the interleaved rounds.
"""

import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_load import PhaseResult, percentile

MS = "ms"
TARGET_RATIO = 0.90
MEMORY_LIMIT_MB = 30.0
MEMORY_CALLS = 100_000
DRAIN_LIMIT_S = 2.0


def phase_record(result: PhaseResult, gateway_cpu_s: float) -> dict[str, Any]:
    """One phase on one path; `samples` are removed by the caller for pooling."""
    calls = max(result.calls, 1)
    return {
        "calls": result.calls,
        "errors": result.errors,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "elapsed_s": round(result.elapsed_s, 3),
        "throughput": round(result.throughput, 1),
        "p50_ms": _round(percentile(result.latencies_ms, 50)),
        "p99_ms": _round(percentile(result.latencies_ms, 99)),
        "ttft_p50_ms": _round(percentile(result.ttfts_ms, 50)),
        "ttft_p99_ms": _round(percentile(result.ttfts_ms, 99)),
        "process_cpu_s": round(gateway_cpu_s, 3),
        "cpu_us_per_call": round(gateway_cpu_s / calls * 1e6, 1),
        "client_cpu_pct": round(100 * result.client_cpu_s / (result.elapsed_s or 1), 1),
        "samples": {"latency": result.latencies_ms, "ttft": result.ttfts_ms},
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "mitmproxy": _version("mitmproxy"),
        "duckdb": _version("duckdb"),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": loadavg(),
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def metrics_summary(
    found: dict[str, float], wall_ms: float, cpu_ms: float
) -> dict[str, Any]:
    """The addon's self-reported hook time and what one /metrics scrape costs."""
    count = found.get("tollgate_gateway_overhead_seconds_count", 0.0)
    total = found.get("tollgate_gateway_overhead_seconds_sum", 0.0)
    return {
        "hook_time_us_per_call": round(total / count * 1e6, 1) if count else None,
        "hook_calls": int(count),
        "rows_written": int(found.get("tollgate_ledger_rows_written_total", 0)),
        "write_errors": int(found.get("tollgate_ledger_write_errors_total", 0)),
        "scrape_wall_ms": round(wall_ms, 1),
        "scrape_cpu_ms": round(cpu_ms, 1),
    }


# summary


def summarize(
    run: Any, machine: dict[str, Any], mode: str, args: Any
) -> dict[str, Any]:
    phases = {
        key: _phase_summary(key, paths, run.samples)
        for key, paths in run.records.items()
    }
    gateways = [path for path in ("c", "d") if path in run.ledger]
    summary: dict[str, Any] = {
        "mode": mode,
        "machine": machine,
        "config": {
            "users": args.users,
            "teams": args.teams,
            "keys": args.users,
            "compare": str(args.compare) if args.compare else None,
        },
        "gateways": gateways,
        "phases": phases,
        "ledger": {p: _ledger_summary(run, p) for p in gateways},
        "memory": _memory_summary(run.memory),
        "metrics": run.metrics,
        "stopped_early": run.extra.get("stopped_early"),
    }
    summary["targets"] = {p: _targets(summary, mode, p) for p in gateways}
    return summary


def _phase_summary(
    key: str, paths: dict[str, list[dict[str, Any]]], samples: dict[str, Any]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path, records in paths.items():
        pooled = samples.get(f"{key}/{path}", {})
        calls = sum(r["calls"] for r in records)
        cpu = sum(r["process_cpu_s"] for r in records)
        found[path] = {
            "rounds": len(records),
            "calls": calls,
            "errors": sum(r["errors"] for r in records),
            "throughput": statistics.median(r["throughput"] for r in records),
            "throughput_rounds": [r["throughput"] for r in records],
            "p50_ms": _round(percentile(pooled.get("latency", []), 50)),
            "p99_ms": _round(percentile(pooled.get("latency", []), 99)),
            "ttft_p50_ms": _round(percentile(pooled.get("ttft", []), 50)),
            "ttft_p99_ms": _round(percentile(pooled.get("ttft", []), 99)),
            "cpu_us_per_call": round(cpu / max(calls, 1) * 1e6, 1),
            "client_cpu_pct": max(r["client_cpu_pct"] for r in records),
        }
    for gateway in ("c", "d"):
        if "b" not in paths or gateway not in paths:
            continue
        pairs = zip(paths["b"], paths[gateway], strict=False)
        ratios = [
            g["throughput"] / b["throughput"] for b, g in pairs if b["throughput"]
        ]
        ratio = round(statistics.median(ratios), 3) if ratios else None
        found[f"{gateway}/b_throughput"] = ratio
        found[f"{gateway}/b_throughput_rounds"] = [round(r, 3) for r in ratios]
    return found


def _ledger_summary(run: Any, path: str) -> dict[str, Any]:
    ledger = dict(run.ledger.get(path, {}))
    every = run.ledger_probes.get(path, [])
    probes = [p for p in every if p.get("backlog") is not None]
    drains = [p["drain_s"] for p in probes]
    ledger["probes"] = every
    ledger["max_backlog"] = max((p["backlog"] for p in probes), default=None)
    ledger["max_drain_s"] = None if None in drains else max(drains, default=None)
    ledger["peak_rows_per_s"] = max((p["rate"] for p in probes), default=None)
    ledger["all_rows"] = ledger.get("rows") == ledger.get("calls_sent")
    ledger["backlog_growing"] = _growing(probes)
    return ledger


def _growing(probes: list[dict[str, Any]]) -> bool | None:
    """True when a phase ends with a larger backlog each time it runs again."""
    by_phase: dict[str, list[int]] = {}
    for probe in probes:
        by_phase.setdefault(probe["phase"], []).append(probe["backlog"])
    series = [v for v in by_phase.values() if len(v) >= 3]
    if not series:
        return None
    return any(all(b > a for a, b in zip(v, v[1:], strict=False)) for v in series)


def _memory_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS growth over the memory check: first sample after its warm-up to the last."""
    found: dict[str, Any] = {"samples": samples}
    for path in ("b", "c", "d"):
        mine = [s for s in samples if s["path"] == path]
        if len(mine) < 2 or mine[-1]["calls"] == mine[0]["calls"]:
            continue
        first, last = mine[0], mine[-1]
        calls = last["calls"] - first["calls"]
        growth = last["rss_mb"] - first["rss_mb"]
        half = mine[len(mine) // 2]
        late_calls = last["calls"] - half["calls"]
        late = last["rss_mb"] - half["rss_mb"]
        found[path] = {
            "rss_start_mb": first["rss_mb"],
            "rss_end_mb": last["rss_mb"],
            "calls": calls,
            "growth_mb": round(growth, 1),
            "per_10k_mb": round(growth / calls * 10_000, 2),
            "late_per_10k_mb": round(late / late_calls * 10_000, 2)
            if late_calls
            else None,
        }
    return found


# targets


def _targets(summary: dict[str, Any], mode: str, path: str) -> list[dict[str, Any]]:
    phases = summary["phases"]
    found: list[dict[str, Any]] = []
    for key in ("small x16", "stream x32", "large x4"):
        ratio = phases.get(key, {}).get(f"{path}/b_throughput")
        found.append(
            _target(
                f"throughput {key}, gateway/(b) >= 0.90",
                ratio,
                "",
                ratio is not None and ratio >= TARGET_RATIO,
            )
        )
    for key, figure, limit, label in (
        ("small x1", "p50_ms", 1.0, "added p50 latency, small x1 < 1 ms"),
        ("small x1", "p99_ms", 3.0, "added p99 latency, small x1 < 3 ms"),
        ("stream x1", "ttft_p99_ms", 2.0, "added TTFT p99, stream x1 < 2 ms"),
        ("large x1", "p50_ms", 2.0, "added p50 latency, 400 KB body x1 < 2 ms"),
    ):
        added = _added(phases.get(key, {}), figure, path)
        found.append(_target(label, added, MS, added is not None and added < limit))
    found.append(_memory_target(summary["memory"].get(path), mode))
    found.append(_ledger_target(summary["ledger"][path]))
    return found


def _added(phase: dict[str, Any], figure: str, path: str) -> float | None:
    b, g = phase.get("b", {}).get(figure), phase.get(path, {}).get(figure)
    return None if b is None or g is None else round(g - b, 3)


def _target(name: str, value: float | None, unit: str, ok: bool) -> dict[str, Any]:
    status = "n/a" if value is None else ("PASS" if ok else "MISS")
    return {"target": name, "value": value, "unit": unit, "status": status}


def _memory_target(memory: dict[str, Any] | None, mode: str) -> dict[str, Any]:
    name = f"RSS growth over {MEMORY_CALLS:,} calls < 30 MB"  # measured: --leak
    if memory is None:
        return _target(name, None, "MB", False)
    if mode == "leak" and memory["calls"] >= MEMORY_CALLS * 0.9:
        value = memory["growth_mb"]
    else:
        name = f"RSS growth per 100k calls < 30 MB (from {memory['calls']:,})"
        value = round(memory["per_10k_mb"] * MEMORY_CALLS / 10_000, 1)
    return _target(name, value, "MB", value < MEMORY_LIMIT_MB)


def _ledger_target(ledger: dict[str, Any]) -> dict[str, Any]:
    name = f"ledger keeps up (all rows, drains < {DRAIN_LIMIT_S:g} s, no growth)"
    drain = ledger.get("max_drain_s")
    if ledger.get("rows") is None or drain is None:
        return _target(name, None, "s", False)
    ok = ledger["all_rows"] and drain < DRAIN_LIMIT_S and not ledger["backlog_growing"]
    return _target(name, drain, "s", bool(ok))


# output


def render(summary: dict[str, Any]) -> str:
    gateways = summary["gateways"]
    lines = [_title(summary), ""]
    lines += _phase_table(summary["phases"], gateways)
    lines.append("")
    for path in gateways:
        lines += _ledger_lines(summary, path)
    lines += _memory_lines(summary["memory"])
    lines += ["", "targets" + "".join(f"{f'({p})':>12}" for p in gateways)]
    rows = zip(*(summary["targets"][p] for p in gateways), strict=True)
    for per_gateway in rows:
        cells = "".join(f"{_target_cell(t):>12}" for t in per_gateway)
        lines.append(f"  {per_gateway[0]['target']:<58}{cells}")
    lines.append(f"run took {summary.get('elapsed_s')} s; figures: JSON beside")
    if summary.get("stopped_early"):
        lines.append(f"note: stopped early ({summary['stopped_early']})")
    return "\n".join(lines)


def _target_cell(target: dict[str, Any]) -> str:
    if target["value"] is None:
        return "n/a"
    return f"{target['status']} {target['value']:.3g}"


def _title(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    compare = summary["config"].get("compare")
    lines = [
        f"Tollgate bench ({summary['mode']}) {m['date']}: {m['cpus']} CPUs"
        f" {m['cpu_model']}, Python {m['python']}, mitmproxy {m['mitmproxy']},"
        f" duckdb {m['duckdb']}; load average {m['loadavg_start']} ->"
        f" {m.get('loadavg_end')}",
        "(a) fake provider direct  (b) mitmdump + event-stream addon"
        "  (c) mitmdump -s addons/budget.py: 1,000 keys, 50 teams, ledger, metrics",
    ]
    if compare:
        lines.append(f"(d) the same gateway from {compare}")
    return "\n".join(lines)


ROWS = (
    ("calls/s", "throughput"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("TTFT p50 ms", "ttft_p50_ms"),
    ("TTFT p99 ms", "ttft_p99_ms"),
    ("gateway CPU us/call", "cpu_us_per_call"),
    ("errors", "errors"),
)


def _phase_table(phases: dict[str, Any], gateways: list[str]) -> list[str]:
    paths = ["a", "b", *gateways]
    head = f"{'load':<11}{'figure':<20}" + "".join(f"{f'({p})':>9}" for p in paths)
    head += "".join(f"{f'{g}/b':>7}{f'{g}-b':>9}" for g in gateways)
    lines = [head, "-" * len(head)]
    for key, phase in phases.items():
        first = True
        for label, figure in ROWS:
            values = [phase.get(p, {}).get(figure) for p in paths]
            if all(v is None for v in values) or (
                figure == "errors" and not any(values)
            ):
                continue
            if figure == "cpu_us_per_call":
                values[0] = None  # (a) has no gateway
            cells = "".join(_cell(v, 9) for v in values)
            for gateway in gateways:
                cells += _comparison(
                    phase, figure, values[1], phase.get(gateway, {}), gateway
                )
            lines.append(f"{key if first else '':<11}{label:<20}{cells}")
            first = False
    return lines


def _comparison(
    phase: dict[str, Any], figure: str, b: float | None, mine: dict[str, Any], path: str
) -> str:
    value = mine.get(figure)
    if figure == "throughput":
        ratio = phase.get(f"{path}/b_throughput")
    else:
        ratio = value / b if b and value is not None else None
    diff = None if b is None or value is None else value - b
    return _cell(ratio, 7, ".2f") + _cell(diff, 9, "+.2f")


def _cell(value: float | None, width: int, fmt: str = "") -> str:
    if value is None:
        return f"{'-':>{width}}"
    if not fmt:
        fmt = ".0f" if abs(value) >= 100 else ".2f"
    return format(value, fmt).rjust(width)


def _ledger_lines(summary: dict[str, Any], path: str) -> list[str]:
    ledger = summary["ledger"][path]
    lines = [
        f"ledger ({path}): {ledger.get('rows')} rows for {ledger.get('calls_sent')}"
        f" calls; peak {ledger.get('peak_rows_per_s')} rows/s offered; backlog at the"
        f" end of load phases <= {ledger.get('max_backlog')}, drained in <="
        f" {ledger.get('max_drain_s')} s; growing: {ledger.get('backlog_growing')}"
    ]
    metrics = summary["metrics"].get(path)
    if metrics:
        lines.append(
            f"metrics ({path}): the addon's own hook time"
            f" {metrics['hook_time_us_per_call']} us/call over {metrics['hook_calls']}"
            f" calls; one /metrics scrape {metrics['scrape_wall_ms']} ms wall,"
            f" {metrics['scrape_cpu_ms']} ms gateway CPU"
        )
    return lines


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    lines = []
    for path in ("b", "c", "d"):
        m = memory.get(path)
        if m is None:
            continue
        lines.append(
            f"memory ({path}): RSS {m['rss_start_mb']} -> {m['rss_end_mb']} MB over"
            f" {m['calls']} small calls: {m['per_10k_mb']:+} MB per 10k calls"
            f" ({_cell(m['late_per_10k_mb'], 0, '+.2f')} in the second half)"
        )
    return lines


def write_json(summary: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        print(f"Error: cannot write {path}: {e.strerror}", file=sys.stderr)
