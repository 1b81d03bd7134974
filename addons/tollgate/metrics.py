"""Prometheus metrics: call counters and histograms, budget and ledger gauges.

Families live on an injected CollectorRegistry, never the library's global one. Label
values come from bounded sets (see `Labels`); budget and ledger figures are read when
scraped, so they are right from the first scrape after a restart. Naming follows
https://prometheus.io/docs/practices/naming/ (base units, `_total` counters).
"""

import logging
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .budgets import ScopeBudget
from .providers import MODULES

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)

OUTCOMES = frozenset({"ok", "blocked", "aborted", "upstream_error"})
# Refusal reasons admission.py and engine.py give; anything new is counted as other.
REASONS = frozenset(
    "auth body model unpriced unmetered budget rpm tpm ledger config internal"
    " stopping".split()
)
TOKEN_KINDS = {
    "input": ("input_tokens",),
    "output": ("output_tokens",),
    "cache_read": ("cache_read_tokens",),
    "cache_write": ("cache_write_5m_tokens", "cache_write_1h_tokens"),
    "reasoning": ("reasoning_tokens",),
}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)
BUDGET_LABELS = ("budget", "kind", "name")
CALL_LABELS = ("provider", "model", "team", "user")
NONE = "none"
OTHER = "other"


class Labels:
    """Bounded label values for a ledger row, from the engine's current policy.

    provider: a provider Tollgate knows; model: a price-table key; team, user: those the
    policy declares; tags: those with a tag budget in the policy. Anything else is
    `other`; a call without a user, team or price is `none` (user), `none` (team) or
    `other` (model). Requests never add label values.
    """

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def call(self, row: dict[str, Any]) -> tuple[str, str, str, str]:
        policy = self.engine.policy
        provider = str(row.get("provider"))
        model = str(row.get("price_model"))
        return (
            provider if provider in MODULES else OTHER,
            model if model in self.engine.prices.entries else OTHER,
            _declared(row.get("team"), policy.teams),
            _declared(row.get("user_id"), policy.users),
        )

    def tags(self, row: dict[str, Any]) -> list[str]:
        declared = self.engine.policy.tags
        return [tag for tag in row.get("tags") or () if tag in declared]


def _declared(value: object, known: dict[str, Any]) -> str:
    if value is None:
        return NONE
    return value if isinstance(value, str) and value in known else OTHER


class ExactCounter(Collector):
    """A counter summed in Decimal, exported as the float nearest the exact total."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self._totals: dict[tuple[str, ...], Decimal] = {}
        self._lock = threading.Lock()

    def add(self, values: tuple[str, ...], amount: Decimal) -> None:
        with self._lock:
            self._totals[values] = self._totals.get(values, Decimal(0)) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        with self._lock:
            totals = list(self._totals.items())
        for values, total in sorted(totals):
            family.add_metric(values, float(total))
        yield family


class StateCollector(Collector):
    """Budget and ledger figures, read from the engine at scrape time."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from budget_families(self.engine, published_budgets(self.engine))
        ledger = self.engine.ledger
        backlog = GaugeMetricFamily(
            "tollgate_ledger_backlog_rows", "Ledger rows not yet in DuckDB"
        )
        backlog.add_metric([], ledger.backlog)
        healthy = GaugeMetricFamily(
            "tollgate_ledger_healthy", "1 while the ledger's last write worked, else 0"
        )
        healthy.add_metric([], 1 if ledger.healthy else 0)
        errors = CounterMetricFamily(
            "tollgate_ledger_write_errors", "Failed ledger batch writes (all retried)"
        )
        errors.add_metric([], ledger.write_errors)
        written = CounterMetricFamily(
            "tollgate_ledger_rows_written", "Rows written to DuckDB by this process"
        )
        written.add_metric([], ledger.rows_written)
        yield from (backlog, healthy, errors, written)


def published_budgets(engine: "Engine") -> list[ScopeBudget]:
    """Budgets the policy declares; `unknown:<key>` ones are left out (unbounded)."""
    book = engine.book
    budgets = [b for found in list(book.budgets.values()) for b in found]
    return [b for b in budgets if not b.label.startswith("unknown:")]


def window_view(
    budget: ScopeBudget, engine: "Engine", now: datetime
) -> tuple[Decimal, datetime | None]:
    """Spent and reset time as of `now`, without rolling the budget (not our thread)."""
    end = budget.window_end
    if end is None or now >= end:
        _, fresh_end = budget.duration.bounds(now, engine.policy.timezone)
        return Decimal(0), fresh_end
    return budget.spent, end


def budget_families(
    engine: "Engine", budgets: Iterable[ScopeBudget]
) -> Iterator[GaugeMetricFamily]:
    names = {
        "limit": ("tollgate_budget_limit_usd", "Budget limit of the window in USD"),
        "spent": ("tollgate_budget_spent_usd", "Spent in the budget's current window"),
        "reserved": (
            "tollgate_budget_reserved_usd",
            "Worst-case cost of calls in flight, held against the budget",
        ),
        "resets": (
            "tollgate_budget_window_end_timestamp_seconds",
            "Unix time when the budget's current window ends",
        ),
    }
    families = {
        key: GaugeMetricFamily(name, doc, labels=BUDGET_LABELS)
        for key, (name, doc) in names.items()
    }
    thresholds = GaugeMetricFamily(
        "tollgate_budget_alert_threshold_ratio",
        "Alert thresholds of the budget as a fraction of its limit",
        labels=(*BUDGET_LABELS, "threshold"),
    )
    now = engine.clock.now()
    for budget in budgets:
        labels = (budget.label, budget.kind, budget.name)
        spent, end = window_view(budget, engine, now)
        families["limit"].add_metric(labels, float(budget.limit))
        families["spent"].add_metric(labels, float(spent))
        families["reserved"].add_metric(labels, float(budget.reserved))
        if end is not None:
            families["resets"].add_metric(labels, end.timestamp())
        for threshold in budget.thresholds:
            # one spelling per value: 1, 1.0 and 1.00 in YAML are all "1"
            name = format(threshold.normalize(), "f")
            thresholds.add_metric((*labels, name), float(threshold))
    yield from families.values()
    yield thresholds


class Metrics:
    """The metrics observer: counts every ledger row, serves /metrics if asked."""

    def __init__(self, engine: "Engine", registry: CollectorRegistry) -> None:
        self.registry = registry
        self.labels = Labels(engine)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "tollgate_requests",
            "Metered calls by outcome (ok, blocked, aborted, upstream_error)",
            (*CALL_LABELS, "outcome"),
            registry=registry,
        )
        self.tokens = Counter(
            "tollgate_tokens",
            "Tokens by kind; output includes reasoning, so never add the two",
            ("provider", "model", "kind"),
            registry=registry,
        )
        self.blocked = Counter(
            "tollgate_blocked",
            "Calls the gateway refused, by reason",
            ("reason",),
            registry=registry,
        )
        self.latency = Histogram(
            "tollgate_upstream_latency_seconds",
            "Call duration, request to last byte",
            ("provider",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "tollgate_time_to_first_token_seconds",
            "Streamed calls: request to first response byte",
            ("provider",),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "tollgate_gateway_overhead_seconds",
            "Time the gateway's own hooks took for one call",
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.cost = ExactCounter(
            "tollgate_cost_usd",
            "Spend in USD (the ledger holds the exact figure)",
            CALL_LABELS,
        )
        self.tag_cost = ExactCounter(
            "tollgate_tag_cost_usd",
            "Spend in USD of calls carrying a policy tag",
            ("tag",),
        )
        registry.register(self.cost)
        registry.register(self.tag_cost)
        registry.register(StateCollector(engine))

    def serve(self, host: str, port: int) -> None:
        """Start the /metrics exporter thread; a port in use only turns metrics off."""
        try:
            self._server, self._thread = start_http_server(
                port, host, registry=self.registry
            )
        except OSError as e:
            logger.error(
                "metrics: cannot listen on %s:%d (%s); /metrics is off",
                host,
                port,
                e.strerror or e,
            )
            return
        logger.info("metrics: serving http://%s:%s/metrics", host, self.port)

    @property
    def port(self) -> int | None:
        """The bound port (the real one when 0 was asked for), None when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def on_row(self, row: dict[str, Any], budgets: list[ScopeBudget]) -> None:
        try:
            self._count(row)
        except Exception:  # metrics must never break settling a call
            logger.exception("metrics: row %s not counted", row.get("id"))

    def _count(self, row: dict[str, Any]) -> None:
        provider, model, team, user = self.labels.call(row)
        outcome = row.get("outcome")
        outcome = outcome if outcome in OUTCOMES else OTHER
        self._child(self.requests, provider, model, team, user, outcome).inc()
        if outcome == "blocked":
            reason = row.get("reason")
            self._child(self.blocked, reason if reason in REASONS else OTHER).inc()
            return

        for kind, fields in TOKEN_KINDS.items():
            count = sum(int(row.get(name) or 0) for name in fields)
            if count:
                self._child(self.tokens, provider, model, kind).inc(count)
        cost = Decimal(str(row.get("cost_usd") or 0))
        if cost:
            self.cost.add((provider, model, team, user), cost)
            for tag in self.labels.tags(row):
                self.tag_cost.add((tag,), cost)

        if row.get("latency_ms") is not None:
            self._child(self.latency, provider).observe(row["latency_ms"] / 1000)
        if row.get("ttft_ms") is not None:
            self._child(self.ttft, provider).observe(row["ttft_ms"] / 1000)

    def _child(self, family: Any, *values: str) -> Any:
        """`family.labels(*values)`, looked up once per label set (they are bounded)."""
        key = (family, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    def on_policy(self, engine: "Engine") -> None:
        """Labels and budget gauges read the engine live; nothing to rebuild."""

    def on_overhead(self, seconds: float) -> None:
        self.overhead.observe(seconds)

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None
