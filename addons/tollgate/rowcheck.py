"""Fit a ledger row to the column types of `schema.py`, keeping what fits.

A value DuckDB would refuse (an integer out of range, text where a number belongs)
becomes NULL, so the row, its id and its cost still reach the ledger. A cost that
is not a finite, non-negative amount within the column becomes 0.
"""

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .schema import COLUMNS

INT_RANGES = {"INTEGER": 2**31, "BIGINT": 2**63}
MAX_COST = Decimal(10) ** 10  # DECIMAL(20,10)
MAX_TEXT = 10_000


def fit_row(row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The row with every value of the wrong shape replaced; and those columns."""
    fixed = dict(row)
    changed = []
    for name, kind in COLUMNS:
        value = row.get(name)
        if value is None or name == "id":
            continue
        fitted = _fit(kind, value)
        if fitted is not value:
            fixed[name] = fitted
            changed.append(name)
    return fixed, changed


def _fit(kind: str, value: Any) -> Any:
    if kind in INT_RANGES:
        limit = INT_RANGES[kind]
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok and -limit <= value < limit else None
    if kind == "BOOLEAN":
        return value if isinstance(value, bool) else None
    if kind == "VARCHAR":
        return _text(value) if isinstance(value, str) else None
    if kind == "VARCHAR[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        texts = [_text(v) for v in value]
        changed = any(t is not v for t, v in zip(texts, value, strict=True))
        return [t for t in texts if t is not None] if changed else value
    if kind == "TIMESTAMPTZ":
        return value if _is_time(value) else None
    if kind.startswith("DECIMAL"):
        return value if _is_cost(value) else "0"
    return value


def _text(value: str) -> str | None:
    """`value` itself when DuckDB takes it; lone surrogates become `?`."""
    if len(value) > MAX_TEXT:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _is_time(value: Any) -> bool:
    if isinstance(value, datetime):
        return value.tzinfo is not None
    try:
        return datetime.fromisoformat(str(value)).tzinfo is not None
    except ValueError:
        return False


def _is_cost(value: Any) -> bool:
    try:
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return False
    return cost.is_finite() and 0 <= cost < MAX_COST
