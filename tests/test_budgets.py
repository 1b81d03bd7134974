"""Budget windows, admission with reservations, rate limits; on a controlled clock."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from faultkit import make_row

from tollgate.budgets import BudgetBook, Member
from tollgate.ledger import Ledger
from tollgate.limits import RateLimiter
from tollgate.policy import parse_policy
from tollgate.windows import parse_duration
from tollgate.yamlsrc import parse_yaml

POLICY = """
timezone: Europe/Berlin
org: {max_budget: 1000}
teams:
  be: {max_budget: 50, model_max_budget: {"claude-opus-*": 5}}
users:
  alice: {team: be, max_budget: 10}
  bob: {team: be, max_budget: 100, budget_duration: 1d}
tags:
  project:x: {max_budget: 3}
"""
ALICE = Member("alice", "be", None, (), "claude-sonnet-4-5")


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.value = start

    def __call__(self) -> datetime:
        return self.value


def book_at(when: datetime) -> tuple[BudgetBook, FakeClock]:
    clock = FakeClock(when)
    policy = parse_policy(parse_yaml(POLICY, source="p.yaml"), environ={})
    return BudgetBook(policy, clock), clock


@pytest.mark.parametrize(
    ("duration", "now", "start", "end"),
    [
        (
            "1mo",
            "2026-12-31T23:30:00+00:00",
            "2027-01-01T00:00:00+01:00",
            "2027-02-01T00:00:00+01:00",
        ),
        (
            "1d",
            "2026-12-04T22:59:59+00:00",
            "2026-12-04T00:00:00+01:00",
            "2026-12-05T00:00:00+01:00",
        ),
        (
            "1w",
            "2026-12-06T12:00:00+00:00",
            "2026-11-30T00:00:00+01:00",
            "2026-12-07T00:00:00+01:00",
        ),
        (
            "3mo",
            "2026-05-10T00:00:00+00:00",
            "2026-04-01T00:00:00+02:00",
            "2026-07-01T00:00:00+02:00",
        ),
    ],
)
def test_window_starts_at_local_midnight_when_calendar_duration(
    duration: str, now: str, start: str, end: str
) -> None:
    parsed = parse_duration(duration)
    assert parsed is not None
    bounds = parsed.bounds(datetime.fromisoformat(now), ZoneInfo("Europe/Berlin"))
    assert tuple(b.isoformat() for b in bounds) == (start, end)


def test_admit_reserves_in_every_scope_when_all_have_room() -> None:
    book, _ = book_at(datetime(2026, 12, 4, 12, tzinfo=UTC))
    budgets = book.budgets_for(ALICE)
    assert [b.label for b in budgets] == ["org", "team:be", "user:alice"]
    assert book.admit(budgets, Decimal("4")) is None
    assert [b.reserved for b in budgets] == [Decimal(4)] * 3


def test_admit_refuses_user_when_reserved_and_spent_leave_no_room() -> None:
    book, _ = book_at(datetime(2026, 12, 4, 12, tzinfo=UTC))
    budgets = book.budgets_for(ALICE)
    assert book.admit(budgets, Decimal("6")) is None
    refused = book.admit(budgets, Decimal("5"))
    assert refused is not None
    assert (refused.budget.label, refused.needed) == ("user:alice", Decimal(5))


def test_settle_swaps_reservation_for_cost_when_call_ends() -> None:
    book, clock = book_at(datetime(2026, 12, 4, 12, tzinfo=UTC))
    budgets = book.budgets_for(ALICE)
    book.admit(budgets, Decimal("6"))
    book.settle(budgets, Decimal("6"), Decimal("1.25"), clock())
    assert [(b.spent, b.reserved) for b in budgets] == [
        (Decimal("1.25"), Decimal(0))
    ] * 3


def test_spent_user_refused_until_next_month_when_window_rolls() -> None:
    book, clock = book_at(datetime(2026, 12, 31, 22, 0, tzinfo=UTC))
    budgets = book.budgets_for(ALICE)
    book.admit(budgets, Decimal(0))
    book.settle(budgets, Decimal(0), Decimal(10), clock())
    assert book.admit(book.budgets_for(ALICE), Decimal(0)) is not None
    clock.value = datetime(2026, 12, 31, 23, 0, 1, tzinfo=UTC)  # 00:00:01 in Berlin
    assert book.admit(book.budgets_for(ALICE), Decimal("0.5")) is None


def test_model_budget_applies_only_when_model_matches_pattern() -> None:
    book, _ = book_at(datetime(2026, 12, 4, 12, tzinfo=UTC))
    opus = Member("alice", "be", None, ("project:x",), "claude-opus-4-1")
    labels = [b.label for b in book.budgets_for(opus)]
    assert labels == [
        "org",
        "team:be",
        "team:be/model:claude-opus-*",
        "user:alice",
        "tag:project:x",
    ]
    assert "team:be/model:claude-opus-*" not in [
        b.label for b in book.budgets_for(ALICE)
    ]


def test_load_counts_ledger_rows_when_rebuilding_after_restart() -> None:
    book, _ = book_at(datetime(2026, 12, 4, 12, tzinfo=UTC))
    rows = [
        {
            "ts": datetime(2026, 12, 2, tzinfo=UTC),
            "user_id": "alice",
            "team": "be",
            "tags": ["project:x"],
            "cost_usd": Decimal("2.5"),
            "price_model": "claude-sonnet-4-5",
        },
        {
            "ts": datetime(2026, 11, 30, 22, 59, tzinfo=UTC),
            "user_id": "alice",
            "team": "be",
            "tags": [],
            "cost_usd": Decimal("7"),
            "price_model": "claude-sonnet-4-5",
        },
        {
            "ts": datetime(2026, 12, 4, 1, tzinfo=UTC),
            "user_id": "bob",
            "team": "be",
            "tags": [],
            "cost_usd": Decimal("1"),
            "price_model": "claude-opus-4-1",
        },
    ]
    book.load(rows)
    spent = {b.label: b.spent for b in book.all_budgets()}
    # alice's 7 USD fell at 23:59 on Nov 30 in Berlin: last month.
    assert spent == {
        "org": Decimal("3.5"),
        "team:be": Decimal("3.5"),
        "team:be/model:claude-opus-*": Decimal(1),
        "user:alice": Decimal("2.5"),
        "user:bob": Decimal(1),
        "tag:project:x": Decimal("2.5"),
    }


def test_rate_limiter_refuses_with_retry_after_when_rpm_reached() -> None:
    now = [1000.0]
    limiter = RateLimiter(lambda: now[0])
    scopes = [("user:alice", 2, None)]
    assert limiter.admit(scopes, 10) is None
    now[0] += 20
    assert limiter.admit(scopes, 10) is None
    refused = limiter.admit(scopes, 10)
    assert refused is not None
    assert (refused.kind, refused.used, refused.limit, refused.retry_after_s) == (
        "rpm",
        2,
        2,
        41,
    )
    now[0] += 41
    assert limiter.admit(scopes, 10) is None


def test_rate_limiter_counts_real_tokens_when_estimate_corrected() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    scopes = [("team:be", None, 1000)]
    assert limiter.admit(scopes, 100) is None
    limiter.correct_tokens(["team:be"], 850)  # the call really used 950
    refused = limiter.admit(scopes, 100)
    assert refused is not None
    assert (refused.kind, refused.used) == ("tpm", 950)


def test_spend_summed_in_ledger_counts_per_window_when_rebuilt(tmp_path: Path) -> None:
    # Berlin: bob's day began at 2026-05-14T22:00Z, the month at 2026-04-30T22:00Z.
    now = datetime(2026, 5, 15, 10, 0, tzinfo=UTC)
    spend = [
        ("bob", "2026-04-30T21:59:59+00:00", "7"),  # last month: counts nowhere
        ("bob", "2026-04-30T22:00:00+00:00", "1.5"),  # this month, not today
        ("bob", "2026-05-14T21:59:59+00:00", "2.25"),  # this month, not today
        ("bob", "2026-05-14T22:00:00+00:00", "0.125"),  # today
        ("alice", "2026-05-15T09:00:00+00:00", "0.5"),  # today
        ("alice", "2026-05-15T09:30:00+00:00", "0.25"),  # today
    ]
    ledger = Ledger(tmp_path / "spend.duckdb", flush_interval_s=0.05)
    ledger.start()
    for user, ts, cost in spend:
        ledger.append(make_row(cost=cost, user_id=user, team="be", ts=ts))
    assert ledger.wait_idle()
    book, _ = book_at(now)
    book.load(ledger.rows_since(book.window_starts()))
    ledger.close()
    spent = {b.label: b.spent for b in book.all_budgets() if not b.model_pattern}
    assert spent == {
        "org": Decimal("4.625"),
        "team:be": Decimal("4.625"),
        "user:alice": Decimal("0.75"),
        "user:bob": Decimal("0.125"),
        "tag:project:x": Decimal(0),
    }
