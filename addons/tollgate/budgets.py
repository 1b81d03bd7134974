"""Budget windows per scope: spent (derived from the ledger), reserved, admission.

A call belongs to scopes (org, its team, user, key, tags, and per-model budgets of
those); it is admitted only when every scope with a limit has room for the call's
worst-case cost, which is then reserved until the real cost replaces it. Spend is a
cache of ledger sums since each window's start: nothing is ever reset by a job.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from .modelmatch import model_matches
from .policy import Limits, Policy
from .windows import Duration

ZERO = Decimal(0)


@dataclass(slots=True)
class ScopeBudget:
    """One budget: a level of the policy, optionally narrowed to a model pattern."""

    label: str
    kind: str
    name: str
    limit: Decimal
    duration: Duration
    thresholds: tuple[Decimal, ...]
    model_pattern: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    spent: Decimal = ZERO
    reserved: Decimal = ZERO
    fired: set[Decimal] = field(default_factory=set)

    def roll(self, now: datetime, policy: Policy) -> None:
        if self.window_end is None or now >= self.window_end:
            self.window_start, self.window_end = self.duration.bounds(
                now, policy.timezone
            )
            self.spent = ZERO
            self.fired = set()


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    budget: ScopeBudget
    needed: Decimal


@dataclass(frozen=True, slots=True)
class Member:
    """What a call or a ledger row is, for deciding which scopes it belongs to."""

    user: str | None
    team: str | None
    key_alias: str | None
    tags: tuple[str, ...]
    model: str | None
    unknown_key: str | None = None


class BudgetBook:
    """Every budget of a policy and its current window."""

    def __init__(self, policy: Policy, now: Callable[[], datetime]) -> None:
        self.policy = policy
        self.now = now
        self.budgets: dict[str, list[ScopeBudget]] = {}
        if policy.org:
            self._add(policy.org, "org")
        for name, limits in policy.teams.items():
            self._add(limits, f"team:{name}")
        for name, user in policy.users.items():
            self._add(user.limits, f"user:{name}")
        for key in policy.keys.values():
            self._add(key.limits, f"key:{key.key_alias}")
        for name, limits in policy.tags.items():
            self._add(limits, f"tag:{name}")

    def _add(self, limits: Limits, label: str) -> None:
        found = self.budgets.setdefault(label, [])
        if limits.max_budget is not None:
            found.append(self._budget(limits, label, limits.max_budget, None))
        for pattern, amount in limits.model_max_budget:
            found.append(
                self._budget(limits, f"{label}/model:{pattern}", amount, pattern)
            )

    def _budget(
        self, limits: Limits, label: str, amount: Decimal, pattern: str | None
    ) -> ScopeBudget:
        return ScopeBudget(
            label=label,
            kind=limits.kind,
            name=limits.name,
            limit=amount,
            duration=limits.budget_duration,
            thresholds=limits.alert_thresholds,
            model_pattern=pattern,
        )

    def scope_labels(self, member: Member) -> list[str]:
        labels = ["org"]
        if member.team:
            labels.append(f"team:{member.team}")
        if member.user:
            labels.append(f"user:{member.user}")
        elif member.unknown_key:
            labels.append(f"unknown:{member.unknown_key}")
        if member.key_alias:
            labels.append(f"key:{member.key_alias}")
        labels += [f"tag:{t}" for t in member.tags]
        return labels

    def budgets_for(self, member: Member) -> list[ScopeBudget]:
        """The budgets a call or row counts against, windows rolled to now."""
        now = self.now()
        if member.unknown_key and self.policy.default_limits is not None:
            label = f"unknown:{member.unknown_key}"
            if label not in self.budgets:
                self._add(self.policy.default_limits, label)
        found = []
        for label in self.scope_labels(member):
            for budget in self.budgets.get(label, ()):
                if budget.model_pattern and not model_matches(
                    budget.model_pattern, member.model
                ):
                    continue
                budget.roll(now, self.policy)
                found.append(budget)
        return found

    def admit(
        self, budgets: list[ScopeBudget], amount: Decimal
    ) -> BudgetRefusal | None:
        """Reserve `amount` in every budget, or refuse naming the first without room."""
        for budget in budgets:
            if budget.spent >= budget.limit or (
                budget.spent + budget.reserved + amount > budget.limit
            ):
                return BudgetRefusal(budget, amount)
        for budget in budgets:
            budget.reserved += amount
        return None

    def settle(
        self, budgets: list[ScopeBudget], reserved: Decimal, cost: Decimal, ts: datetime
    ) -> list[ScopeBudget]:
        """Swap a reservation for the real cost; returns budgets that gained spend."""
        changed = []
        for budget in budgets:
            budget.reserved = max(budget.reserved - reserved, ZERO)
            if cost and budget.window_start is not None and ts >= budget.window_start:
                budget.spent += cost
                changed.append(budget)
        return changed

    def load(self, rows: Iterable[dict[str, Any]]) -> int:
        """Add ledger rows' costs to the windows they fall in; returns rows counted."""
        counted = 0
        for row in rows:
            cost = Decimal(str(row.get("cost_usd") or 0))
            ts = row["ts"]
            if not cost or ts is None:
                continue
            member = member_of_row(row)
            for budget in self.budgets_for(member):
                if budget.window_start is not None and ts >= budget.window_start:
                    budget.spent += cost
            counted += 1
        return counted

    def all_budgets(self) -> list[ScopeBudget]:
        now = self.now()
        found = [b for budgets in self.budgets.values() for b in budgets]
        for budget in found:
            budget.roll(now, self.policy)
        return found

    def earliest_window_start(self) -> datetime:
        starts = self.window_starts()
        return starts[0] if starts else self.now()

    def window_starts(self) -> list[datetime]:
        """The distinct starts of the budgets' current windows, earliest first."""
        return sorted({b.window_start for b in self.all_budgets() if b.window_start})


def member_of_row(row: dict[str, Any]) -> Member:
    user = row.get("user_id")
    return Member(
        user=user,
        team=row.get("team"),
        key_alias=row.get("key_alias"),
        tags=tuple(row.get("tags") or ()),
        model=row.get("price_model") or row.get("model"),
        unknown_key=None if user else row.get("key_fingerprint"),
    )
