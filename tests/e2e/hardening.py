"""Shared pieces of the hardening end-to-end tests: policies, raw calls, metrics.

Everything talks to 127.0.0.1 only.
"""

import hashlib
import http.client
import json
import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from harness import Gateway, free_port

REAL_KEY = f"sk-ant-real-{uuid.uuid4().hex}"
KEYS = {name: f"tg-hard-{name}-{uuid.uuid4().hex}" for name in ("bob", "carol", "dave")}
BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def policy_file(
    tmp: Path,
    users: dict[str, str] | None = None,
    extra: str = "",
    *,
    on_ledger_error: str = "keep_serving",
) -> Path:
    """A policy where bob, carol and dave hold Tollgate keys; `users` sets limits."""
    limits = {name: "{}" for name in KEYS} | (users or {})
    declared = "".join(f"  {name}: {value}\n" for name, value in limits.items())
    keys = "\n".join(
        f"  - {{key_alias: {name}-key, user: {name},"
        f" key_sha256: {hashlib.sha256(key.encode()).hexdigest()}}}"
        for name, key in KEYS.items()
    )
    path = tmp / "policy.yaml"
    path.write_text(
        "version: 1\ntimezone: UTC\nunknown_callers: refuse\n"
        f"on_ledger_error: {on_ledger_error}\n"
        f"providers:\n  anthropic: {{api_key: {REAL_KEY}}}\n"
        f"{extra}users:\n{declared}keys:\n{keys}\n"
    )
    return path


def start(
    tmp: Path,
    upstream: Any,
    users: dict[str, str] | None = None,
    extra: str = "",
    *,
    on_ledger_error: str = "keep_serving",
    db: Path | None = None,
    **options: str,
) -> tuple[Gateway, int]:
    """A reverse gateway with metrics on a free loopback port; (gateway, port)."""
    policy = policy_file(tmp, users, extra, on_ledger_error=on_ledger_error)
    port = free_port()
    settings = {"budget_metrics_port": str(port), **options}
    return Gateway(tmp, upstream, policy=policy, options=settings, db=db), port


def call(
    port: int,
    user: str | None = "bob",
    *,
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, lower-cased headers, body)."""
    raw = body if isinstance(body, bytes) else json.dumps(body or BODY).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    if user is not None:
        sent["x-api-key"] = KEYS[user]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, raw, sent)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def gauge(text: str, name: str, budget: str) -> float:
    """The value of `name{budget="..."}` in a /metrics page."""
    pattern = rf'^{name}{{budget="{re.escape(budget)}"[^}}]*}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} for {budget} not in metrics"
    return float(found.group(1))


def refusal_reason(headers: dict[str, str]) -> str | None:
    return headers.get("x-tollgate-refusal")
