"""Policies enforced by a real mitmdump: allow-lists, budgets at every level, limits."""

import hashlib
import http.client
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from harness import FakeProvider, Gateway, run_sdk, wait_rows

pytestmark = pytest.mark.e2e

KEYS = {
    name: f"tg-test-{name}-{uuid.uuid4().hex}"
    for name in ("alice", "bob", "carol", "ivan", "dana")
}
REAL_ANTHROPIC = "sk-ant-real-provider-key"


def policy_text(body: str) -> str:
    keys = "\n".join(
        f"  - {{key_alias: {name}-key, user: {name},"
        f" key_sha256: {hashlib.sha256(key.encode()).hexdigest()}}}"
        for name, key in KEYS.items()
        if f"  {name}:" in body
    )
    return (
        "version: 1\ntimezone: UTC\nunknown_callers: refuse\n"
        "allow_unpriced_models: false\n"
        f"providers:\n  anthropic: {{api_key: {REAL_ANTHROPIC}}}\n"
        "  openai: {api_key: sk-real-openai}\n"
        f"{body}\nkeys:\n{keys}\n"
    )


USERS = """users:
  alice: {team: backend-eng, max_budget: 1, models: [claude-sonnet-4-5, gpt-4.1-mini]}
  bob: {team: backend-eng, max_budget: 1}
  carol: {team: backend-eng, max_budget: 1}
  ivan: {team: interns, max_budget: 1, rpm_limit: 2}
  dana: {team: interns, max_budget: 1, tpm_limit: 2000}
"""
TEAMS = """teams:
  backend-eng: {max_budget: 100, models: [claude-sonnet-4-5, gpt-4.1, gpt-4.1-mini]}
  interns: {max_budget: 100, models: [claude-haiku-4-5, gpt-4.1-mini]}
"""


def start(tmp: Path, fake: FakeProvider, body: str, **options: str) -> Gateway:
    policy = tmp / "policy.yaml"
    policy.write_text(policy_text(body))
    return Gateway(tmp, fake, policy=policy, options=options)


def call(
    gateway: Gateway,
    user: str | None,
    *,
    model: str = "claude-sonnet-4-5",
    usage: str = "input=100,output=20",
    tag: str | None = None,
    max_tokens: int = 100,
    headers: dict[str, str] | None = None,
    stream: bool = False,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = {
        "content-type": "application/json",
        "x-fake-usage": usage,
        **(headers or {}),
    }
    if user is not None:
        sent["x-api-key"] = KEYS[user]
    if tag:
        sent["x-tollgate-tags"] = tag
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request("POST", "/v1/messages", json.dumps(body), sent)
        response = connection.getresponse()
        raw = response.read()
        answer = json.loads(raw) if not stream or response.status != 200 else {}
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
    finally:
        connection.close()


def upstream_calls(fake: FakeProvider, marker: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["headers"].get("x-fake-usage") == marker]


@pytest.fixture(scope="module")
def limits_gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Any:
    gateway = start(tmp_path_factory.mktemp("limits"), fake, TEAMS + USERS)
    yield gateway
    gateway.close()


def test_allowed_model_reaches_provider_with_real_key_when_virtual_key_used(
    limits_gateway: Gateway, fake: FakeProvider
) -> None:
    marker = f"input=11,output={uuid.uuid4().int % 1000}"
    status, _, _ = call(limits_gateway, "alice", usage=marker)
    assert status == 200
    [seen] = upstream_calls(fake, marker)
    assert seen["headers"]["x-api-key"] == REAL_ANTHROPIC
    assert not any(key in json.dumps(seen) for key in KEYS.values())


@pytest.mark.parametrize(
    ("user", "model", "level"),
    [
        ("alice", "claude-opus-4-1", "user 'alice'"),
        ("ivan", "claude-opus-4-1", "team 'interns'"),
        ("alice", "anthropic.claude-opus-4-1-20250805-v1:0", "user 'alice'"),
        ("bob", "CLAUDE-OPUS-4-1", "team 'backend-eng'"),
    ],
    ids=["user-list", "intern-opus", "bedrock-spelling", "upper-case"],
)
def test_model_refused_before_upstream_when_not_on_allow_list(
    limits_gateway: Gateway, fake: FakeProvider, user: str, model: str, level: str
) -> None:
    marker = f"input=12,output={uuid.uuid4().int % 100000}"
    status, headers, answer = call(limits_gateway, user, model=model, usage=marker)
    assert status == 400
    assert headers["x-should-retry"] == "false"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith(
        f"Tollgate: model {model!r} is not allowed for {level}"
    )
    assert upstream_calls(fake, marker) == []


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-5-20250929", "Claude-Sonnet-4-5", "anthropic/claude-sonnet-4-5"],
)
def test_model_allowed_when_spelled_with_date_case_or_prefix(
    limits_gateway: Gateway, model: str
) -> None:
    status, _, _ = call(limits_gateway, "alice", model=model)
    assert status == 200


def test_rpm_limit_answers_429_with_retry_after_when_exceeded(
    limits_gateway: Gateway,
) -> None:
    statuses = [
        call(limits_gateway, "ivan", model="claude-haiku-4-5")[:2] for _ in range(3)
    ]
    assert [s for s, _ in statuses] == [200, 200, 429]
    headers = statuses[2][1]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-should-retry"] == "true"


def test_tpm_limit_answers_429_when_tokens_in_window_exceeded(
    limits_gateway: Gateway,
) -> None:
    first = call(
        limits_gateway, "dana", model="claude-haiku-4-5", usage="input=1500,output=600"
    )
    second = call(limits_gateway, "dana", model="claude-haiku-4-5")
    assert (first[0], second[0]) == (200, 429)
    assert second[2]["error"]["message"].startswith(
        "Tollgate: tpm limit of user:dana reached: 2100 of 2000 tokens in the last 60 s"
    )


def test_forged_identity_header_ignored_when_key_is_unknown(
    limits_gateway: Gateway,
) -> None:
    status, headers, answer = call(
        limits_gateway,
        None,
        headers={
            "x-api-key": "sk-ant-someone-else",
            "x-tollgate-user": "alice",
            "x-claude-code-session-id": "s",
        },
    )
    assert (status, headers["x-should-retry"]) == (401, "false")
    assert answer["error"]["message"].startswith("Tollgate: this API key (fingerprint ")


def test_unknown_virtual_key_refused_when_not_in_policy(
    limits_gateway: Gateway, fake: FakeProvider
) -> None:
    marker = f"input=13,output={uuid.uuid4().int % 1000}"
    status, _, answer = call(
        limits_gateway, None, usage=marker, headers={"x-api-key": "tg-forged"}
    )
    assert status == 401
    assert "unknown Tollgate key" in answer["error"]["message"]
    assert upstream_calls(fake, marker) == []


def test_budget_refusal_names_limit_spent_and_reset_when_user_month_spent(
    fake: FakeProvider, tmp_path: Path
) -> None:
    body = "users:\n  alice: {max_budget: 0.01, budget_duration: 1mo}\n"
    gateway = start(tmp_path, fake, body, budget_now="2026-01-31T23:58:00+00:00")
    try:
        # 1000*3 + 400*15 per million = 0.009 USD: the next call cannot fit
        assert call(gateway, "alice", usage="input=1000,output=400")[0] == 200
        status, headers, answer = call(gateway, "alice")
        assert (status, headers["x-should-retry"]) == (402, "false")
        assert answer["error"] == {
            "type": "billing_error",
            "message": "Tollgate: budget of user:alice exhausted: spent $0.0090 of"
            " $0.0100"
            " this 1mo window; this call may cost up to $0.0016; resets"
            " 2026-02-01T00:00:00+00:00",
        }
    finally:
        gateway.close()
    rows = wait_rows(gateway.db, 2)
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("ok", None),
        ("blocked", "budget"),
    ]

    gateway = start(tmp_path, fake, body, budget_now="2026-02-01T00:00:05+00:00")
    try:
        assert call(gateway, "alice")[0] == 200
    finally:
        gateway.close()


def test_team_cap_refuses_member_when_members_are_under_their_own(
    fake: FakeProvider, tmp_path: Path
) -> None:
    body = (
        "teams:\n  backend-eng: {max_budget: 0.05}\nusers:\n"
        "  bob: {team: backend-eng, max_budget: 1}\n"
        "  carol: {team: backend-eng, max_budget: 1}\n"
    )
    gateway = start(tmp_path, fake, body)
    try:
        costly = "input=0,output=2000"  # 0.03 USD each
        assert call(gateway, "bob", usage=costly)[0] == 200
        assert call(gateway, "carol", usage=costly)[0] == 200
        status, _, answer = call(gateway, "bob")
        assert status == 402
        assert answer["error"]["message"].startswith(
            "Tollgate: budget of team:backend-eng exhausted: spent $0.0600 of $0.0500"
        )
    finally:
        gateway.close()


def test_org_cap_refuses_everyone_when_reached(
    fake: FakeProvider, tmp_path: Path
) -> None:
    body = "org: {max_budget: 0.02}\nusers:\n  bob: {}\n  carol: {}\n"
    gateway = start(tmp_path, fake, body)
    try:
        assert call(gateway, "bob", usage="input=0,output=2000")[0] == 200
        status, _, answer = call(gateway, "carol")
        assert status == 402
        assert (
            "budget of the organisation exhausted: spent $0.0300"
            in answer["error"]["message"]
        )
    finally:
        gateway.close()


def test_tag_budget_refuses_only_tagged_calls_when_reached(
    fake: FakeProvider, tmp_path: Path
) -> None:
    body = (
        "users:\n  bob: {}\ntags:\n  project:payments-refactor: {max_budget: 0.002}\n"
    )
    gateway = start(tmp_path, fake, body)
    try:
        tag = "project:payments-refactor"
        assert call(gateway, "bob", tag=tag, usage="input=1000,output=0")[0] == 200
        status, _, answer = call(gateway, "bob", tag=tag)
        assert status == 402
        assert (
            "budget of tag:project:payments-refactor exhausted"
            in answer["error"]["message"]
        )
        assert call(gateway, "bob")[0] == 200
    finally:
        gateway.close()


def test_unpriced_model_refused_when_a_budget_applies(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway = start(tmp_path, fake, "users:\n  bob: {max_budget: 5}\n")
    try:
        status, _, answer = call(gateway, "bob", model="claude-imaginary-9")
        assert status == 400
        assert answer["error"]["message"].startswith(
            "Tollgate: model 'claude-imaginary-9' has no price"
        )
    finally:
        gateway.close()


def test_concurrent_streams_stay_under_cap_when_reservations_hold(
    fake: FakeProvider, tmp_path: Path
) -> None:
    # Each call really costs 40*3 + 300*15 = 4620 per million. Its reservation is
    # at least that (the ~140-byte body is taken as 47 input tokens, plus all 300
    # max_tokens), so admitted calls together can never overshoot the cap.
    cap = Decimal("0.02541")  # room for five calls and a half
    gateway = start(tmp_path, fake, f"users:\n  bob: {{max_budget: {cap}}}\n")
    try:

        def one(_: int) -> int:
            return call(
                gateway,
                "bob",
                usage="input=40,output=300",
                max_tokens=300,
                stream=True,
                headers={"x-fake-delay-ms": "20", "x-fake-events": "20"},
            )[0]

        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(one, range(20)))
        rows = wait_rows(gateway.db, 20)
    finally:
        gateway.close()
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    admitted = statuses.count(200)
    print(
        f"\nFIGURES concurrency: calls=20 admitted={admitted} spent={spent}"
        f" cap={cap} overshoot={max(spent - cap, Decimal(0))}"
    )
    assert statuses.count(402) == 20 - admitted
    assert 1 <= admitted <= 5
    assert spent == Decimal("0.00462") * admitted <= cap


def test_broken_policy_edit_kept_out_when_file_changes(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway = start(tmp_path, fake, "users:\n  bob: {models: [claude-haiku-4-5]}\n")
    policy = tmp_path / "policy.yaml"
    try:
        assert call(gateway, "bob")[0] == 400
        policy.write_text(policy.read_text().replace("max_budget", "x") + "users: [\n")
        time.sleep(2.5)
        assert "policy edit rejected" in gateway.log_text()
        assert call(gateway, "bob")[0] == 400
        policy.write_text(policy_text("users:\n  bob: {models: [claude-sonnet-4-5]}\n"))
        deadline = time.monotonic() + 10
        while call(gateway, "bob")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert call(gateway, "bob")[0] == 200
    finally:
        gateway.close()


def test_sdk_shows_gateway_message_without_retrying_when_refused(
    limits_gateway: Gateway, fake: FakeProvider
) -> None:
    marker = f"input=14,output={uuid.uuid4().int % 1000}"
    results = run_sdk(
        [
            {
                "sdk": "anthropic",
                "model": "claude-opus-4-1",
                "api_key": KEYS["alice"],
                "max_retries": 2,
                "headers": {"x-fake-usage": marker},
            },
            {
                "sdk": "openai",
                "model": "gpt-4o",
                "api_key": KEYS["alice"],
                "max_retries": 2,
                "headers": {"x-fake-usage": marker},
            },
        ],
        limits_gateway.sdk_env("reverse"),
    )
    assert [(r["ok"], r["status"]) for r in results] == [(False, 400), (False, 400)]
    assert (
        "Tollgate: model 'claude-opus-4-1' is not allowed for user 'alice'"
        in results[0]["error"]
    )
    assert (
        "Tollgate: model 'gpt-4o' is not allowed for user 'alice'"
        in results[1]["error"]
    )
    assert upstream_calls(fake, marker) == []


def test_proxy_login_identifies_caller_when_client_keeps_own_key(
    fake: FakeProvider, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text("users:\n  bob: {max_budget: 5}\n"))
    gateway = Gateway(tmp_path, fake, mode="forward", policy=policy)
    try:
        marker = f"input=15,output={uuid.uuid4().int % 1000}"
        env = gateway.sdk_env("forward")
        env["HTTPS_PROXY"] = f"http://bob:{KEYS['bob']}@127.0.0.1:{gateway.port}"
        [result] = run_sdk(
            [
                {
                    "sdk": "anthropic",
                    "model": "claude-sonnet-4-5",
                    "api_key": "sk-ant-bobs-own",
                    "headers": {"x-fake-usage": marker},
                }
            ],
            env,
        )
        assert result["ok"], result
        [seen] = upstream_calls(fake, marker)
        # this SDK sends its key as a bearer token
        assert seen["headers"]["authorization"] == "Bearer sk-ant-bobs-own"
        assert "proxy-authorization" not in seen["headers"]
        [row] = wait_rows(gateway.db, 1)
        assert (row["user_id"], row["key_alias"]) == ("bob", "bob-key")

        env["HTTPS_PROXY"] = f"http://bob:tg-wrong@127.0.0.1:{gateway.port}"
        [refused] = run_sdk(
            [
                {
                    "sdk": "anthropic",
                    "model": "claude-sonnet-4-5",
                    "api_key": "sk-ant-bobs-own",
                }
            ],
            env,
        )
        assert (refused["ok"], refused["status"]) == (False, 401)
        assert "the proxy login is not a key this gateway knows" in refused["error"]
    finally:
        gateway.close()


def test_unknown_caller_held_to_default_budget_when_policy_allows_them(
    fake: FakeProvider, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nunknown_callers: allow\ndefault_budget: {max_budget: 0.003}\n"
    )
    gateway = Gateway(tmp_path, fake, policy=policy)
    try:
        own = {"x-api-key": "sk-ant-personal-key"}
        assert call(gateway, None, usage="input=1000,output=0", headers=own)[0] == 200
        status, _, answer = call(gateway, None, headers=own)
        assert status == 402
        fingerprint = hashlib.sha256(b"sk-ant-personal-key").hexdigest()[:12]
        assert answer["error"]["message"].startswith(
            f"Tollgate: budget of unknown:{fingerprint} exhausted: spent $0.0030"
        )
        other = {"x-api-key": "sk-ant-another-key"}
        third = call(gateway, None, headers=other)
        assert third[0] == 200, third
    finally:
        gateway.close()
    rows = wait_rows(gateway.db, 3)
    assert [r["key_fingerprint"] for r in rows][:2] == [fingerprint, fingerprint]
    assert all(r["user_id"] is None for r in rows)


def test_azure_deployment_priced_as_its_model_when_mapped(
    fake: FakeProvider, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\norg: {max_budget: 10}\nazure_deployments: {gpt4o-prod: gpt-4o}\n"
    )
    gateway = Gateway(tmp_path, fake, policy=policy)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        connection.request(
            "POST",
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            {
                "api-key": "azure-key",
                "content-type": "application/json",
                "x-fake-usage": "input=1000,output=100",
            },
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        connection.close()
    finally:
        gateway.close()
    [row] = wait_rows(gateway.db, 1)
    assert (row["model"], row["price_model"]) == ("gpt-4o", "gpt-4o")
    assert row["cost_usd"] == Decimal("0.0035000000")  # 1000*2.50 + 100*10 per million
