"""Budget alerts: once per window, exact payloads, retries, restarts, forecasts."""

import http.client
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_metrics import FixedClock, call, start_engine

from harness import FakeProvider, Gateway, wait_rows
from tollgate.alerts import Alert, Delivery, SentAlerts, forecast_exhausted_at
from tollgate.engine import Engine
from tollgate.identity import fingerprint
from tollgate.policy import Webhook, parse_policy
from tollgate.usage import Usage
from tollgate.yamlsrc import parse_yaml

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
# claude-sonnet-4-5: 3 USD per million input tokens, 15 per million output tokens
THIRTY_CENTS = Usage(input_tokens=100_000)
FIFTEEN_CENTS = Usage(output_tokens=10_000)


class Receiver:
    """A webhook endpoint on loopback that answers with the statuses it is given."""

    def __init__(self, statuses: tuple[int, ...] = (), delay_s: float = 0.0) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.statuses = list(statuses)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(delay_s)
                outer.posts.append((self.path, json.loads(body)))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.posts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def policy(url: str, limits: str = "max_budget: 1") -> str:
    return f"""
version: 1
timezone: UTC
alert_webhooks:
  - {{url: "{url}/json/secret-path", format: json}}
  - {{url: "{url}/slack/T000/B000/XXXX", format: slack}}
users:
  alice: {{{limits}}}
keys:
  - {{key_alias: alice-key, user: alice, key_sha256: {fingerprint("tg-alice")}}}
"""


def engine_at(tmp_path: Path, text: str, clock: FixedClock | None = None) -> Engine:
    return start_engine(tmp_path / "spend.duckdb", text, clock=clock or FixedClock(NOW))


def spend(engine: Engine, *usages: Usage) -> None:
    for usage in usages:
        call(engine, "tg-alice", SONNET, usage)


EXPECTED_JSON = {
    "scope": "user:alice",
    "kind": "user",
    "name": "alice",
    "spent": "0.6000000000",
    "limit": "1",
    "percent": 60.0,
    "threshold": 0.5,
    "window": "1mo",
    "window_start": "2026-05-01T00:00:00+00:00",
    "resets_at": "2026-06-01T00:00:00+00:00",
    # 0.60 in 9.5 days: the remaining 0.40 takes 6 1/3 days more
    "forecast_exhausted_at": "2026-05-16T20:00:00+00:00",
}
EXPECTED_TEXT = (
    "Tollgate: budget user:alice passed 50%: spent $0.6000 of $1.0000 (60.0%) this 1mo"
    " window; resets 2026-06-01T00:00:00+00:00; at this pace it runs out"
    " 2026-05-16T20:00:00+00:00"
)


def test_alert_posts_exact_payloads_once_when_budget_crosses_half(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_at(tmp_path, policy(receiver.url))
    try:
        spend(engine, THIRTY_CENTS)
        assert receiver.wait(1, timeout_s=0.3) == []
        spend(engine, THIRTY_CENTS, FIFTEEN_CENTS)
        posts = receiver.wait(2)
    finally:
        engine.close()
    assert sorted(posts) == [
        ("/json/secret-path", EXPECTED_JSON),
        ("/slack/T000/B000/XXXX", {"text": EXPECTED_TEXT}),
    ]
    warnings = [r for r in caplog.records if r.name == "tollgate.alerts"]
    assert [(r.levelname, r.getMessage()) for r in warnings] == [
        ("WARNING", EXPECTED_TEXT)
    ]


def test_alert_not_sent_again_when_gateway_restarts_in_same_window(
    tmp_path: Path, receiver: Receiver
) -> None:
    first = engine_at(tmp_path, policy(receiver.url))
    spend(first, THIRTY_CENTS, THIRTY_CENTS)
    assert len(receiver.wait(2)) == 2
    first.close()

    second = engine_at(tmp_path, policy(receiver.url))
    try:
        spend(second, FIFTEEN_CENTS)
        assert receiver.wait(3, timeout_s=0.5) == receiver.posts[:2]
        spend(second, FIFTEEN_CENTS)
        posts = receiver.wait(4)
    finally:
        second.close()
    assert len(posts) == 4
    assert [body["threshold"] for path, body in posts if path.startswith("/json")] == [
        0.5,
        0.8,
    ]
    records = (tmp_path / "spend.duckdb.alerts").read_text().splitlines()
    assert [json.loads(line)["thresholds"] for line in records] == [["0.5"], ["0.8"]]


def test_alert_sent_at_start_when_crossing_has_no_delivery_record(
    tmp_path: Path, receiver: Receiver
) -> None:
    first = engine_at(tmp_path, policy(receiver.url))
    spend(first, THIRTY_CENTS, THIRTY_CENTS)
    assert len(receiver.wait(2)) == 2
    first.close()
    (tmp_path / "spend.duckdb.alerts").unlink()  # as if it died before delivering

    second = engine_at(tmp_path, policy(receiver.url))
    posts = receiver.wait(4)
    second.close()
    assert [body for path, body in posts if path.startswith("/json")] == [
        EXPECTED_JSON,
        EXPECTED_JSON,
    ]


def test_alert_sent_again_when_next_window_crosses_half(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FixedClock(NOW)
    engine = engine_at(tmp_path, policy(receiver.url), clock)
    try:
        spend(engine, THIRTY_CENTS, THIRTY_CENTS)
        assert len(receiver.wait(2)) == 2
        clock.value = datetime(2026, 6, 3, tzinfo=UTC)
        spend(engine, THIRTY_CENTS, THIRTY_CENTS)
        posts = receiver.wait(4)
    finally:
        engine.close()
    starts = [body["window_start"] for path, body in posts if path.startswith("/json")]
    assert starts == ["2026-05-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00"]


def test_alert_names_highest_threshold_when_one_call_crosses_several(
    tmp_path: Path, receiver: Receiver
) -> None:
    text = policy(receiver.url, "max_budget: 0.5, alert_thresholds: [0.25, 0.5, 0.9]")
    engine = engine_at(tmp_path, text)
    try:
        spend(engine, THIRTY_CENTS)
        posts = receiver.wait(2)
    finally:
        engine.close()
    [body] = [body for path, body in posts if path.startswith("/json")]
    assert (body["threshold"], body["percent"], body["spent"]) == (
        0.5,
        60.0,
        "0.3000000000",
    )
    record = json.loads((tmp_path / "spend.duckdb.alerts").read_text())
    assert record["thresholds"] == ["0.25", "0.5"]


def test_alert_sent_on_reload_when_new_limit_already_passed(
    tmp_path: Path, receiver: Receiver
) -> None:
    engine = engine_at(tmp_path, policy(receiver.url, "max_budget: 10"))
    try:
        spend(engine, THIRTY_CENTS, THIRTY_CENTS)
        assert receiver.wait(1, timeout_s=0.3) == []
        text = policy(receiver.url)
        engine.swap_policy(parse_policy(parse_yaml(text, source="p.yaml"), environ={}))
        posts = receiver.wait(2)
    finally:
        engine.close()
    assert [body for path, body in posts if path.startswith("/json")] == [EXPECTED_JSON]


def test_sent_records_dropped_when_their_window_ended(tmp_path: Path) -> None:
    path = tmp_path / "spend.duckdb.alerts"
    april = (
        '{"budget": "org", "window_start": "2026-04-01T00:00:00+00:00",'
        ' "resets_at": "2026-05-01T00:00:00+00:00", "thresholds": ["0.5"]}'
    )
    may = (
        '{"budget": "org", "window_start": "2026-05-01T00:00:00+00:00",'
        ' "resets_at": "2026-06-01T00:00:00+00:00", "thresholds": ["0.5", "0.8"]}'
    )
    path.write_text(f"{april}\n{{torn\n{may}\n")
    sent = SentAlerts(path)
    sent.load(NOW)
    start = "2026-05-01T00:00:00+00:00"
    assert sent.keys == {("org", start, Decimal("0.5")), ("org", start, Decimal("0.8"))}
    assert path.read_text() == f"{may}\n"


def test_call_returns_at_once_when_webhook_is_slow(tmp_path: Path) -> None:
    slow = Receiver(delay_s=1.0)
    engine = engine_at(tmp_path, policy(slow.url))
    try:
        spend(engine, THIRTY_CENTS)
        began = time.perf_counter()
        spend(engine, THIRTY_CENTS)
        elapsed = time.perf_counter() - began
        assert len(slow.wait(2)) == 2
    finally:
        engine.close()
        slow.close()
    assert elapsed < 0.1


def alert() -> Alert:
    return Alert(
        scope="team:be",
        kind="team",
        name="be",
        duration="1mo",
        limit=Decimal(10),
        spent=Decimal(5),
        threshold=Decimal("0.5"),
        covers=(Decimal("0.5"),),
        window_start=datetime(2026, 5, 1, tzinfo=UTC),
        window_end=datetime(2026, 6, 1, tzinfo=UTC),
        forecast=None,
    )


def test_delivery_retries_with_backoff_when_webhook_fails_then_recovers(
    tmp_path: Path,
) -> None:
    flaky = Receiver(statuses=(503, 429))
    sent = SentAlerts(tmp_path / "x.alerts")
    delivery = Delivery(sent, lambda: NOW, backoff_s=(0.01, 0.02, 0.04))
    try:
        delivery.submit(alert(), (Webhook(url=f"{flaky.url}/hook", format="json"),))
        assert delivery.wait_idle()
    finally:
        delivery.close()
        flaky.close()
    assert len(flaky.posts) == 3
    assert json.loads(sent.path.read_text()) == {
        "budget": "team:be",
        "window_start": "2026-05-01T00:00:00+00:00",
        "resets_at": "2026-06-01T00:00:00+00:00",
        "thresholds": ["0.5"],
        "sent_at": "2026-05-10T12:00:00+00:00",
    }


def test_delivery_gives_up_without_record_when_webhook_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = Receiver(statuses=(404,))
    sent = SentAlerts(tmp_path / "x.alerts")
    delivery = Delivery(sent, lambda: NOW, backoff_s=(0.01,))
    try:
        hook = Webhook(url=f"{refusing.url}/services/SECRET", format="slack")
        delivery.submit(alert(), (hook,))
        assert delivery.wait_idle()
    finally:
        delivery.close()
        refusing.close()
    assert len(refusing.posts) == 1
    assert not sent.path.exists()
    gave_up = "gave up on the alert for team:be (HTTP 404)"
    assert caplog.messages == [f"alerts: webhook {refusing.url}/… {gave_up}"]


@pytest.mark.parametrize(
    ("spent", "now", "expected"),
    [
        ("0", "2026-05-10T12:00:00+00:00", None),
        ("5", "2026-05-11T00:00:00+00:00", "2026-05-21T00:00:00+00:00"),
        ("2", "2026-05-11T00:00:00+00:00", None),
        ("10", "2026-05-11T00:00:00+00:00", "2026-05-11T00:00:00+00:00"),
    ],
    ids=["nothing-spent", "half-in-ten-days", "lasts-past-reset", "exhausted"],
)
def test_forecast_extrapolates_window_pace_when_asked(
    spent: str, now: str, expected: str | None
) -> None:
    found = forecast_exhausted_at(
        Decimal(spent),
        Decimal(10),
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 6, 1, tzinfo=UTC),
        datetime.fromisoformat(now),
    )
    assert (found.isoformat() if found else None) == expected


@pytest.mark.e2e
def test_alert_posted_once_when_real_gateway_restarts_in_window(
    fake: FakeProvider, tmp_path: Path, receiver: Receiver
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(f"""
version: 1
timezone: UTC
providers:
  anthropic: {{api_key: sk-ant-real-provider-key}}
alert_webhooks:
  - {{url: "{receiver.url}/hook", format: json}}
users:
  alice: {{max_budget: 0.01}}
keys:
  - {{key_alias: alice-key, user: alice, key_sha256: {fingerprint("tg-alice-e2e")}}}
""")
    options = {"budget_now": "2026-05-10T12:00:00+00:00"}
    db = tmp_path / "spend.duckdb"

    def send(gateway: Gateway, input_tokens: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            connection.request(
                "POST",
                "/v1/messages",
                json.dumps(
                    {
                        "model": SONNET,
                        "max_tokens": 1,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                ),
                {
                    "content-type": "application/json",
                    "x-api-key": "tg-alice-e2e",
                    "x-fake-usage": f"input={input_tokens},output=0",
                },
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    # 1000 input tokens cost 0.003: alice's 0.01 goes to 30%, 60%, then 75%
    first = Gateway(tmp_path, fake, policy=policy_file, options=options, db=db)
    try:
        assert [send(first, 1000), send(first, 1000)] == [200, 200]
        posts = receiver.wait(1)
    finally:
        first.close()
    second = Gateway(tmp_path, fake, policy=policy_file, options=options, db=db)
    try:
        assert send(second, 500) == 200
        assert len(wait_rows(db, 3)) == 3
        time.sleep(0.5)
    finally:
        second.close()
    assert len(receiver.posts) == 1, second.log_text()[-2000:]
    [(path, body)] = posts
    forecast = body.pop("forecast_exhausted_at")
    assert (path, body) == (
        "/hook",
        {
            "scope": "user:alice",
            "kind": "user",
            "name": "alice",
            "spent": "0.0060000000",
            "limit": "0.01",
            "percent": 60.0,
            "threshold": 0.5,
            "window": "1mo",
            "window_start": "2026-05-01T00:00:00+00:00",
            "resets_at": "2026-06-01T00:00:00+00:00",
        },
    )
    # 0.006 in 9.5 days: the other 0.004 take 6 1/3 days more (the clock runs on)
    assert forecast.startswith("2026-05-16T20:0")
