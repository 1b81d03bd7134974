"""A real Prometheus scrapes a real gateway: every shipped query returns data.

The module starts the fake provider's gateway with /metrics on, sends a known
sequence of calls, and starts Debian's `prometheus` on loopback with the shipped
scrape config (interval shortened, target pointed at the gateway) and alert rules.

Alert rules are checked two ways: budget rules must return data as shipped (the
calls take alice past 50%, 80% and 100%) and fire; rules about an unhealthy gateway
(ledger failing, backlog, scrape down) cannot be true here, so their expression is
evaluated without its final comparison to a number, which must leave a series that
exists. A rule of any other shape fails the test.
"""

import hashlib
import http.client
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import ROOT, FakeProvider, Gateway, free_port, require, stop, wait_rows

pytestmark = pytest.mark.e2e

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
DASHBOARD = ROOT / "grafana" / "tollgate-dashboard.json"
SCRAPE_CONFIG = ROOT / "prometheus" / "prometheus.yml"
RULES = ROOT / "prometheus" / "tollgate-alerts.yml"
ALICE = "tg-test-prometheus-alice"
POLICY = f"""
version: 1
timezone: UTC
unknown_callers: refuse
providers:
  anthropic: {{api_key: sk-ant-real-provider-key}}
teams:
  be: {{max_budget: 100}}
users:
  alice: {{team: be, max_budget: 0.01}}
keys:
  - {{key_alias: alice-key, user: alice,
     key_sha256: {hashlib.sha256(ALICE.encode()).hexdigest()}}}
tags:
  project:x: {{max_budget: 1}}
"""
# Grafana's own variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${team}": ".*",
    "$team": ".*",
}
TRAILING_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$")


@dataclass(frozen=True)
class Query:
    where: str
    expr: str


def dashboard_queries() -> list[Query]:
    found = []
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(Query(f"{panel['title']} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            text = variable["query"]["query"]
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", text)
            assert metric is not None, f"variable {variable['name']}: {text!r}"
            found.append(Query(f"variable {variable['name']}", metric.group(1)))
    return found


def grafana_expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


class Prometheus:
    """`prometheus` on a free loopback port with its data in a temp directory."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        [job] = [j for j in config["scrape_configs"] if j["job_name"] == "tollgate"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"prometheus did not start: {self.log_text()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as found:
            answer = json.load(found)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return list(data["result"])

    def eventually(self, expr: str, timeout_s: float = 20) -> list[dict[str, Any]]:
        """The query's result once it is not empty, or [] after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)

    def log_text(self) -> str:
        self.log.flush()
        return (Path(self.log.name)).read_text(errors="replace")

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


def send(gateway: Gateway, key: str, *, stream: bool = False) -> int:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/v1/messages",
            json.dumps(body),
            {
                "content-type": "application/json",
                "x-api-key": key,
                "x-fake-usage": "input=1000,output=100",
                "x-tollgate-tags": "project:x",
            },
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class Scraped:
    gateway: Gateway
    prometheus: Prometheus
    statuses: list[int]


@pytest.fixture(scope="module")
def scraped(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    require(PROMETHEUS, "prometheus (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    metrics_port = free_port()
    gateway = Gateway(
        tmp, fake, policy=policy, options={"budget_metrics_port": str(metrics_port)}
    )
    prometheus = None
    try:
        # each call costs 1000 * 3 + 100 * 15 = 4500 USD per million: alice's 0.01
        # reaches 45%, 90%, then 135%; the fourth call and a stranger are refused
        statuses = [
            send(gateway, ALICE),
            send(gateway, ALICE, stream=True),
            send(gateway, ALICE, stream=True),
            send(gateway, ALICE),
            send(gateway, "sk-ant-stranger"),
        ]
        wait_rows(gateway.db, 5)
        prometheus = Prometheus(tmp, metrics_port)
        yield Scraped(gateway, prometheus, statuses)
    finally:
        if prometheus is not None:
            prometheus.close()
        gateway.close()


def value(result: list[dict[str, Any]]) -> str:
    [sample] = result
    return str(sample["value"][1])


def test_calls_answered_as_budget_allows_when_sequence_sent(scraped: Scraped) -> None:
    assert scraped.statuses == [200, 200, 200, 402, 401]


def test_prometheus_figures_equal_ledger_when_gateway_scraped(scraped: Scraped) -> None:
    p = scraped.prometheus
    rows = wait_rows(scraped.gateway.db, 5)
    spent = sum((r["cost_usd"] for r in rows if r["user_id"] == "alice"), Decimal(0))
    assert spent == Decimal("0.0135")
    alice = p.eventually('tollgate_budget_spent_usd{budget="user:alice"} == 0.0135')
    assert value(alice) == "0.0135", p.log_text()
    assert value(p.eventually("sum(tollgate_cost_usd_total)")) == "0.0135"
    tagged = p.eventually('tollgate_tag_cost_usd_total{tag="project:x"}')
    assert value(tagged) == "0.0135"
    assert value(p.eventually("sum(tollgate_requests_total)")) == str(len(rows))
    assert value(p.eventually('sum(tollgate_tokens_total{kind="input"})')) == str(
        sum(r["input_tokens"] for r in rows)
    )
    blocked = {
        s["metric"]["reason"]: s["value"][1]
        for s in p.eventually("tollgate_blocked_total")
    }
    assert blocked == {"budget": "1", "auth": "1"}
    assert value(p.eventually("sum(tollgate_time_to_first_token_seconds_count)")) == "2"


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_dashboard_query_returns_data_when_gateway_scraped(
    scraped: Scraped, query: Query
) -> None:
    # rate() needs two scrapes after the calls; eventually() waits for them
    result = scraped.prometheus.eventually(grafana_expand(query.expr))
    assert result, f"{query.where}: no data for {query.expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_rule_expression_returns_data_when_gateway_scraped(
    scraped: Scraped, rule: dict[str, Any]
) -> None:
    expr = rule["expr"]
    if rule["alert"].startswith("TollgateBudget"):
        assert scraped.prometheus.eventually(expr), expr
        return
    series = TRAILING_COMPARISON.sub("", expr)
    assert series != expr, f"{rule['alert']}: no trailing comparison in {expr!r}"
    assert scraped.prometheus.eventually(series), series


def test_budget_alerts_fire_when_alice_passes_thresholds(scraped: Scraped) -> None:
    wanted = {
        ("TollgateBudgetThresholdCrossed", "0.5"),
        ("TollgateBudgetThresholdCrossed", "0.8"),
        ("TollgateBudgetExhausted", None),
    }
    deadline = time.monotonic() + 20
    while True:
        alerts = scraped.prometheus.api("alerts")["alerts"]
        firing = {
            (a["labels"]["alertname"], a["labels"].get("threshold"))
            for a in alerts
            if a["state"] == "firing" and a["labels"].get("budget") == "user:alice"
        }
        if firing >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert firing == wanted
    rules = [
        rule
        for group in scraped.prometheus.api("rules")["groups"]
        for rule in group["rules"]
    ]
    assert {(r["name"], r["health"]) for r in rules} == {
        (r["alert"], "ok") for r in alert_rules()
    }


def test_shipped_configs_valid_when_checked_by_promtool() -> None:
    require(PROMTOOL, "promtool (Debian package prometheus)")
    for args in (["rules", str(RULES)], ["config", str(SCRAPE_CONFIG)]):
        result = subprocess.run(
            [PROMTOOL, "check", *args], capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
