"""`tollgate report` and `tollgate budgets`: exact output for a known ledger."""

import http.client
import json
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_metrics import start_engine

from harness import FakeProvider, Gateway, free_port, wait_rows
from tollgate import schema
from tollgate.calls import Call
from tollgate.cli import main
from tollgate.cli_reports import money
from tollgate.identity import fingerprint, identify
from tollgate.ledger import Ledger, read_rows
from tollgate.metrics import Metrics
from tollgate.providers.base import RequestFacts, Route

FIXTURES = Path(__file__).parent / "fixtures"
TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "web_search_requests",
)


def row(
    n: int,
    ts: str,
    user: str | None,
    team: str | None,
    price_model: str | None,
    tags: list[str],
    session: str | None,
    cost: str,
    **counts: Any,
) -> dict[str, Any]:
    found: dict[str, Any] = dict.fromkeys(schema.NAMES)
    found.update(
        id=f"row-{n}",
        ts=ts,
        provider="anthropic",
        endpoint="messages",
        model=counts.pop("model", price_model),
        price_model=price_model,
        user_id=user,
        team=team,
        tags=tags,
        session=session,
        status=200,
        outcome=counts.pop("outcome", "ok"),
        cost_usd=cost,
        latency_ms=100,
    )
    found.update({name: counts.get(name, 0) for name in TOKENS})
    return found


SONNET, OPUS, HAIKU = "claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"
ROWS = [
    row(
        1,
        "2026-05-01T09:00:00+00:00",
        "alice",
        "be",
        SONNET,
        ["project:x"],
        "s1",
        "0.0075",
        input_tokens=1000,
        output_tokens=200,
        cache_read_tokens=5000,
    ),
    row(
        2,
        "2026-05-01T23:30:00+00:00",
        "alice",
        "be",
        SONNET,
        [],
        "s1",
        "0.012825",
        input_tokens=2000,
        output_tokens=100,
        cache_write_5m_tokens=300,
        cache_write_1h_tokens=700,
    ),
    row(
        3,
        "2026-05-02T08:00:00+00:00",
        "bob",
        "be",
        OPUS,
        ["project:x", "urgent"],
        "s2",
        "0.00525",
        input_tokens=100,
        output_tokens=50,
    ),
    row(
        4,
        "2026-05-02T10:00:00+00:00",
        "ivan",
        "interns",
        None,
        [],
        None,
        "0",
        model="mystery-9",
        input_tokens=10,
        output_tokens=1,
    ),
    # 00:30 in Berlin is 22:30 UTC the day before: days are UTC days
    row(
        5,
        "2026-05-03T00:30:00+02:00",
        None,
        None,
        None,
        [],
        None,
        "0",
        model=SONNET,
        outcome="blocked",
    ),
    row(
        6,
        "2026-05-03T12:00:00+00:00",
        "ivan",
        "interns",
        HAIKU,
        [],
        "s3",
        "0.00006",
        input_tokens=40,
        output_tokens=4,
        reasoning_tokens=2,
    ),
]
POLICY = f"""
version: 1
timezone: UTC
providers:
  anthropic: {{api_key: "${{TOLLGATE_TEST_UNSET_VARIABLE}}"}}
org: {{max_budget: 1000}}
teams:
  be: {{max_budget: 0.04, model_max_budget: {{"claude-opus-*": 0.005}}}}
  interns: {{max_budget: 1, budget_duration: 1d}}
users:
  alice: {{team: be, max_budget: 0.02}}
  ivan: {{team: interns}}
keys:
  - {{key_alias: alice-key, user: alice, key_sha256: {fingerprint("tg-alice")}}}
tags:
  project:x: {{max_budget: 0.1, budget_duration: 1w}}
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "spend.duckdb"
    ledger = Ledger(path)
    ledger.start()
    for found in ROWS:
        ledger.append(found)
    ledger.close()
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_budgets(
    capsys: pytest.CaptureFixture[str], db: Path, policy: Path, fmt: str, url: str
) -> tuple[int, str, str]:
    """`tollgate budgets` as of 2026-05-03 noon UTC, in `fmt`, reserved from `url`."""
    return run(
        capsys,
        "budgets",
        "--policy",
        str(policy),
        "--db",
        str(db),
        "--format",
        fmt,
        "--now",
        "2026-05-03T12:00:00+00:00",
        "--metrics-url",
        url,
    )


TEAM_TABLE = (FIXTURES / "report-by-team.txt").read_text()  # aligned, wide


def test_report_table_aligns_exact_sums_when_grouped_by_team(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "report", "--db", str(db), "--by", "team") == (0, TEAM_TABLE, "")


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "team,model",
            [
                "team,model,calls,blocked,input_tokens,output_tokens,cache_read_tokens,"
                "cache_write_tokens,cost_usd",
                "be,claude-sonnet-4-5,2,0,3000,300,5000,1000,0.020325",
                "be,claude-opus-4-1,1,0,100,50,0,0,0.00525",
                "interns,claude-haiku-4-5,1,0,40,4,0,0,0.00006",
                "interns,mystery-9,1,0,10,1,0,0,0.00",
                ",claude-sonnet-4-5,1,1,0,0,0,0,0.00",
            ],
        ),
        (
            "tag",
            [
                "tag,calls,blocked,input_tokens,output_tokens,cache_read_tokens,"
                "cache_write_tokens,cost_usd",
                ",4,1,2050,105,0,1000,0.012885",
                "project:x,2,0,1100,250,5000,0,0.01275",
                "urgent,1,0,100,50,0,0,0.00525",
            ],
        ),
        (
            "session",
            [
                "session,calls,blocked,input_tokens,output_tokens,cache_read_tokens,"
                "cache_write_tokens,cost_usd",
                "s1,2,0,3000,300,5000,1000,0.020325",
                "s2,1,0,100,50,0,0,0.00525",
                "s3,1,0,40,4,0,0,0.00006",
                ",2,1,10,1,0,0,0.00",
            ],
        ),
    ],
    ids=["team-model", "tag", "session"],
)
def test_report_csv_sums_exactly_when_grouped(
    db: Path, capsys: pytest.CaptureFixture[str], by: str, expected: list[str]
) -> None:
    code, out, _ = run(capsys, "report", "--db", str(db), "--by", by, "--format", "csv")
    assert (code, out.splitlines()) == (0, expected)


def test_report_json_keeps_exact_decimals_when_grouped_by_day_and_user(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "report",
        "--db",
        str(db),
        "--by",
        "day",
        "--by",
        "user",
        "--since",
        "2026-05-01T12:00:00",
        "--until",
        "2026-05-03",
        "--format",
        "json",
    )
    totals = {"blocked": 0, "cache_read_tokens": 0, "cache_write_tokens": 0}
    assert code == 0
    assert json.loads(out) == [
        {
            "day": "2026-05-01",
            "user": "alice",
            "calls": 1,
            **totals,
            "input_tokens": 2000,
            "output_tokens": 100,
            "cache_write_tokens": 1000,
            "cost_usd": "0.012825",
        },
        {
            "day": "2026-05-02",
            "user": "bob",
            "calls": 1,
            **totals,
            "input_tokens": 100,
            "output_tokens": 50,
            "cost_usd": "0.00525",
        },
        {
            "day": "2026-05-02",
            "user": "ivan",
            "calls": 1,
            **totals,
            "input_tokens": 10,
            "output_tokens": 1,
            "cost_usd": "0.00",
        },
        {
            "day": "2026-05-02",
            "user": None,
            "calls": 1,
            **totals,
            "blocked": 1,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": "0.00",
        },
    ]


@pytest.mark.parametrize(
    ("group", "view"), [("team", "spend_by_team"), ("tag", "spend_by_tag")]
)
def test_view_matches_report_when_queried_inside_ledger_file(
    db: Path, capsys: pytest.CaptureFixture[str], group: str, view: str
) -> None:
    rows = read_rows(db, f"SELECT {group}, calls, cost_usd FROM {view}")
    code, out, _ = run(
        capsys, "report", "--db", str(db), "--by", group, "--format", "csv"
    )
    report = [line.split(",") for line in out.splitlines()[1:]]
    assert code == 0
    assert sorted((g or "", str(c), money(u)) for g, c, u in rows) == sorted(
        (r[0], r[1], r[-1]) for r in report if r[0] != "total"
    )


def test_session_view_sums_each_session_when_queried_inside_ledger_file(
    db: Path,
) -> None:
    view = read_rows(
        db,
        "SELECT session, sum(calls), sum(cost_usd) FROM spend_by_session"
        " GROUP BY session ORDER BY session NULLS LAST",
    )
    assert [(s, c, money(u)) for s, c, u in view] == [
        ("s1", 2, "0.020325"),
        ("s2", 1, "0.00525"),
        ("s3", 1, "0.00006"),
        (None, 2, "0.00"),
    ]


def test_key_view_totals_whole_ledger_when_queried_inside_ledger_file(
    db: Path,
) -> None:
    [(calls, cost)] = read_rows(
        db, "SELECT sum(calls), sum(cost_usd) FROM spend_by_key"
    )
    [(all_calls, all_cost)] = read_rows(
        db, "SELECT count(*), sum(cost_usd) FROM requests"
    )
    assert (calls, cost) == (all_calls, all_cost)


def test_report_shows_zero_total_when_range_has_no_calls(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "report", "--db", str(db), "--since", "2030-01-01")
    assert (code, out.splitlines()[-1].split()) == (0, ["total", *"0" * 6, "0.00"])
    code, out, _ = run(
        capsys, "report", "--db", str(db), "--since", "2030-01-01", "--format", "json"
    )
    assert (code, out) == (0, "[]\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--by", "team,users"],
            "Error: --by: expected one of user, team, model, tag, day, session,"
            " got 'users'",
        ),
        (
            ["--since", "yesterday"],
            "Error: --since: expected an ISO date or date-time such as 2026-05-01 or"
            " 2026-05-01T09:30:00+02:00, got 'yesterday'",
        ),
        (
            ["--since", "2026-05-02", "--until", "2026-05-02"],
            "Error: --until: '2026-05-02' is not after --since '2026-05-02'",
        ),
    ],
    ids=["unknown-group", "bad-date", "empty-range"],
)
def test_report_fails_with_message_when_arguments_wrong(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(capsys, "report", "--db", str(db), *argv) == (1, "", message + "\n")


def test_report_fails_with_hint_when_ledger_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.duckdb"
    assert run(capsys, "report", "--db", str(missing)) == (
        1,
        "",
        f"Error: {missing}: no such ledger - pass --db with the gateway's"
        " budget_db file\n",
    )


BUDGETS_TABLE = (FIXTURES / "budgets.txt").read_text()  # aligned, wide


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/metrics"


def test_budgets_table_shows_windows_when_gateway_unreachable(
    db: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # team:be spent 0.025575 in 2.5 days: the other 0.014425 take 1 d 9 h 50 min 30 s
    assert run_budgets(capsys, db, policy, "table", closed_url()) == (
        0,
        BUDGETS_TABLE,
        "",
    )


def test_budgets_csv_lists_every_budget_when_asked(
    db: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_budgets(capsys, db, policy, "csv", closed_url())
    assert (code, out.splitlines()[:3]) == (
        0,
        [
            "budget,window,limit,spent,reserved,used,resets,forecast",
            "org,1mo,1000.00,0.025635,,0.0%,2026-06-01T00:00:00+00:00,after reset",
            "team:be,1mo,0.04,0.025575,,63.9%,2026-06-01T00:00:00+00:00,"
            "2026-05-04T21:50:30+00:00",
        ],
    )


def test_budgets_json_shows_reserved_when_gateway_metrics_reachable(
    db: Path, policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = POLICY.replace('"${TOLLGATE_TEST_UNSET_VARIABLE}"', "sk-ant-test")
    live = start_engine(tmp_path / "live.duckdb", text)
    [metrics] = [o for o in live.observers if isinstance(o, Metrics)]
    metrics.serve("127.0.0.1", 0)
    try:
        flight = Call(
            route=Route("anthropic", "messages"),
            started=live.clock.now(),
            started_s=time.time(),
            agent="test",
        )
        flight.facts = RequestFacts(model=SONNET, max_output_tokens=1000)
        assert live.admit(flight, identify(live.policy, "tg-alice", None), 300) is None
        code, out, _ = run_budgets(
            capsys, db, policy, "json", f"http://127.0.0.1:{metrics.port}/metrics"
        )
    finally:
        live.close()
    assert code == 0
    found = {item["budget"]: item for item in json.loads(out)}
    # 100 input tokens (300 bytes / 3) * 3 + 1000 output * 15 USD per million
    assert found["user:alice"] == {
        "budget": "user:alice",
        "window": "1mo",
        "limit": "0.02",
        "spent": "0.020325",
        "reserved": "0.0153",
        "used": "101.6%",
        "resets": "2026-06-01T00:00:00+00:00",
        "forecast": "exhausted",
    }
    assert found["tag:project:x"]["reserved"] == "0.00"


def test_budgets_fails_with_message_when_policy_missing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.yaml"
    assert run(capsys, "budgets", "--policy", str(missing), "--db", str(db)) == (
        1,
        "",
        f"Error: {missing}: cannot read: No such file or directory\n",
    )


@pytest.mark.parametrize("command", ["report", "budgets"])
def test_command_prints_help_with_example_when_asked(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"Example: tollgate {command} " in " ".join(capsys.readouterr().out.split())


# while the gateway serves


def send_calls(gateway: Gateway, count: int, stop: threading.Event) -> list[int]:
    statuses = []
    body = json.dumps(
        {
            "model": SONNET,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    for _ in range(count):
        if stop.is_set():
            break
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            connection.request(
                "POST",
                "/v1/messages",
                body,
                {
                    "content-type": "application/json",
                    "x-api-key": "sk-ant-test",
                    "x-fake-usage": "input=1000,output=100",
                    "x-tollgate-tags": "load",
                },
            )
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        finally:
            connection.close()
    return statuses


@pytest.mark.e2e
def test_report_runs_when_gateway_serves_traffic(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway = Gateway(tmp_path, fake)
    stop = threading.Event()
    statuses: list[int] = []
    sender = threading.Thread(
        target=lambda: statuses.extend(send_calls(gateway, 3000, stop))
    )
    report = [
        sys.executable,
        "-m",
        "tollgate.cli",
        "report",
        "--db",
        str(gateway.db),
        "--by",
        "tag",
        "--format",
        "json",
    ]
    reports = []
    try:
        sender.start()
        assert wait_rows(gateway.db, 1), gateway.log_text()[-2000:]
        for _ in range(3):
            reports.append(subprocess.run(report, capture_output=True, timeout=60))
            reports[-1].check_returncode()
            assert sender.is_alive(), "traffic ended before the report did"
        stop.set()
        sender.join(60)
        rows = wait_rows(gateway.db, len(statuses))
        final = subprocess.run(report, capture_output=True, timeout=60)
    finally:
        stop.set()
        gateway.close()
    seen = [json.loads(r.stdout)[0]["calls"] for r in reports]
    assert seen == sorted(seen) and seen[0] > 0
    assert set(statuses) == {200} and len(rows) == len(statuses)
    # 1000 * 3 + 100 * 15 = 4500 USD per million per call
    assert json.loads(final.stdout) == [
        {
            "tag": "load",
            "calls": len(statuses),
            "blocked": 0,
            "input_tokens": 1000 * len(statuses),
            "output_tokens": 100 * len(statuses),
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost_usd": money(Decimal("0.0045") * len(statuses)),
        }
    ]
