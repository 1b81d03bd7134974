"""Security end to end: no secret kept or shown, identity from keys only, no way around.

A run with known secrets (Tollgate keys, the real provider key, strangers' keys,
prompt text) is followed by a search of everything the gateway keeps or says: the
ledger, its journal, the log at debug level, /metrics and every answer.
"""

import base64
import hashlib
import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import harness
from harness import FakeProvider, Gateway, ledger_rows, wait_rows

from .hardening import BODY, KEYS, REAL_KEY, call, refusal_reason, scrape, start

pytestmark = pytest.mark.e2e

PROMPT = f"prompt-text-{uuid.uuid4().hex}"
STRANGER = f"sk-ant-stranger-{uuid.uuid4().hex}"
FORGED = f"tg-forged-{uuid.uuid4().hex}"
COMPLETION = "Hello from the fake provider"
USERS = {"bob": "{max_budget: 0.05}", "carol": "{models: [claude-haiku-4-5]}"}


@pytest.fixture(scope="module")
def guarded(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, int]]:
    tmp = tmp_path_factory.mktemp("security")
    # flow_detail 1 is mitmdump's default: it logs every request's URL.
    gateway, metrics = start(
        tmp, fake, USERS, termlog_verbosity="debug", flow_detail="1"
    )
    yield gateway, metrics
    gateway.close()


def marker() -> dict[str, str]:
    return {"x-fake-usage": f"input=7,output={uuid.uuid4().int % 10**6}"}


def seen_upstream(fake: FakeProvider, headers: dict[str, str]) -> list[dict[str, Any]]:
    wanted = headers["x-fake-usage"]
    return [r for r in fake.requests() if r["headers"].get("x-fake-usage") == wanted]


def test_no_secret_or_prompt_kept_or_shown_when_traffic_used_known_secrets(
    guarded: tuple[Gateway, int], fake: FakeProvider
) -> None:
    gateway, metrics = guarded
    prompt = {**BODY, "messages": [{"role": "user", "content": PROMPT}]}
    basic = base64.b64encode(f"bob:{KEYS['bob']}".encode()).decode()
    answers = [
        call(gateway.port, body=prompt),
        call(gateway.port, body={**prompt, "stream": True}),
        call(
            gateway.port,
            None,
            body=prompt,
            headers={"authorization": f"Bearer {KEYS['dave']}"},
        ),
        call(gateway.port, "carol", body={**prompt, "model": "claude-opus-4-1"}),
        call(gateway.port, None, body=prompt, headers={"x-api-key": FORGED}),
        call(gateway.port, None, body=prompt, headers={"x-api-key": STRANGER}),
        call(
            gateway.port,
            None,
            body=prompt,
            headers={"proxy-authorization": f"Basic {basic}"},
        ),
        call(gateway.port, body=prompt, headers={"x-fake-status": "500"}),
        call(
            gateway.port,
            None,
            body={"contents": [{"parts": [{"text": PROMPT}]}]},
            path=f"/v1beta/models/gemini-2.5-flash:generateContent?key={KEYS['bob']}",
        ),
        call(gateway.port, body={**prompt, "max_tokens": 10**7}),
    ]
    page = scrape(metrics)
    rows = wait_rows(gateway.db, len(answers))
    assert [a[0] for a in answers] == [200, 200, 200, 400, 401, 401, 401, 500, 503, 402]

    kept = {
        "ledger": json.dumps(ledger_rows(gateway.db), default=str),
        "journal": (gateway.db.parent / "spend.duckdb.journal").read_text(),
        "log": gateway.log_text(),
        "metrics": page,
    }
    shown = {f"answer {i}": f"{a[1]} {a[2]!r}" for i, a in enumerate(answers)}
    secrets = [*KEYS.values(), REAL_KEY, STRANGER, FORGED, PROMPT]
    for where, text in {**kept, **shown}.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... found in {where}"
    for where, text in kept.items():
        assert COMPLETION not in text, f"completion text found in {where}"
    expected = {hashlib.sha256(k.encode()).hexdigest()[:12] for k in KEYS.values()}
    fingerprints = {r["key_fingerprint"] for r in rows} - {None}
    assert fingerprints and fingerprints <= expected | {
        hashlib.sha256(STRANGER.encode()).hexdigest()[:12]
    }
    assert not any(
        r["key_fingerprint"]
        for r in rows
        if r["user_id"] is None and r["outcome"] != "blocked"
    )


def test_metrics_listen_on_loopback_only_when_no_host_is_set(
    guarded: tuple[Gateway, int],
) -> None:
    _, metrics = guarded
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if int(port, 16) == metrics and state == "0A":  # LISTEN
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, and nothing else


@pytest.mark.parametrize(
    "headers",
    [
        {"x-tollgate-user": "carol", "x-tollgate-team": "admins"},
        {"x-user-id": "carol", "x-forwarded-user": "carol", "x-remote-user": "carol"},
        {"x-claude-code-session-id": "s", "x-tollgate-key-alias": "carol-key"},
    ],
    ids=["gateway-headers", "proxy-headers", "session-headers"],
)
def test_identity_comes_from_the_key_when_client_sets_identity_headers(
    guarded: tuple[Gateway, int], headers: dict[str, str]
) -> None:
    gateway, _ = guarded
    tag = f"id:{uuid.uuid4().hex[:8]}"
    assert (
        call(gateway.port, "dave", headers={**headers, "x-tollgate-tags": tag})[0]
        == 200
    )
    [row] = wait_rows(gateway.db, 1, f"list_contains(tags, '{tag}')")
    assert (row["user_id"], row["key_alias"]) == ("dave", "dave-key")
    status, answer_headers, _ = call(
        gateway.port, None, headers={**headers, "x-api-key": STRANGER}
    )
    assert (status, refusal_reason(answer_headers)) == (401, "auth")


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"x-api-key": FORGED},
        {"x-api-key": STRANGER},
        {"x-api-key": ""},
        {"authorization": "Bearer "},
        {"authorization": f"Basic {base64.b64encode(KEYS['bob'].encode()).decode()}"},
        {"authorization": f"Token {KEYS['bob']}"},
        {"x-api-key": f"{KEYS['bob']}x"},
    ],
    ids=[
        "none",
        "forged",
        "stranger",
        "empty",
        "empty-bearer",
        "basic",
        "token",
        "near-miss",
    ],
)
def test_real_key_never_sent_when_credentials_are_not_valid(
    guarded: tuple[Gateway, int], fake: FakeProvider, credentials: dict[str, str]
) -> None:
    gateway, _ = guarded
    headers = {**marker(), **credentials}
    status, answer_headers, _ = call(gateway.port, None, headers=headers)
    assert (status, refusal_reason(answer_headers)) == (401, "auth")
    assert seen_upstream(fake, headers) == []


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        (
            "/v1/messages/batches",
            {"requests": [{"custom_id": "a", "params": BODY}]},
            "message batches cannot be metered",
        ),
        (
            "/v1/images/generations",
            {"model": "gpt-image-1", "prompt": "x"},
            "POST /v1/images/generations cannot be metered",
        ),
        (
            "/v1/realtime/sessions",
            {"model": "gpt-4o-realtime-preview"},
            "cannot be metered",
        ),
    ],
    ids=["anthropic-batch", "openai-images", "realtime-session"],
)
def test_unmeterable_endpoint_refused_when_policy_applies(
    guarded: tuple[Gateway, int], fake: FakeProvider, path: str, body: Any, reason: str
) -> None:
    gateway, _ = guarded
    headers = marker()
    status, answer_headers, answer = call(
        gateway.port, body=body, headers=headers, path=path
    )
    assert (status, refusal_reason(answer_headers)) == (400, "unmetered")
    assert reason in answer.decode()
    assert seen_upstream(fake, headers) == []


def test_batch_status_passes_when_only_read(guarded: tuple[Gateway, int]) -> None:
    gateway, _ = guarded
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request(
        "GET", "/v1/messages/batches/msgbatch_01", headers={"x-api-key": KEYS["bob"]}
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.getheader("x-tollgate-refusal") is None


@pytest.mark.parametrize("upgrade", ["websocket", "foo, WebSocket"])
def test_websocket_upgrade_refused_when_policy_applies(
    guarded: tuple[Gateway, int], fake: FakeProvider, upgrade: str
) -> None:
    gateway, _ = guarded
    headers = marker()
    request = (
        "GET /v1/realtime?model=gpt-4o-realtime-preview HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {KEYS['bob']}\r\nupgrade: {upgrade}\r\n"
        "connection: Upgrade\r\nsec-websocket-version: 13\r\n"
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"x-fake-usage: {headers['x-fake-usage']}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"WebSocket session" in answer
    assert seen_upstream(fake, headers) == []


def raw_body(text: str) -> bytes:
    return text.replace(
        "MSG", '"messages": [{"role": "user", "content": "hi"}]'
    ).encode()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            '{"model": "claude-sonnet-4-5", "max_tokens": 10, MSG,'
            ' "model": "claude-opus-4-1"}',
            "repeats the top-level key 'model'",
        ),
        (
            '{"model": "claude-opus-4-1", "max_tokens": 10, MSG,'
            ' "model": "claude-sonnet-4-5"}',
            "repeats the top-level key 'model'",
        ),
        (
            '{"model": "claude-sonnet-4-5", "mod\\u0065l": "claude-opus-4-1",'
            ' "max_tokens": 10, MSG}',
            "repeats the top-level key 'model'",
        ),
        (
            '{"model": "claude-sonnet-4-5", "max_tokens": 10,'
            ' "max_tokens": 64000, MSG}',
            "repeats the top-level key 'max_tokens'",
        ),
        ('{"model": "claude\\u2010sonnet-4-5", "max_tokens": 10, MSG}', "non-ASCII"),
        ('{"model": "claude-sonnet-4-5\\u200b", "max_tokens": 10, MSG}', "non-ASCII"),
        ('{"model": " claude-sonnet-4-5", "max_tokens": 10, MSG}', "spaces"),
        ('{"model": "claude-sonnet-4-5\\t", "max_tokens": 10, MSG}', "control"),
        (
            '{"model": "claude-sonnet-4-5-' + "x" * 300 + '", "max_tokens": 10, MSG}',
            "longer than 256",
        ),
        ('{"model": ["claude-sonnet-4-5"], "max_tokens": 10, MSG}', "must be a string"),
    ],
    ids=[
        "dup-last-cheap",
        "dup-last-costly",
        "escaped-dup",
        "dup-max-tokens",
        "hyphen-lookalike",
        "zero-width",
        "leading-space",
        "tab",
        "long",
        "list",
    ],
)
def test_confusing_body_refused_before_upstream_when_policy_applies(
    guarded: tuple[Gateway, int], fake: FakeProvider, body: str, says: str
) -> None:
    gateway, _ = guarded
    tag = f"t:{uuid.uuid4().hex}"
    headers = {**marker(), "x-tollgate-tags": tag}
    status, answer_headers, answer = call(
        gateway.port, body=raw_body(body), headers=headers
    )
    assert (status, refusal_reason(answer_headers)) == (400, "body")
    assert says in json.loads(answer)["error"]["message"]
    assert seen_upstream(fake, headers) == []
    [row] = wait_rows(gateway.db, 1, f"list_contains(tags, '{tag}')")
    assert (row["outcome"], row["user_id"]) == ("blocked", "bob")


def test_model_in_path_and_body_must_agree_when_policy_applies(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, _ = guarded
    body = {"model": "models/gemini-2.5-pro", "contents": [{"parts": [{"text": "hi"}]}]}
    status, headers, answer = call(
        gateway.port, body=body, path="/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert (status, refusal_reason(headers)) == (400, "body")
    assert "the model in the path ('gemini-2.5-flash')" in answer.decode()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {**BODY, "max_tokens": "64000"}),
        ("/v1/messages", {**BODY, "max_tokens": 64000.0}),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [], "generation_config": {"max_output_tokens": "65536"}},
        ),
    ],
    ids=["string", "float", "gemini-snake-case"],
)
def test_output_limit_reserved_in_full_when_written_in_another_spelling(
    guarded: tuple[Gateway, int], path: str, body: dict[str, Any]
) -> None:
    gateway, _ = guarded
    status, headers, answer = call(gateway.port, body=body, path=path)
    assert (status, refusal_reason(headers)) == (402, "budget")  # bob has $0.05


@pytest.fixture
def forward(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    monkeypatch.setattr(
        harness, "ROUTE_ADDON", Path(__file__).with_name("route_all_to_fake.py")
    )
    from .hardening import policy_file

    gateway = Gateway(tmp_path, fake, mode="forward", policy=policy_file(tmp_path))
    yield gateway
    gateway.close()


def proxied(gateway: Gateway, method: str, url: str, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request(
            method,
            url,
            json.dumps(BODY),
            {"content-type": "application/json", **headers},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_real_key_not_sent_when_forward_proxy_target_is_not_a_provider(
    forward: Gateway, fake: FakeProvider
) -> None:
    key = {"x-api-key": KEYS["bob"]}
    away = {**marker(), **key}
    assert (
        proxied(forward, "POST", "http://llm.attacker.invalid/v1/messages", away) == 403
    )
    listing = {**marker(), **key}
    assert (
        proxied(forward, "GET", "http://llm.attacker.invalid/v1/models", listing) == 403
    )
    assert seen_upstream(fake, away) == seen_upstream(fake, listing) == []

    spoofed = {**marker(), **key, "host": "llm.attacker.invalid"}
    assert (
        proxied(forward, "POST", "http://api.anthropic.com/v1/messages", spoofed) == 200
    )
    [seen] = seen_upstream(fake, spoofed)
    assert seen["headers"]["x-api-key"] == REAL_KEY  # it went to the provider
    [row] = wait_rows(forward.db, 1, "outcome = 'blocked'")
    assert (row["user_id"], row["reason"], row["status"]) == ("bob", "auth", 403)


def test_gemini_key_leaves_the_url_when_sent_as_query_parameter(
    fake: FakeProvider, tmp_path: Path
) -> None:
    real = f"AIza-real-{uuid.uuid4().hex}"
    gateway, _ = start(
        tmp_path, fake, extra=f"  gemini: {{api_key: {real}}}\n", flow_detail="1"
    )
    try:
        headers = marker()
        status, _, _ = call(
            gateway.port,
            None,
            headers=headers,
            body={"contents": [{"parts": [{"text": "hi"}]}]},
            path=f"/v1beta/models/gemini-2.5-flash:generateContent?key={KEYS['bob']}",
        )
        [seen] = seen_upstream(fake, headers)
        log = gateway.log_text()
    finally:
        gateway.close()
    assert status == 200
    assert seen["headers"].get("x-goog-api-key") == real
    assert "key=" not in seen["path"]
    assert KEYS["bob"] not in log and real not in log


@pytest.mark.parametrize(
    "path",
    [
        "/V1/Messages",
        "/v1%2Fmessages",
        "/%761/messages",
        "/v1/uploads/../messages",
        "/v1/uploads/%2e%2e/messages",
        "/V1/MESSAGES/BATCHES",
    ],
)
def test_odd_path_spelling_refused_before_upstream_when_policy_applies(
    guarded: tuple[Gateway, int], fake: FakeProvider, path: str
) -> None:
    gateway, _ = guarded
    headers = marker()
    status, answer_headers, _ = call(
        gateway.port,
        "carol",
        body={**BODY, "model": "claude-opus-4-1"},
        headers=headers,
        path=path,
    )
    assert (status, refusal_reason(answer_headers)) == (400, "body")
    assert seen_upstream(fake, headers) == []


def test_no_tollgate_key_forwarded_when_a_call_carries_several(
    guarded: tuple[Gateway, int], fake: FakeProvider
) -> None:
    gateway, _ = guarded
    basic = base64.b64encode(f"x:{KEYS['bob']}".encode()).decode()
    sent = [
        {"authorization": f"Bearer {KEYS['carol']}"},
        {"x-goog-api-key": KEYS["bob"], "api-key": f"{KEYS['bob']}"},
        {"authorization": f"Basic {basic}"},
    ]
    for extra in sent:
        headers = {**marker(), **extra}
        status, _, _ = call(gateway.port, "dave", headers=headers)
        assert status == 200
        [seen] = seen_upstream(fake, headers)
        forwarded = json.dumps(seen)
        assert "tg-" not in forwarded
        assert seen["headers"]["x-api-key"] == REAL_KEY


def test_tollgate_key_in_query_string_never_forwarded_or_logged(
    guarded: tuple[Gateway, int], fake: FakeProvider
) -> None:
    gateway, _ = guarded
    headers = marker()
    status, _, _ = call(
        gateway.port, None, headers=headers, path=f"/v1/messages?key={KEYS['dave']}"
    )
    assert status == 401  # a query parameter is no credential for Anthropic
    assert seen_upstream(fake, headers) == []
    assert KEYS["dave"] not in gateway.log_text()


def test_provider_key_sent_only_to_its_own_provider_when_path_names_another(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        harness, "ROUTE_ADDON", Path(__file__).with_name("route_all_to_fake.py")
    )
    from .hardening import policy_file

    openai_key = f"sk-openai-real-{uuid.uuid4().hex}"
    policy = policy_file(tmp_path, extra=f"  openai: {{api_key: {openai_key}}}\n")
    gateway = Gateway(tmp_path, fake, mode="forward", policy=policy)
    try:
        headers = {**marker(), "authorization": f"Bearer {KEYS['dave']}"}
        body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "x"}]}
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request(
            "POST",
            "http://api.anthropic.com/v1/chat/completions",
            json.dumps(body),
            {"content-type": "application/json", **headers},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
    finally:
        gateway.close()
    # On Anthropic's host an OpenAI path is no Anthropic endpoint the gateway meters.
    assert (response.status, response.getheader("x-tollgate-refusal")) == (
        400,
        "unmetered",
    )
    assert seen_upstream(fake, headers) == []


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/v1/models", {"x-api-key": "junk", "authorization": "Bearer {bob}"}),
        ("GET", "/v1/models", {"x-api-key": "junk", "x-goog-api-key": "{bob}"}),
        ("GET", "/v1/models", {"authorization": "Basic {basic}"}),
        ("GET", "/v1/models?key=x&key={bob}&KEY={bob}", {"x-api-key": "junk"}),
        ("POST", "/v1/messages?key=x&key={bob}&api_key={bob}", {"x-api-key": "{dave}"}),
    ],
    ids=["bearer-second", "goog-second", "basic", "query-free", "query-metered"],
)
def test_tollgate_key_never_forwarded_when_hidden_beside_other_credentials(
    guarded: tuple[Gateway, int],
    fake: FakeProvider,
    method: str,
    path: str,
    extra: dict[str, str],
) -> None:
    gateway, _ = guarded
    basic = base64.b64encode(f"u:{KEYS['bob']}".encode()).decode()
    fill = {"bob": KEYS["bob"], "dave": KEYS["dave"], "basic": basic}
    headers = {**marker(), **{k: v.format(**fill) for k, v in extra.items()}}
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request(
        method,
        path.format(**fill),
        json.dumps(BODY) if method == "POST" else None,
        {"content-type": "application/json", **headers},
    )
    connection.getresponse().read()
    connection.close()
    seen = seen_upstream(fake, headers)
    assert seen, "the call should have reached the provider"
    assert "tg-" not in json.dumps(seen)
    assert KEYS["bob"] not in gateway.log_text()
