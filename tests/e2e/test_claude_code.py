"""Claude Code (`claude -p`) through a real mitmdump to the fake provider: exact rows.

Each run gets a temporary HOME, so no user configuration leaks in, and a tag sent
through `ANTHROPIC_CUSTOM_HEADERS`, so its ledger rows can be found again.
"""

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest

from harness import ROOT, TOKENS, FakeProvider, Gateway, ledger_rows, require, wait_rows

pytestmark = pytest.mark.e2e

CLAUDE = ROOT / ".cache" / "claude-code" / "node_modules" / ".bin" / "claude"
MODEL = "claude-sonnet-4-5"
REPLY = "Hello from the fake provider"
REAL_KEY = "sk-ant-real-key-for-claude-code"
USERS = {
    "alice": "{models: [claude-haiku-4-5]}",
    "bob": "{max_budget: 0}",
    "carol": "{rpm_limit: 1}",
    "dave": "{rpm_limit: 1}",
    "erin": "{}",
}
KEYS = {name: f"tg-cc-{name}-{uuid.uuid4().hex}" for name in USERS}
STRANGER_KEY = f"sk-ant-stranger-{uuid.uuid4().hex}"
FORGED_KEY = f"tg-forged-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str
    took_s: float


@pytest.fixture(scope="module", autouse=True)
def claude_cli() -> None:
    require(str(CLAUDE), "the Claude Code CLI")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    """Our own fake: Claude Code's large bodies stay out of the shared request log."""
    provider = FakeProvider()
    yield provider
    provider.close()


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def policy_text() -> str:
    users = "".join(f"  {name}: {limits}\n" for name, limits in USERS.items())
    keys = "".join(
        f"  - {{key_alias: {name}-claude-code, user: {name}, type: virtual,"
        f" key_sha256: {sha256(key)}}}\n"
        for name, key in KEYS.items()
    )
    return (
        "version: 1\ntimezone: UTC\nunknown_callers: refuse\n"
        f"providers:\n  anthropic: {{api_key: {REAL_KEY}}}\n"
        f"users:\n{users}keys:\n{keys}"
    )


def start_keyed(tmp: Path, fake: FakeProvider, mode: str) -> Gateway:
    policy = tmp / "policy.yaml"
    policy.write_text(policy_text())
    return Gateway(tmp, fake, mode=mode, policy=policy)


@pytest.fixture(scope="module")
def keyed_reverse(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = start_keyed(tmp_path_factory.mktemp("keyed-reverse"), fake, "reverse")
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def keyed_forward(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = start_keyed(tmp_path_factory.mktemp("keyed-forward"), fake, "forward")
    yield gateway
    gateway.close()


@pytest.fixture(params=["reverse", "forward"])
def keyed_gateway(request: pytest.FixtureRequest) -> Gateway:
    found: Gateway = request.getfixturevalue(f"keyed_{request.param}")
    return found


def claude_env(
    home: Path, gateway: Gateway, tag: str, usage: str, **extra: str
) -> dict[str, str]:
    """What a developer sets to route Claude Code through the gateway; nothing else."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": "claude-haiku-4-5",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-4-5",
        "ANTHROPIC_CUSTOM_HEADERS": f"x-fake-usage: {usage}\nx-tollgate-tags: {tag}",
    }
    if gateway.mode == "reverse":
        env["ANTHROPIC_BASE_URL"] = gateway.url
    else:
        env["HTTPS_PROXY"] = gateway.url
        env["NODE_EXTRA_CA_CERTS"] = str(gateway.ca)
    return {**env, **extra}


def new_tag() -> str:
    return f"test:{uuid.uuid4().hex[:10]}"


def launch(cwd: Path, env: dict[str, str], args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(CLAUDE), "-p", "say hi", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so one kill ends it all
    )


def end(proc: subprocess.Popen[bytes]) -> None:
    """Kill a run that is still going, with its children, by its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def run_claude(
    cwd: Path, env: dict[str, str], *args: str, timeout_s: float = 60
) -> Run:
    started = time.monotonic()
    with launch(cwd, env, list(args)) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        finally:
            end(proc)
    return Run(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


def pump(source: IO[bytes], into: "queue.Queue[bytes]") -> None:
    for line in source:
        into.put(line)


def watch_for_retry(
    cwd: Path, env: dict[str, str], timeout_s: float
) -> tuple[dict[str, Any] | None, float, bool]:
    """Run until Claude Code reports a retry; (event, seconds, still running)."""
    # stopped as soon as the event arrives, or after timeout_s
    started = time.monotonic()
    lines: queue.Queue[bytes] = queue.Queue()
    event = None
    with launch(cwd, env, ["--output-format", "stream-json", "--verbose"]) as proc:
        assert proc.stdout is not None
        reader = threading.Thread(target=pump, args=(proc.stdout, lines))
        reader.start()
        try:
            while event is None:
                remaining = started + timeout_s - time.monotonic()
                try:
                    line = lines.get(timeout=max(remaining, 0))
                except queue.Empty:
                    break
                message = json.loads(line) if line.startswith(b"{") else {}
                if message.get("subtype") == "api_retry":
                    event = message
            took_s = time.monotonic() - started
            running = proc.poll() is None
        finally:
            end(proc)
            reader.join(10)
    return event, took_s, running


def requests_after(fake: FakeProvider, seq: int) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["seq"] > seq]


def last_seq(fake: FakeProvider) -> int:
    return max((r["seq"] for r in fake.requests()), default=0)


def tagged_rows(gateway: Gateway, tag: str, count: int = 1) -> list[dict[str, Any]]:
    rows = wait_rows(gateway.db, count, f"list_contains(tags, '{tag}')")
    assert len(rows) == count, gateway.log_text()[-3000:]
    return rows


def credentials(request: dict[str, Any]) -> dict[str, str]:
    headers = request["headers"]
    names = ("x-api-key", "authorization")
    return {name: headers[name] for name in names if name in headers}


USAGE = "input=1200,output=345,cache_read=14723,cache_write_5m=3117,cache_write_1h=2000"


def test_claude_code_run_recorded_exactly_when_sent_through_gateway(
    gateway: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    tag = new_tag()
    env = claude_env(tmp_path, gateway, tag, USAGE, ANTHROPIC_API_KEY="sk-ant-test")
    seq = last_seq(fake)
    before = datetime.now(UTC)
    run = run_claude(tmp_path, env, "--output-format", "json")
    after = datetime.now(UTC)

    assert run.code == 0, run
    result = json.loads(run.out)
    assert (result["is_error"], result["result"]) == (False, REPLY)
    seen = requests_after(fake, seq)
    messages = [r for r in seen if r["path"].startswith("/v1/messages")]
    assert messages, seen
    session = messages[0]["headers"]["x-claude-code-session-id"]
    assert session == result["session_id"]
    assert not any(name.startswith("x-tollgate") for r in seen for name in r["headers"])

    rows = tagged_rows(gateway, tag, len(messages))
    [row] = [r for r in rows if r["endpoint"] == "messages" and r["model"] == MODEL]
    assert (row["provider"], row["price_model"], row["response_model"]) == (
        "anthropic",
        MODEL,
        MODEL,
    )
    assert (row["agent"], row["session"]) == ("claude-code", session)
    assert row["tags"] == [tag]
    assert (row["status"], row["outcome"], row["reason"]) == (200, "ok", None)
    assert (row["streamed"], row["usage_estimated"]) == (True, False)
    assert tuple(row[name] for name in TOKENS) == (1200, 345, 14723, 3117, 2000, 0)
    # 1200*3 + 345*15 + 14723*0.30 + 3117*3.75 + 2000*6
    # = 3600 + 5175 + 4416.9 + 11688.75 + 12000 = 36,880.65 USD per million tokens
    assert row["cost_usd"] == Decimal("0.0368806500")
    assert row["user_id"] is None
    assert row["key_fingerprint"] == sha256("sk-ant-test")[:12]

    during = ledger_rows(gateway.db, "ts >= ? and ts <= ?", [before, after])
    assert sorted(r["id"] for r in during) == sorted(r["id"] for r in rows)
    assert {(r["agent"], r["session"]) for r in during} == {("claude-code", session)}


REFUSALS = [
    pytest.param(
        KEYS["alice"],
        400,
        "model",
        re.escape(
            "Tollgate: model 'claude-sonnet-4-5' is not allowed for user 'alice'"
            " - allowed: claude-haiku-4-5"
        ),
        id="model-not-allowed",
    ),
    pytest.param(
        KEYS["bob"],
        402,
        "budget",
        re.escape(
            "Tollgate: budget of user:bob exhausted: spent $0.0000 of $0.0000"
            " this 1mo window; this call may cost up to $"
        )
        + r"\d+\.\d{4}; resets \d{4}-\d\d-01T00:00:00\+00:00",
        id="budget-exhausted",
    ),
    pytest.param(
        FORGED_KEY,
        401,
        "auth",
        re.escape(
            f"Tollgate: unknown Tollgate key (fingerprint {sha256(FORGED_KEY)[:12]})"
        ),
        id="unknown-virtual-key",
    ),
    pytest.param(
        STRANGER_KEY,
        401,
        "auth",
        re.escape(
            f"Tollgate: this API key (fingerprint {sha256(STRANGER_KEY)[:12]})"
            " is not registered"
        ),
        id="unregistered-provider-key",
    ),
]


@pytest.mark.parametrize(("key", "status", "reason", "message"), REFUSALS)
def test_claude_code_shows_refusal_at_once_when_gateway_says_no(
    keyed_reverse: Gateway,
    fake: FakeProvider,
    tmp_path: Path,
    key: str,
    status: int,
    reason: str,
    message: str,
) -> None:
    tag = new_tag()
    env = claude_env(tmp_path, keyed_reverse, tag, USAGE, ANTHROPIC_API_KEY=key)
    seq = last_seq(fake)
    run = run_claude(tmp_path, env)

    assert run.code == 1, run
    assert run.took_s < 20, run
    assert re.search(message, run.out), run
    assert [r for r in requests_after(fake, seq) if r["method"] == "POST"] == []
    # one row: Claude Code did not retry a refusal that says x-should-retry: false
    [row] = tagged_rows(keyed_reverse, tag)
    assert (row["status"], row["outcome"], row["reason"]) == (status, "blocked", reason)
    assert (row["agent"], row["model"], row["cost_usd"]) == (
        "claude-code",
        MODEL,
        Decimal(0),
    )


def first_call_admitted(gateway: Gateway, home: Path, key: str) -> None:
    usage = "input=10,output=5"
    env = claude_env(home, gateway, new_tag(), usage, ANTHROPIC_API_KEY=key)
    run = run_claude(home, env)
    assert (run.code, run.out) == (0, f"{REPLY}\n"), run


def test_claude_code_waits_retry_after_when_rpm_limit_reached(
    keyed_reverse: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    first_call_admitted(keyed_reverse, tmp_path, KEYS["carol"])
    tag = new_tag()
    key = KEYS["carol"]
    env = claude_env(tmp_path, keyed_reverse, tag, USAGE, ANTHROPIC_API_KEY=key)
    seq = last_seq(fake)
    event, took_s, running = watch_for_retry(tmp_path, env, timeout_s=30)

    assert event is not None, "no api_retry event within 30 s"
    assert (event["error_status"], event["attempt"]) == (429, 1)
    # the gateway's retry-after is whole seconds, at most the 60 s window
    assert 1000 <= event["retry_delay_ms"] <= 60_000
    assert event["retry_delay_ms"] % 1000 == 0
    assert took_s < 20 and running
    assert [r for r in requests_after(fake, seq) if r["method"] == "POST"] == []
    [row] = tagged_rows(keyed_reverse, tag)
    assert (row["status"], row["outcome"], row["reason"]) == (429, "blocked", "rpm")


def test_claude_code_shows_rate_limit_at_once_when_retries_disabled(
    keyed_reverse: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    first_call_admitted(keyed_reverse, tmp_path, KEYS["dave"])
    tag = new_tag()
    env = claude_env(
        tmp_path,
        keyed_reverse,
        tag,
        USAGE,
        ANTHROPIC_API_KEY=KEYS["dave"],
        CLAUDE_CODE_MAX_RETRIES="0",
    )
    seq = last_seq(fake)
    run = run_claude(tmp_path, env)

    assert (run.code, run.took_s < 20) == (1, True), run
    assert re.search(
        r"Tollgate: rpm limit of user:dave reached: 1 of 1 requests in the last 60 s;"
        r" retry in \d+ s",
        run.out,
    ), run
    assert [r for r in requests_after(fake, seq) if r["method"] == "POST"] == []
    [row] = tagged_rows(keyed_reverse, tag)
    assert (row["status"], row["reason"]) == (429, "rpm")


def swap_run(
    gateway: Gateway, fake: FakeProvider, home: Path, variable: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One run as erin with her virtual key in `variable`; (upstream requests, row)."""
    tag = new_tag()
    usage = "input=10,output=5"
    env = claude_env(home, gateway, tag, usage, **{variable: KEYS["erin"]})
    seq = last_seq(fake)
    run = run_claude(home, env)
    assert (run.code, run.out) == (0, f"{REPLY}\n"), run
    seen = requests_after(fake, seq)
    # bodies over 64 KB are logged as their size only; headers are always logged
    assert KEYS["erin"] not in json.dumps(seen)
    [row] = tagged_rows(gateway, tag)
    assert (row["user_id"], row["key_alias"], row["agent"], row["outcome"]) == (
        "erin",
        "erin-claude-code",
        "claude-code",
        "ok",
    )
    return seen, row


def test_virtual_key_swapped_for_real_key_when_sent_as_x_api_key(
    keyed_gateway: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    seen, _ = swap_run(keyed_gateway, fake, tmp_path, "ANTHROPIC_API_KEY")
    signed = [credentials(r) for r in seen if credentials(r)]
    assert signed and all(c == {"x-api-key": REAL_KEY} for c in signed), seen


def test_virtual_key_never_reaches_provider_when_sent_as_bearer_token(
    keyed_gateway: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    seen, _ = swap_run(keyed_gateway, fake, tmp_path, "ANTHROPIC_AUTH_TOKEN")
    signed = [credentials(r) for r in seen if credentials(r)]
    assert signed, seen
    assert all(REAL_KEY in " ".join(c.values()) for c in signed), seen


def test_virtual_bearer_token_swapped_into_x_api_key_when_provider_is_anthropic(
    keyed_reverse: Gateway, fake: FakeProvider, tmp_path: Path
) -> None:
    seen, _ = swap_run(keyed_reverse, fake, tmp_path, "ANTHROPIC_AUTH_TOKEN")
    signed = [credentials(r) for r in seen if credentials(r)]
    assert signed and all(c == {"x-api-key": REAL_KEY} for c in signed), seen
