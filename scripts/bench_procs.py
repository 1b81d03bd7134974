"""The benchmark's processes: fake provider and mitmdump, their CPU, memory, ledger.

Everything listens on 127.0.0.1. Each process is started in its own session, so a
Ctrl-C reaches only the benchmark, which stops every process it started by its PID.
"""

import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODEL_LIST = "[claude-sonnet-4-5, claude-haiku-4-5, claude-opus-4-5]"
NEVER = {"rpm_limit": 10**9, "tpm_limit": 10**13}


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_tool(name: str) -> str:
    """A console script beside the running Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = Path(folder) / name
        if found.exists():
            return str(found)
    raise SystemExit(
        f"Error: {name} not found beside {sys.executable} or on PATH"
        " - run the README's install command first"
    )


class Proc:
    """One child process, its log file, and readings from /proc."""

    def __init__(self, name: str, args: list[str], log: Path, **kw: object) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(
            args,
            stdout=kw.pop("stdout", self._log),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,  # type: ignore[call-overload]
        )
        self.pid = self.popen.pid

    def cpu_s(self) -> float:
        """User plus system CPU time of the whole process (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it has not exited after 20 s."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()


def start_fake_provider(tmp: Path) -> tuple[Proc, int]:
    """`scripts/fake_provider.py --port 0`; (process, the port it printed)."""
    args = [sys.executable, str(ROOT / "scripts" / "fake_provider.py"), "--port", "0"]
    proc = Proc("fake-provider", args, tmp / "fake.log", stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        proc.stop()
        raise RuntimeError(f"fake provider said {line!r}")
    return proc, int(found.group(1))


def start_mitmdump(
    name: str, upstream: int, tmp: Path, settings: dict[str, str], script: Path
) -> tuple[Proc, int]:
    """mitmdump in reverse mode in front of `upstream`; (process, listen port)."""
    port = free_port()
    args = [
        venv_tool("mitmdump"),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--flow-detail",
        "0",
        "-s",
        str(script),
    ]
    options = {
        "confdir": str(tmp / "mitmproxy"),
        "termlog_verbosity": "warn",
        **settings,
    }
    for key, value in options.items():
        args += ["--set", f"{key}={value}"]
    proc = Proc(name, args, tmp / f"{name}.log")
    try:
        wait_port(port, proc)
    except RuntimeError:
        proc.stop()
        raise
    return proc, port


def wait_port(port: int, proc: Proc, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: nothing listening on {port} after {timeout_s} s")


@dataclass(frozen=True, slots=True)
class BenchPolicy:
    path: Path
    keys: list[str]
    users: int
    teams: int


def write_policy(tmp: Path, users: int, teams: int) -> BenchPolicy:
    """A policy with limits on every level that no benchmark call can reach."""
    keys = [f"tg-bench-{i:04d}-{secrets.token_hex(12)}" for i in range(users)]
    lines = [
        "version: 1",
        "timezone: UTC",
        "unknown_callers: refuse",
        "allow_unpriced_models: false",
        "on_ledger_error: keep_serving",
        "alert_thresholds: [0.5, 0.8, 1.0]",
        "providers:",
        "  anthropic:",
        "    api_key: sk-ant-bench-upstream",
        "org:",
        *_limits("  ", 10**9, "1mo"),
        "teams:",
    ]
    for t in range(teams):
        lines += [
            f"  team-{t:02d}:",
            *_limits("    ", 10**8, "1mo"),
            f"    models: {MODEL_LIST}",
        ]
    lines.append("users:")
    for u in range(users):
        lines += [
            f"  user-{u:04d}:",
            f"    team: team-{u % teams:02d}",
            *_limits("    ", 10**7, "1d"),
        ]
    lines.append("keys:")
    for u, key in enumerate(keys):
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines += [
            f"  - key_alias: user-{u:04d}-cli",
            f"    user: user-{u:04d}",
            f"    key_sha256: {digest}",
            *_limits("    ", 10**6, "1w"),
        ]
    lines += ["tags:", "  project:bench:", *_limits("    ", 10**9, "1mo")]
    path = tmp / "policy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return BenchPolicy(path=path, keys=keys, users=users, teams=teams)


def _limits(indent: str, budget: int, duration: str) -> list[str]:
    return [
        f"{indent}max_budget: {budget}",
        f"{indent}budget_duration: {duration}",
        *(f"{indent}{name}: {value}" for name, value in NEVER.items()),
    ]


def scrape_metrics(port: int) -> dict[str, float] | None:
    """Sums of each sample name on /metrics, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return found


def count_rows(db: Path, timeout_s: float = 10) -> int | None:
    """Rows in the ledger, read-only, waiting out the writer's short batch locks."""
    import duckdb

    if not db.exists():
        return 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with duckdb.connect(str(db), read_only=True) as con:
                found = con.execute("SELECT count(*) FROM requests").fetchone()
                return int(found[0]) if found else 0
        except duckdb.Error as e:
            if time.monotonic() > deadline:
                print(f"warning: cannot count ledger rows: {e}", file=sys.stderr)
                return None
            time.sleep(0.05)
