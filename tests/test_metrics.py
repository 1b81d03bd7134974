"""Prometheus metrics: values after known calls equal the ledger's, bounded labels."""

import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness import free_port
from tollgate.calls import Call
from tollgate.engine import Clock, Engine
from tollgate.identity import fingerprint, identify
from tollgate.ledger import Ledger, read_rows
from tollgate.meter import StreamMeter
from tollgate.metrics import Metrics
from tollgate.observe import attach_observers
from tollgate.policy import parse_policy
from tollgate.pricing import DEFAULT_PRICES, load_prices
from tollgate.providers import stream_reader
from tollgate.providers.base import RequestFacts, Route
from tollgate.usage import Usage
from tollgate.yamlsrc import parse_yaml

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
POLICY = f"""
version: 1
timezone: UTC
allow_unpriced_models: true
org: {{max_budget: 1000}}
teams:
  be: {{max_budget: 100, model_max_budget: {{"claude-opus-*": 50}}}}
users:
  alice: {{team: be, max_budget: 10}}
  bob: {{team: be}}
keys:
  - {{key_alias: alice-key, user: alice, key_sha256: {fingerprint("tg-alice")}}}
  - {{key_alias: bob-key, user: bob, key_sha256: {fingerprint("tg-bob")}}}
tags:
  project:x: {{max_budget: 5, alert_thresholds: [0.5, 0.9]}}
"""
ANTHROPIC = Route("anthropic", "messages")


class FixedClock(Clock):
    """The engine's clock, standing still at a chosen time."""

    def __init__(self, when: datetime) -> None:
        super().__init__()
        self.value = when

    def now(self) -> datetime:
        return self.value

    def at(self, epoch_s: float) -> datetime:
        return self.value


def start_engine(
    db: Path, policy_text: str = POLICY, port: int = 0, clock: Clock | None = None
) -> Engine:
    """An engine started the way `Engine.from_options` does, on a fixed clock."""
    policy = parse_policy(parse_yaml(policy_text, source="p.yaml"), environ={})
    engine = Engine(
        policy=policy,
        prices=load_prices(DEFAULT_PRICES),
        ledger=Ledger(db),
        now=clock or FixedClock(NOW),
    )
    engine.ledger.start()
    engine._rebuild_budgets()
    options = SimpleNamespace(budget_metrics_port=port, budget_metrics_host="127.0.0.1")
    attach_observers(engine, options)
    return engine


def metrics_of(engine: Engine) -> Metrics:
    [found] = [o for o in engine.observers if isinstance(o, Metrics)]
    return found


def call(
    engine: Engine,
    secret: str | None,
    model: str,
    usage: Usage | None,
    *,
    tags: tuple[str, ...] = (),
    seconds: float = 1.5,
    ttft_s: float | None = None,
) -> None:
    """Admit one call as `secret` and settle it with `usage` (None: refused)."""
    started_s = time.time() - seconds
    found = Call(
        route=ANTHROPIC, started=engine.clock.now(), started_s=started_s, agent="test"
    )
    found.facts = RequestFacts(model=model, max_output_tokens=100)
    found.tags = tags
    refusal = engine.admit(found, identify(engine.policy, secret, None), 400)
    if refusal is not None:
        engine.refused(found, refusal)
        return
    if ttft_s is not None:
        found.meter = StreamMeter(stream_reader(ANTHROPIC), content_encoding=None)
        found.meter.first_byte_at = started_s + ttft_s
    engine.settle(found, usage, 200, "ok", None, model)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    found = start_engine(tmp_path / "spend.duckdb")
    yield found
    found.close()


def run_known_calls(engine: Engine) -> None:
    call(
        engine,
        "tg-alice",
        "claude-sonnet-4-5",
        Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=5000),
        tags=("project:x",),
        ttft_s=0.3,
    )
    call(
        engine,
        "tg-alice",
        "claude-sonnet-4-5",
        Usage(
            input_tokens=2000,
            output_tokens=100,
            cache_write_5m_tokens=300,
            cache_write_1h_tokens=700,
        ),
    )
    call(
        engine,
        "tg-bob",
        "claude-opus-4-1",
        Usage(input_tokens=100, output_tokens=50),
        tags=("undeclared",),
        ttft_s=0.8,
    )
    call(engine, "tg-bob", "mystery-model-9", Usage(input_tokens=10, output_tokens=1))
    call(engine, "tg-stranger", "claude-sonnet-4-5", None)
    call(
        engine,
        None,
        "claude-haiku-4-5",
        Usage(input_tokens=40, output_tokens=4, reasoning_tokens=2),
    )


def ledger_value(engine: Engine, sql: str) -> Any:
    assert engine.ledger.wait_idle()
    [(value,)] = read_rows(engine.ledger.path, sql)
    return value


def sample(metrics: Metrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def total(metrics: Metrics, name: str, **match: str) -> float:
    """Sum of every sample of `name` whose labels include `match`."""
    found = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                found += s.value
    return found


def money_total(metrics: Metrics, name: str) -> Decimal:
    """Sum of the series in Decimal, each read back to the ledger's 10 places."""
    found = Decimal(0)
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name:
                found += Decimal(repr(s.value)).quantize(Decimal("1E-10"))
    return found


def test_cost_counter_equals_ledger_sum_when_known_calls_settled(
    engine: Engine,
) -> None:
    run_known_calls(engine)
    metrics = metrics_of(engine)
    spent = ledger_value(engine, "SELECT sum(cost_usd) FROM requests")
    # 1000*3 + 200*15 + 5000*0.3 = 7500; 2000*3 + 100*15 + 300*3.75 + 700*6 = 12825;
    # opus 100*15 + 50*75 = 5250; haiku 40*1 + 4*5 = 60 (USD per million)
    assert spent == Decimal("0.0256350000")
    # each series is the float nearest its exact total; their sum is exact in Decimal
    assert money_total(metrics, "tollgate_cost_usd_total") == spent
    assert (
        sample(
            metrics,
            "tollgate_cost_usd_total",
            provider="anthropic",
            model="claude-sonnet-4-5",
            team="be",
            user="alice",
        )
        == 0.020325
    )
    assert (
        sample(
            metrics,
            "tollgate_cost_usd_total",
            provider="anthropic",
            model="claude-opus-4-1",
            team="be",
            user="bob",
        )
        == 0.00525
    )
    assert (
        sample(
            metrics,
            "tollgate_cost_usd_total",
            provider="anthropic",
            model="claude-haiku-4-5",
            team="none",
            user="none",
        )
        == 0.00006
    )
    assert sample(metrics, "tollgate_tag_cost_usd_total", tag="project:x") == 0.0075


@pytest.mark.parametrize(
    ("kind", "column"),
    [
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cache_read", "cache_read_tokens"),
        ("cache_write", "cache_write_5m_tokens + cache_write_1h_tokens"),
        ("reasoning", "reasoning_tokens"),
    ],
    ids=["input", "output", "cache_read", "cache_write", "reasoning"],
)
def test_tokens_counter_equals_ledger_sum_when_known_calls_settled(
    engine: Engine, kind: str, column: str
) -> None:
    run_known_calls(engine)
    expected = ledger_value(engine, f"SELECT sum({column}) FROM requests")
    assert total(metrics_of(engine), "tollgate_tokens_total", kind=kind) == expected


def test_requests_counter_matches_ledger_outcomes_when_known_calls_settled(
    engine: Engine,
) -> None:
    run_known_calls(engine)
    metrics = metrics_of(engine)
    assert ledger_value(engine, "SELECT count(*) FROM requests") == 6
    assert total(metrics, "tollgate_requests_total") == 6
    assert total(metrics, "tollgate_requests_total", outcome="ok") == 5
    assert (
        sample(
            metrics,
            "tollgate_requests_total",
            provider="anthropic",
            model="other",
            team="none",
            user="none",
            outcome="blocked",
        )
        == 1
    )
    assert sample(metrics, "tollgate_blocked_total", reason="auth") == 1
    assert (
        sample(
            metrics,
            "tollgate_requests_total",
            provider="anthropic",
            model="other",
            team="be",
            user="bob",
            outcome="ok",
        )
        == 1
    )


def test_labels_bounded_when_rows_carry_undeclared_values(engine: Engine) -> None:
    run_known_calls(engine)
    metrics = metrics_of(engine)
    labels = {
        (s.labels.get("model"), s.labels.get("user"), s.labels.get("tag"))
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name in ("tollgate_requests_total", "tollgate_tag_cost_usd_total")
    }
    assert labels == {
        ("claude-sonnet-4-5", "alice", None),
        ("claude-opus-4-1", "bob", None),
        ("other", "bob", None),
        ("other", "none", None),
        ("claude-haiku-4-5", "none", None),
        (None, None, "project:x"),
    }


def test_histograms_count_calls_when_latency_and_ttft_recorded(engine: Engine) -> None:
    run_known_calls(engine)
    metrics = metrics_of(engine)
    latencies = ledger_value(
        engine, "SELECT sum(latency_ms) FROM requests WHERE outcome <> 'blocked'"
    )
    assert (
        sample(metrics, "tollgate_upstream_latency_seconds_count", provider="anthropic")
        == 5
    )
    assert (
        sample(
            metrics,
            "tollgate_upstream_latency_seconds_bucket",
            provider="anthropic",
            le="1.0",
        )
        == 0
    )
    assert (
        sample(
            metrics,
            "tollgate_upstream_latency_seconds_bucket",
            provider="anthropic",
            le="2.5",
        )
        == 5
    )
    assert sample(
        metrics, "tollgate_upstream_latency_seconds_sum", provider="anthropic"
    ) == pytest.approx(latencies / 1000, abs=1e-9)
    assert (
        sample(
            metrics,
            "tollgate_time_to_first_token_seconds_bucket",
            provider="anthropic",
            le="0.5",
        )
        == 1
    )
    assert (
        sample(
            metrics, "tollgate_time_to_first_token_seconds_count", provider="anthropic"
        )
        == 2
    )
    assert (
        sample(
            metrics, "tollgate_time_to_first_token_seconds_sum", provider="anthropic"
        )
        == 1.1
    )


def test_overhead_histogram_observes_when_engine_reports_hook_time(
    engine: Engine,
) -> None:
    engine.observe_overhead(0.0004)
    engine.observe_overhead(0.003)
    metrics = metrics_of(engine)
    assert sample(metrics, "tollgate_gateway_overhead_seconds_bucket", le="0.0005") == 1
    assert sample(metrics, "tollgate_gateway_overhead_seconds_count") == 2


def test_budget_gauges_equal_ledger_when_engine_restarted(tmp_path: Path) -> None:
    db = tmp_path / "spend.duckdb"
    first = start_engine(db)
    run_known_calls(first)
    first.close()

    second = start_engine(db)
    try:
        metrics = metrics_of(second)
        alice = ledger_value(
            second, "SELECT sum(cost_usd) FROM requests WHERE user_id = 'alice'"
        )
        team = ledger_value(
            second, "SELECT sum(cost_usd) FROM requests WHERE team = 'be'"
        )
        assert total(metrics, "tollgate_cost_usd_total") == 0
        assert (
            sample(
                metrics,
                "tollgate_budget_spent_usd",
                budget="user:alice",
                kind="user",
                name="alice",
            )
            == float(alice)
            == 0.020325
        )
        assert (
            sample(
                metrics,
                "tollgate_budget_spent_usd",
                budget="team:be",
                kind="team",
                name="be",
            )
            == float(team)
            == 0.025575
        )
        assert (
            sample(
                metrics,
                "tollgate_budget_spent_usd",
                budget="team:be/model:claude-opus-*",
                kind="team",
                name="be",
            )
            == 0.00525
        )
        assert (
            sample(
                metrics,
                "tollgate_budget_limit_usd",
                budget="user:alice",
                kind="user",
                name="alice",
            )
            == 10
        )
        assert (
            sample(
                metrics,
                "tollgate_budget_window_end_timestamp_seconds",
                budget="org",
                kind="org",
                name="org",
            )
            == datetime(2026, 6, 1, tzinfo=UTC).timestamp()
        )
        assert (
            sample(
                metrics,
                "tollgate_budget_alert_threshold_ratio",
                budget="tag:project:x",
                kind="tag",
                name="project:x",
                threshold="0.9",
            )
            == 0.9
        )
    finally:
        second.close()


def test_reserved_gauge_holds_worst_case_when_call_in_flight(engine: Engine) -> None:
    found = Call(route=ANTHROPIC, started=NOW, started_s=time.time(), agent="test")
    found.facts = RequestFacts(model="claude-sonnet-4-5", max_output_tokens=1000)
    assert engine.admit(found, identify(engine.policy, "tg-alice", None), 300) is None
    metrics = metrics_of(engine)
    # 100 input tokens (300 bytes / 3) * 3 + 1000 output * 15 = 15300 USD per million
    assert (
        sample(
            metrics,
            "tollgate_budget_reserved_usd",
            budget="user:alice",
            kind="user",
            name="alice",
        )
        == 0.0153
    )


@pytest.mark.parametrize(
    ("max_output_tokens", "choices", "reserved"),
    [(None, 3, 0.18462), (1000, 4, 0.0603)],
    ids=["default-limit", "given-limit"],
)
def test_reserved_gauge_covers_every_choice_when_call_asks_for_several(
    engine: Engine, max_output_tokens: int | None, choices: int, reserved: float
) -> None:
    found = Call(route=ANTHROPIC, started=NOW, started_s=time.time(), agent="test")
    found.facts = RequestFacts(
        model="claude-sonnet-4-5", max_output_tokens=max_output_tokens, choices=choices
    )
    assert engine.admit(found, identify(engine.policy, "tg-alice", None), 300) is None
    # 100 input tokens * $3 + (limit, default 4096) * choices * $15, per million
    assert (
        sample(
            metrics_of(engine),
            "tollgate_budget_reserved_usd",
            budget="user:alice",
            kind="user",
            name="alice",
        )
        == reserved
    )


def test_ledger_gauges_report_writer_state_when_rows_written(engine: Engine) -> None:
    run_known_calls(engine)
    assert engine.ledger.wait_idle()
    metrics = metrics_of(engine)
    assert sample(metrics, "tollgate_ledger_backlog_rows") == 0
    assert sample(metrics, "tollgate_ledger_rows_written_total") == 6
    assert sample(metrics, "tollgate_ledger_write_errors_total") == 0
    assert sample(metrics, "tollgate_ledger_healthy") == 1


def test_exporter_serves_metrics_when_port_configured(tmp_path: Path) -> None:
    port = free_port()
    engine = start_engine(tmp_path / "spend.duckdb", port=port)
    metrics = metrics_of(engine)
    try:
        assert metrics.port == port
        run_known_calls(engine)
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        assert 'tollgate_blocked_total{reason="auth"} 1.0' in text
        org = 'tollgate_budget_limit_usd{budget="org",kind="org",name="org"} 1000.0'
        assert org in text
    finally:
        engine.close()
    assert metrics.port is None


def test_exporter_stays_off_when_port_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = start_engine(tmp_path / "spend.duckdb")
    metrics = metrics_of(engine)
    metrics.serve("127.0.0.1", 0)
    taken = metrics.port
    other = Metrics(engine, CollectorRegistry())
    try:
        other.serve("127.0.0.1", taken or 0)
        assert other.port is None
        assert caplog.messages[-1] == (
            f"metrics: cannot listen on 127.0.0.1:{taken} (Address already in use);"
            " /metrics is off"
        )
    finally:
        engine.close()
