"""`tollgate report` and `tollgate budgets`: spend from the ledger, read-only.

Both open DuckDB read-only between the gateway's short batch writes (see ledger.py),
so they work while it serves. Money is printed exactly: trailing zeros trimmed, never
rounded; JSON carries it as strings. Rows still in the journal (at most a batch
interval old) are counted by `budgets` but not by `report`.
"""

import argparse
import csv
import http.client
import json
import sys
import urllib.request
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .alerts import forecast_exhausted_at
from .budgets import BudgetBook
from .errors import TollgateError
from .ledger import Ledger, read_rows
from .policy import load_policy

GROUPS = {
    "user": "user_id",
    "team": "team",
    "model": "coalesce(price_model, model)",
    "tag": "tag",
    "day": "CAST(timezone('UTC', ts) AS DATE)",
    "session": "session",
}
TOTALS = (
    ("calls", "count(*)"),
    ("blocked", "count(*) FILTER (WHERE outcome = 'blocked')"),
    ("input_tokens", "coalesce(sum(input_tokens), 0)"),
    ("output_tokens", "coalesce(sum(output_tokens), 0)"),
    ("cache_read_tokens", "coalesce(sum(cache_read_tokens), 0)"),
    (
        "cache_write_tokens",
        "coalesce(sum(cache_write_5m_tokens + cache_write_1h_tokens), 0)",
    ),
    ("cost_usd", "coalesce(sum(cost_usd), 0)"),
)
# A call with several tags counts under each; one without any under an empty tag.
TAGGED = (
    "(SELECT *, unnest(CASE WHEN len(coalesce(tags, [])) = 0 THEN [NULL::VARCHAR]"
    " ELSE tags END) AS tag FROM base)"
)
WHEN_HELP = "an ISO date (midnight UTC) or date-time (UTC unless it has an offset)"
METRICS_URL = "http://127.0.0.1:9464/metrics"


def register(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="spend, calls and tokens from the ledger, grouped",
        description="Sum spend, calls and tokens per group of ledger rows. A call with"
        " several tags counts under each tag. Example: tollgate report --db"
        " spend.duckdb --by team,model --since 2026-05-01 --format csv",
    )
    _ledger_option(report)
    report.add_argument(
        "--by",
        action="append",
        metavar="GROUP",
        help="user, team, model (its price-table entry, else as requested), tag,"
        " day (UTC) or session; repeat or comma-separate to group by several"
        " (default: user)",
    )
    report.add_argument("--since", help=f"first moment counted: {WHEN_HELP}")
    report.add_argument("--until", help=f"first moment not counted: {WHEN_HELP}")
    _format_option(report)
    report.set_defaults(run=run_report)

    budgets = commands.add_parser(
        "budgets",
        help="every budget of a policy: limit, spent, reserved, reset, forecast",
        description="Show each budget of the policy with its current window: spent"
        " (from the ledger), reserved (calls in flight, from a running gateway's"
        " /metrics; - when unreachable), percent used, reset time and when it runs"
        " out at the window's pace so far. Example: tollgate budgets --policy"
        " policy.yaml --db spend.duckdb",
    )
    budgets.add_argument("--policy", type=Path, required=True, help="policy YAML")
    _ledger_option(budgets)
    budgets.add_argument(
        "--metrics-url",
        default=METRICS_URL,
        help="the gateway's /metrics, for reserved amounts (default: %(default)s)",
    )
    budgets.add_argument("--now", help=f"show windows as of this time: {WHEN_HELP}")
    _format_option(budgets)
    budgets.set_defaults(run=run_budgets)


def _ledger_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("spend.duckdb"),
        help="the gateway's ledger (budget_db; default: %(default)s)",
    )


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table (aligned), csv, or json with money as exact decimal strings"
        " (default: %(default)s)",
    )


# tollgate report


def run_report(args: argparse.Namespace) -> int:
    groups = parse_groups(args.by or ["user"])
    since = parse_when(args.since, "--since") if args.since else None
    until = parse_when(args.until, "--until") if args.until else None
    if since and until and until <= since:
        raise TollgateError(
            f"--until: {args.until!r} is not after --since {args.since!r}"
        )
    _require_ledger(args.db)

    # One statement, so the groups and the total see the same rows while the
    # gateway keeps writing; the total never double-counts tags.
    where, params = _range(since, until)
    keys = ", ".join(f"CAST({GROUPS[g]} AS VARCHAR) AS {g}" for g in groups)
    blanks = ", ".join(f"NULL AS {g}" for g in groups)
    sums = ", ".join(f"{sql} AS {name}" for name, sql in TOTALS)
    source = TAGGED if "tag" in groups else "base"
    order = ["is_total", *(["day"] if "day" in groups else []), "cost_usd DESC"]
    order += [f"{g} NULLS LAST" for g in groups if g != "day"]
    sql = (
        f"WITH base AS (SELECT * FROM requests WHERE {where})"
        f" SELECT false AS is_total, {keys}, {sums} FROM {source} GROUP BY ALL"
        f" UNION ALL SELECT true, {blanks}, {sums} FROM base"
        f" ORDER BY {', '.join(order)}"
    )
    *rows, total = [list(r[1:]) for r in read_rows(args.db, sql, params)]
    total[: len(groups)] = ["total", *[""] * (len(groups) - 1)]
    header = [*groups, *(name for name, _ in TOTALS)]
    emit(args.format, header, rows, total if args.format == "table" else None)
    return 0


def parse_groups(values: Sequence[str]) -> list[str]:
    found: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in GROUPS:
                choices = ", ".join(GROUPS)
                raise TollgateError(f"--by: expected one of {choices}, got {name!r}")
            if name not in found:
                found.append(name)
    return found


def parse_when(text: str, flag: str) -> datetime:
    """A date (midnight UTC) or date-time (UTC when it has no offset)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise TollgateError(
            f"{flag}: expected an ISO date or date-time such as 2026-05-01 or"
            f" 2026-05-01T09:30:00+02:00, got {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _range(since: datetime | None, until: datetime | None) -> tuple[str, list[Any]]:
    clauses, params = ["true"], []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    return " AND ".join(clauses), params


def _require_ledger(path: Path) -> None:
    if not path.exists():
        raise TollgateError(
            f"{path}: no such ledger - pass --db with the gateway's budget_db file"
        )


# tollgate budgets


class _AnyEnvironment(dict[str, str]):
    """Stands in for `${VAR}` provider keys: a report never needs them."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def run_budgets(args: argparse.Namespace) -> int:
    now = parse_when(args.now, "--now") if args.now else datetime.now(UTC)
    policy = load_policy(args.policy, environ=_AnyEnvironment())
    _require_ledger(args.db)
    book = BudgetBook(policy, lambda: now)
    book.load(Ledger(args.db).rows_since(book.window_starts()))
    reserved = fetch_reserved(args.metrics_url)

    header = [
        "budget",
        "window",
        "limit",
        "spent",
        "reserved",
        "used",
        "resets",
        "forecast",
    ]
    rows: list[list[Any]] = []
    for b in book.all_budgets():
        assert b.window_start is not None and b.window_end is not None
        held = reserved.get(b.label) if reserved is not None else None
        rows.append(
            [
                b.label,
                str(b.duration),
                b.limit,
                b.spent,
                held,
                f"{b.spent * 100 / b.limit:.1f}%" if b.limit else None,
                b.window_end.isoformat(timespec="seconds"),
                _forecast(b.spent, b.limit, b.window_start, b.window_end, now),
            ]
        )
    emit(args.format, header, rows, None)
    return 0


def _forecast(
    spent: Decimal, limit: Decimal, start: datetime, end: datetime, now: datetime
) -> str | None:
    if spent >= limit and limit > 0:
        return "exhausted"
    if spent <= 0:
        return None
    when = forecast_exhausted_at(spent, limit, start, end, now)
    return when.isoformat(timespec="seconds") if when else "after reset"


def fetch_reserved(url: str) -> dict[str, Decimal] | None:
    """Reserved USD per budget from a running gateway's /metrics; None if not there."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    found: dict[str, Decimal] = {}
    try:
        with opener.open(url, timeout=2) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "tollgate_budget_reserved_usd":
                for s in family.samples:
                    found[s.labels["budget"]] = Decimal(repr(s.value))
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None
    return found


# output


def cell(value: Any, fmt: str) -> Any:
    """One value as the format shows it: money exact, missing as - (table) or null."""
    if value is None:
        return None if fmt == "json" else ("-" if fmt == "table" else "")
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int) and fmt == "json":
        return value
    return str(value)


def money(value: Decimal) -> str:
    """Exact, trailing zeros trimmed, at least cents: 0.0256350000 -> 0.025635."""
    whole, _, fraction = format(value.normalize(), "f").partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def emit(
    fmt: str, header: list[str], rows: list[list[Any]], total: list[Any] | None
) -> None:
    if fmt == "json":
        items = [
            dict(zip(header, (cell(v, fmt) for v in r), strict=True)) for r in rows
        ]
        print(json.dumps(items, indent=2))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([header, *([cell(v, fmt) for v in r] for r in rows)])
        return

    body = [*rows, total] if total else rows
    places = [_places(r[i] for r in body) for i in range(len(header))]
    shown = [
        [_fixed(v, p) if p else cell(v, fmt) for v, p in zip(r, places, strict=True)]
        for r in body
    ]
    table = [header, *shown]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    right = [
        all(_numeric(r[i]) for r in table[1:]) and len(table) > 1
        for i in range(len(header))
    ]
    rule = ["-" * w for w in widths]
    lines = [header, rule, *shown]
    if total:
        lines[-1:-1] = [rule]
    for line in lines:
        padded = [
            v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(line, widths, right, strict=True)
        ]
        print("  ".join(padded).rstrip())


def _places(values: Any) -> int:
    """Decimal places that show every Decimal of a column exactly; 0 if none."""
    exponents = [
        v.normalize().as_tuple().exponent for v in values if isinstance(v, Decimal)
    ]
    places = [-e for e in exponents if isinstance(e, int)]
    return max([2, *places]) if exponents else 0


def _fixed(value: Any, places: int) -> str:
    """A Decimal padded to `places` (exact: only zeros are added), so points align."""
    return f"{value:.{places}f}" if isinstance(value, Decimal) else cell(value, "table")


def _numeric(text: str) -> bool:
    return text == "-" or text.rstrip("%").replace(".", "", 1).isdigit()
