#!/usr/bin/env python3
"""What Tollgate adds on top of mitmproxy: one command, loopback only, bounded in time.

The same loads go (a) straight to the fake provider, (b) through mitmdump with only
an event-stream addon (scripts/bench_stream_addon.py), (c) through `mitmdump -s
addons/budget.py` with a 1,000-user policy, ledger and metrics on. Rounds interleave
the paths; the table and `bench-results.json` hold the figures and the targets.

    python scripts/bench.py [--quick] [--leak] [--json PATH]
"""

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def ensure_environment() -> None:
    """Re-run under the project's .venv when this Python lacks the gateway."""
    try:
        import duckdb  # noqa: F401
        import mitmproxy  # noqa: F401
    except ImportError:
        if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
        raise SystemExit(
            "Error: duckdb and mitmproxy are not importable - run the README's"
            " install command, then `.venv/bin/python scripts/bench.py`"
        ) from None


ensure_environment()

import bench_load as load  # noqa: E402
import bench_procs as procs  # noqa: E402
import bench_report as report  # noqa: E402

LEAK_STEP = 10_000


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    """One load shape: a workload at a fixed concurrency for a bounded time."""

    key: str
    workload: str
    concurrency: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    load_s: float
    light_s: float
    warm_s: float
    memory_calls: int  # the scaled-down leak check, per path

    def phases(self) -> list[PhaseSpec]:
        return [
            PhaseSpec("small x16", "small", 16, self.load_s),
            PhaseSpec("small x1", "small", 1, self.light_s),
            PhaseSpec("stream x32", "stream", 32, self.load_s),
            PhaseSpec("stream x1", "stream-burst", 1, self.light_s),
            PhaseSpec("large x4", "large", 4, self.load_s),
            PhaseSpec("large x1", "large", 1, self.light_s),
        ]


FULL = Plan(rounds=4, load_s=3.0, light_s=2.0, warm_s=1.5, memory_calls=10_000)
QUICK = Plan(rounds=2, load_s=1.5, light_s=1.0, warm_s=0.75, memory_calls=2_000)


@dataclass(slots=True)
class Target:
    """Where one path listens and which process's CPU and memory count for it."""

    name: str
    port: int
    proc: procs.Proc
    sent: int = 0


@dataclass(slots=True)
class Run:
    """Everything measured, in the order it was measured."""

    records: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    ledger_probes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Owns the processes of one benchmark run; `close()` stops each by its PID."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.started = time.monotonic()
        self.deadline = self.started + args.max_seconds
        self.processes: list[procs.Proc] = []
        self.targets: dict[str, Target] = {}
        self.metrics_ports: dict[str, int] = {}
        self.dbs: dict[str, Path] = {}
        self.run = Run()
        self.plan = QUICK

    # processes

    def start(self) -> None:
        fake, upstream = procs.start_fake_provider(self.tmp)
        self.processes.append(fake)
        self.policy = procs.write_policy(self.tmp, self.args.users, self.args.teams)
        bare, bare_port = procs.start_mitmdump(
            "mitmdump-b",
            upstream,
            self.tmp,
            {},
            ROOT / "scripts" / "bench_stream_addon.py",
        )
        self.processes.append(bare)
        self.targets = {
            "a": Target("a", upstream, fake),
            "b": Target("b", bare_port, bare),
        }
        self.start_gateway("c", upstream, ROOT / "addons" / "budget.py")
        if self.args.compare is not None:
            self.start_gateway("d", upstream, self.args.compare.resolve())
        self.paths = tuple(self.targets)
        self.workloads = load.anthropic_workloads(
            events=50, large_bytes=400_000, delay_ms=1
        )
        self.heads = {
            (name, path): load.request_heads(w, self.policy.keys, target.port)
            for name, w in self.workloads.items()
            for path, target in self.targets.items()
        }
        self.smoke_test()

    def start_gateway(self, path: str, upstream: int, script: Path) -> None:
        """A Tollgate gateway with the bench policy, its own ledger and metrics port."""
        self.dbs[path] = self.tmp / f"spend-{path}.duckdb"
        self.metrics_ports[path] = procs.free_port()
        settings = {
            "budget_policy": str(self.policy.path),
            "budget_db": str(self.dbs[path]),
            "budget_metrics_port": str(self.metrics_ports[path]),
        }
        proc, port = procs.start_mitmdump(
            f"mitmdump-{path}", upstream, self.tmp, settings, script
        )
        self.processes.append(proc)
        self.targets[path] = Target(path, port, proc)

    def smoke_test(self) -> None:
        """One small call per path must answer 200, or the run stops here."""
        for path, target in self.targets.items():
            result = load.run_phase(
                target.port,
                self.workloads["small"],
                self.heads[("small", path)],
                concurrency=1,
                max_calls=1,
                duration_s=30,
            )
            target.sent += result.calls + result.errors
            if result.statuses != {200: 1}:
                raise RuntimeError(
                    f"({path}) answered {result.statuses or 'nothing'}"
                    " to a plain call:\n"
                    f"{target.proc.log_tail()}"
                )

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except OSError as e:
                print(
                    f"warning: stopping {proc.name} ({proc.pid}): {e}", file=sys.stderr
                )
        self.processes.clear()

    # measuring

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def phase(
        self, path: str, spec: PhaseSpec, max_calls: int = 10**7
    ) -> dict[str, Any]:
        """Run one phase on one path; its record (samples kept aside for pooling)."""
        target = self.targets[path]
        workload = self.workloads[spec.workload]
        duration = max(min(spec.duration_s, self.remaining_s()), 0.1)
        cpu_before = target.proc.cpu_s()
        result = load.run_phase(
            target.port,
            workload,
            self.heads[(spec.workload, path)],
            concurrency=spec.concurrency,
            max_calls=max_calls,
            duration_s=duration,
        )
        cpu = target.proc.cpu_s() - cpu_before
        target.sent += result.calls + result.errors
        if not target.proc.alive():
            raise RuntimeError(f"{target.proc.name} died:\n{target.proc.log_tail()}")
        return report.phase_record(result, cpu)

    def warm_up(self) -> None:
        for path in self.paths:
            for name in ("small", "stream", "large"):
                spec = PhaseSpec("warm-up", name, 8, self.plan.warm_s)
                self.phase(path, spec)
        for path in self.metrics_ports:
            self.drain(path)

    def record(self, spec: PhaseSpec, path: str, round_no: int) -> None:
        result_record = self.phase(path, spec)
        result_record["round"] = round_no
        samples = result_record.pop("samples")
        self.run.records.setdefault(spec.key, {}).setdefault(path, []).append(
            result_record
        )
        pooled = self.run.samples.setdefault(f"{spec.key}/{path}", {})
        for name, values in samples.items():
            pooled.setdefault(name, []).extend(values)
        if path in self.metrics_ports and spec.concurrency > 1:
            probe = self.drain(path)
            probe.update(
                phase=spec.key, round=round_no, rate=result_record["throughput"]
            )
            self.run.ledger_probes.setdefault(path, []).append(probe)

    def drain(self, path: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """The ledger backlog now, and how long until it is empty (via /metrics)."""
        began = time.monotonic()
        port = self.metrics_ports[path]
        first = procs.scrape_metrics(port)
        if first is None:
            return {"backlog": None, "drain_s": None}
        backlog = first.get("tollgate_ledger_backlog_rows", 0.0)
        current = backlog
        while current and time.monotonic() - began < timeout_s:
            time.sleep(0.05)
            found = procs.scrape_metrics(port)
            current = found.get("tollgate_ledger_backlog_rows", 0.0) if found else 0.0
        drained = None if current else round(time.monotonic() - began, 3)
        return {"backlog": int(backlog), "drain_s": drained}

    def sample_memory(self, label: str, paths: tuple[str, ...] = ()) -> None:
        for path in paths or self.paths[1:]:
            target = self.targets[path]
            self.run.memory.append(
                {
                    "path": path,
                    "at": label,
                    "calls": target.sent,
                    "rss_mb": round(target.proc.rss_mb(), 1),
                }
            )

    def memory_check(self, path: str, calls: int, steps: int) -> None:
        """Small calls in `steps` equal parts, with RSS after each part."""
        step = max(calls // steps, 1)
        spec = PhaseSpec("memory", "small", 16, self.remaining_s())
        # Every key once first: per-key state is made on first use, not leaked.
        warm = PhaseSpec("memory warm-up", "small", 16, min(self.remaining_s(), 30))
        self.phase(path, warm, max_calls=2 * len(self.policy.keys))
        self.sample_memory("memory 0", (path,))
        for n in range(1, steps + 1):
            if self.remaining_s() < 1:
                self.run.extra["stopped_early"] = (
                    f"time limit in the memory check of {path}"
                )
                return
            began = time.monotonic()
            result = self.phase(path, spec, max_calls=step)
            self.sample_memory(f"memory {n}", (path,))
            if path in self.metrics_ports:
                probe = self.drain(path)
                probe.update(phase="memory", rate=result["throughput"])
                self.run.ledger_probes.setdefault(path, []).append(probe)
            if steps > 2:
                print(
                    f"({path}) {n * step} calls, RSS {self.run.memory[-1]['rss_mb']} MB"
                    f" ({time.monotonic() - began:.0f} s)",
                    flush=True,
                )

    # the two modes

    def run_rounds(self, plan: Plan) -> None:
        self.plan = plan
        for path in self.paths[1:]:
            self.memory_check(path, plan.memory_calls, steps=2)
        self.warm_up()
        for round_no in range(1, plan.rounds + 1):
            if self.remaining_s() < 5:
                self.run.extra["stopped_early"] = f"time limit before round {round_no}"
                break
            turn = round_no % len(self.paths)
            order = self.paths[turn:] + self.paths[:turn]
            for spec in plan.phases():
                for path in order:
                    self.record(spec, path, round_no)
            print(
                f"round {round_no}/{plan.rounds} done"
                f" ({time.monotonic() - self.started:.0f} s)",
                flush=True,
            )
        self.finish_ledger()

    def run_leak(self, total_calls: int) -> None:
        """Only the memory check, at full size, on the gateway(s)."""
        for path in self.metrics_ports:
            self.memory_check(path, total_calls, steps=max(total_calls // LEAK_STEP, 1))
        self.finish_ledger()

    def finish_ledger(self) -> None:
        """Ledger rows against calls sent, scrape cost and the addon's own timing."""
        for path, port in self.metrics_ports.items():
            probe = self.drain(path)
            proc = self.targets[path].proc
            self.run.ledger[path] = {
                "calls_sent": self.targets[path].sent,
                "rows": procs.count_rows(self.dbs[path]),
                "final_drain_s": probe["drain_s"],
            }
            cpu_before = proc.cpu_s()
            began = time.perf_counter()
            metrics = procs.scrape_metrics(port)
            if metrics is not None:
                self.run.metrics[path] = report.metrics_summary(
                    metrics,
                    wall_ms=(time.perf_counter() - began) * 1000,
                    cpu_ms=(proc.cpu_s() - cpu_before) * 1000,
                )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 short rounds, about a minute"
    )
    parser.add_argument(
        "--leak",
        action="store_true",
        help="only the memory check: --leak-calls small calls"
        " through (c), RSS every 10,000",
    )
    parser.add_argument("--leak-calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, help="rounds of (a, b, c) per load")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench-results.json",
        help="where the figures go (default: bench-results.json)",
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="stop starting new load after this long",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="BUDGET_PY",
        help="also measure (d): the gateway from another checkout,"
        " e.g. ../other/addons/budget.py, interleaved with (c)",
    )
    return parser.parse_args(argv)


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    machine = report.machine_facts()

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            if args.leak:
                bench.run_leak(args.leak_calls)
            else:
                bench.run_rounds(plan)
        finally:
            bench.close()

    machine["loadavg_end"] = report.loadavg()
    mode = "leak" if args.leak else ("quick" if args.quick else "full")
    summary = report.summarize(bench.run, machine, mode, args)
    summary["elapsed_s"] = round(time.monotonic() - bench.started, 1)
    report.write_json(summary, args.json)
    print(report.render(summary))
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
