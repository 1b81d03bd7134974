"""Real processes for end-to-end tests: the fake provider, mitmdump, the SDK clients.

Everything binds 127.0.0.1 on a free port and is stopped by its PID.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest

# The ledger's token columns, in schema order.
TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MITMDUMP = str(VENV_BIN / "mitmdump")
SDK_PYTHON = os.environ.get(
    "TOLLGATE_SDK_PYTHON", str(ROOT / ".venv-sdk" / "bin" / "python")
)
ROUTE_ADDON = ROOT / "tests" / "e2e" / "route_to_fake.py"


def require(path: str, what: str) -> None:
    """Skip a test whose tool is missing, except in CI, where that is a failure."""
    if Path(path).exists():
        return
    message = f"{what} not found at {path} - run scripts/setup-test-env.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class FakeProvider:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "fake_provider.py"),
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not found:
            stop(self.proc)
            raise RuntimeError(f"fake provider said {line!r}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_fake/requests") as answer:
            data = json.load(answer)
        return data["requests"] if isinstance(data, dict) else data

    def reset(self) -> None:
        request = urllib.request.Request(
            f"{self.url}/_fake/reset", method="POST", data=b""
        )
        urllib.request.urlopen(request).close()

    def close(self) -> None:
        stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Gateway:
    """`mitmdump -s addons/budget.py` in reverse or forward mode, in its own confdir."""

    def __init__(
        self,
        tmp: Path,
        upstream: FakeProvider,
        *,
        mode: str = "reverse",
        policy: Path | None = None,
        options: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        db: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.mode = mode
        self.db = db or tmp / "spend.duckdb"
        self.port = free_port()
        self.confdir = tmp / "mitmproxy"
        self.log_path = tmp / f"mitmdump-{self.port}.log"
        options = dict(options or {})
        detail = options.pop("flow_detail", "0")
        args = [
            MITMDUMP,
            "--flow-detail",
            detail,
            "-s",
            str(ROOT / "addons" / "budget.py"),
        ]
        if mode == "reverse":
            args += ["--mode", f"reverse:{upstream.url}"]
        else:
            args += ["-s", str(ROUTE_ADDON)]
        args += ["--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
        settings = {
            "confdir": str(self.confdir),
            "budget_db": str(self.db),
            "budget_metrics_port": "0",
            "termlog_verbosity": "info",
        }
        if policy is not None:
            settings["budget_policy"] = str(policy)
        settings.update(options)
        for name, value in settings.items():
            args += ["--set", f"{name}={value}"]
        environment = {
            **os.environ,
            "TOLLGATE_FAKE_UPSTREAM": f"127.0.0.1:{upstream.port}",
        }
        environment.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=environment
        )
        try:
            wait_port(self.port, self.proc)
            time.sleep(0.3)  # mitmdump listens first, then exits on startup errors
            if self.proc.poll() is not None:
                raise RuntimeError("mitmdump exited")
        except RuntimeError:
            self.close()
            raise RuntimeError(f"mitmdump failed: {self.log_text()}") from None
        self.url = f"http://127.0.0.1:{self.port}"
        self.ca = self.confdir / "mitmproxy-ca-cert.pem"

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, sig)
        self.log.close()

    def sdk_env(self, mode: str) -> dict[str, str]:
        """What a developer sets: a base URL (reverse), or a proxy and the CA."""
        if mode == "reverse":
            return {"ANTHROPIC_BASE_URL": self.url, "OPENAI_BASE_URL": f"{self.url}/v1"}
        return {
            "HTTPS_PROXY": self.url,
            "SSL_CERT_FILE": str(self.ca),
            "NO_PROXY": "",
        }


def run_sdk(calls: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Run calls with the official SDKs in their own environment; their results."""
    require(SDK_PYTHON, "the SDK environment")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_PROXY")
        and k not in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "SSL_CERT_FILE")
    }
    result = subprocess.run(
        [SDK_PYTHON, str(ROOT / "tests" / "clients" / "sdk_client.py")],
        input=json.dumps(calls).encode(),
        capture_output=True,
        env={**clean, **env},
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode())
    return json.loads(result.stdout)


def ledger_rows(
    db: Path, where: str = "true", params: list[Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of `requests` as dicts, oldest first, waiting for the writer's batch."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with duckdb.connect(str(db), read_only=True) as con:
                cursor = con.execute(
                    f"SELECT * FROM requests WHERE {where} ORDER BY ts", params or []
                )
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_rows(
    db: Path, count: int, where: str = "true", timeout_s: float = 10
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = ledger_rows(db, where) if db.exists() else []
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)
