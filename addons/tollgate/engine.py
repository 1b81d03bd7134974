"""Everything the addon needs between hooks: policy, prices, budgets, limits, ledger.

No mitmproxy objects here; `gateway.py` passes plain values in. Options arrive as an
object with the `budget_*` attributes, so tests can drive an Engine directly.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from .admission import Admission, Refusal
from .budgets import BudgetBook, ScopeBudget
from .calls import Call, to_row
from .errors import ConfigError, LedgerError
from .identity import Principal
from .ledger import Ledger
from .limits import RateLimiter
from .policy import DEFAULT_POLICY, Policy, load_policy
from .pricing import DEFAULT_PRICES, PriceTable, load_prices
from .usage import Usage

logger = logging.getLogger(__name__)
POLICY_CHECK_INTERVAL_S = 1.0


class Options(Protocol):
    budget_policy: str
    budget_db: str
    budget_prices: str
    budget_now: str
    budget_metrics_port: int
    budget_metrics_host: str


class Observer(Protocol):
    """Metrics and alerts listen to what the engine does."""

    def on_row(self, row: dict[str, Any], budgets: list[ScopeBudget]) -> None: ...

    def on_policy(self, engine: "Engine") -> None: ...

    def on_overhead(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class Engine:
    def __init__(
        self,
        *,
        policy: Policy,
        prices: PriceTable,
        ledger: Ledger,
        now: "Clock",
    ) -> None:
        self.policy = policy
        self.prices = prices
        self.ledger = ledger
        self.clock = now
        self.book = BudgetBook(policy, now.now)
        self.limiter = RateLimiter(time.monotonic)
        self.admission = Admission(policy, prices, self.book, self.limiter)
        self.observers: list[Observer] = []
        self._unpriced_logged: set[str] = set()
        self._mismatch_logged: set[str] = set()
        self._policy_mtime = _mtime(policy.source)
        self._settling_mtime = self._policy_mtime
        self._watch: asyncio.Task[None] | None = None
        self.budgets_partial = False  # spent counts only what the journal held

    @classmethod
    def from_options(cls, options: Options) -> "Engine":
        """Build from mitmproxy options; bad files raise ConfigError."""
        prices = load_prices(Path(options.budget_prices or DEFAULT_PRICES))
        policy = load_policy(Path(options.budget_policy or DEFAULT_POLICY))
        ledger = Ledger(Path(options.budget_db))
        engine = cls(
            policy=policy, prices=prices, ledger=ledger, now=Clock(options.budget_now)
        )
        engine.ledger.on_state = engine._ledger_state
        engine.ledger.start()
        engine._rebuild_budgets(wait_s=0.0 if engine.ledger.failing else 10.0)
        from .observe import attach_observers

        attach_observers(engine, options)
        logger.info(
            "tollgate: policy %s; %d prices from %s; ledger %s",
            policy.describe(),
            len(prices.entries),
            prices.source,
            options.budget_db,
        )
        return engine

    def reconfigure(self, options: Options, updated: set[str]) -> None:
        prices_path = str(options.budget_prices or DEFAULT_PRICES)
        if "budget_prices" in updated and prices_path != self.prices.source:
            self.prices = load_prices(Path(prices_path))
            self.admission.prices = self.prices
        policy_path = str(options.budget_policy or DEFAULT_POLICY)
        if "budget_policy" in updated and policy_path != self.policy.source:
            self.swap_policy(load_policy(Path(policy_path)))

    # policy reload

    def swap_policy(self, policy: Policy) -> None:
        """Use a new policy; budgets whose definition is unchanged keep their state."""
        old = {b.label: b for b in self.book.all_budgets()}
        book = BudgetBook(policy, self.clock.now)
        fresh = []
        for budgets in book.budgets.values():
            for i, budget in enumerate(budgets):
                kept = old.get(budget.label)
                if kept is not None and same_definition(kept, budget):
                    kept.thresholds = budget.thresholds
                    budgets[i] = kept
                else:
                    fresh.append(budget)
        self.policy = policy
        self.book = book
        self.admission = Admission(policy, self.prices, book, self.limiter)
        self._policy_mtime = _mtime(policy.source)
        if fresh:
            self._rebuild_budgets(only=fresh)
        for observer in self.observers:
            observer.on_policy(self)
        logger.info("tollgate: policy reloaded: %s", policy.describe())

    def _rebuild_budgets(
        self, only: list[ScopeBudget] | None = None, wait_s: float = 10.0
    ) -> None:
        """Spent per window from the ledger, its journal and rows not yet written.

        When DuckDB cannot be read, spent counts what the journal and memory hold and
        is rebuilt again (by the background task) once the ledger is back.
        """
        starts = self.book.window_starts()
        since = starts[0] if starts else self.clock.now()
        try:
            rows = self.ledger.rows_since(starts, wait_s=wait_s)
        except LedgerError as e:
            rows = self.ledger.unstored_rows_since(since)
            if not self.budgets_partial:
                logger.error(
                    "tollgate: the ledger cannot be read (%s); budgets count only the"
                    " %d calls in its journal and memory until it can, then are"
                    " rebuilt",
                    str(e).splitlines()[0],
                    len(rows),
                )
            self.budgets_partial = True
        else:
            if self.budgets_partial:
                logger.info("tollgate: ledger readable again; budgets rebuilt from it")
            self.budgets_partial = False
        scratch = BudgetBook(self.policy, self.clock.now)
        scratch.load(rows)
        totals = {b.label: b.spent for b in scratch.all_budgets()}
        for budget in self.book.all_budgets() if only is None else only:
            budget.spent = totals.get(budget.label, Decimal(0))

    def start_background(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policy())

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(POLICY_CHECK_INTERVAL_S)
            if self.budgets_partial and not self.ledger.failing:
                self._rebuild_budgets(wait_s=0.5)
            mtime = _mtime(self.policy.source)
            if mtime == self._policy_mtime:
                continue
            if mtime != self._settling_mtime:
                self._settling_mtime = mtime  # read it once it holds still
                continue
            self._policy_mtime = mtime
            try:
                policy = await asyncio.to_thread(load_policy, Path(self.policy.source))
            except ConfigError as e:
                logger.error(
                    "tollgate: policy edit rejected, the last good policy"
                    " stays in force:\n%s",
                    e,
                )
                continue
            self.swap_policy(policy)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.ledger.close()
        for observer in self.observers:
            observer.close()

    def observe_overhead(self, seconds: float) -> None:
        """Time the gateway's own hooks took for one call."""
        for observer in self.observers:
            observer.on_overhead(seconds)

    # calls

    def wall_time(self, epoch_s: float) -> datetime:
        return self.clock.at(epoch_s)

    def admit(
        self, call: Call, principal: Principal, body_bytes: int
    ) -> Refusal | None:
        if self.policy.on_ledger_error == "fail_closed" and not self.ledger.healthy:
            call.principal = principal
            return Refusal(
                503,
                "ledger",
                "Tollgate: the spend ledger cannot be written and the"
                " policy says fail_closed - calls resume when it is back",
            )
        return self.admission.admit(call, principal, body_bytes)

    def limits_apply(self) -> bool:
        """True when the policy limits anyone or holds provider keys.

        Then a call the gateway cannot understand or meter must not pass.
        """
        p = self.policy
        return bool(
            p.org
            or p.default_limits
            or p.teams
            or p.users
            or p.keys
            or p.tags
            or p.provider_keys
            or p.unknown_callers == "refuse"
        )

    def unreadable_body(self, call: Call) -> Refusal | None:
        """A body that is not JSON: harmless unless a limit would need its facts."""
        if self.limits_apply():
            return Refusal(
                400, "body", "Tollgate: the request body is not a JSON object"
            )
        return None

    def missing_provider_key(self, call: Call) -> Refusal:
        provider = call.route.provider
        return Refusal(
            503,
            "config",
            f"Tollgate has no API key for {provider}: set"
            f" providers.{provider}.api_key in the policy",
        )

    def refused(self, call: Call, refusal: Refusal) -> None:
        """Record a refusal; a reservation the call already holds is released."""
        if call.budgets:
            self.book.settle(call.budgets, call.reserved, Decimal(0), call.started)
            call.budgets, call.reserved = [], Decimal(0)
        row = to_row(
            call,
            usage=None,
            cost=Decimal(0),
            status=refusal.status,
            outcome="blocked",
            reason=refusal.reason,
            response_model=None,
            ended_s=time.time(),
        )
        self._record(row, [])
        logger.debug("tollgate: refused %s (%s)", call.id, refusal.reason)

    def settle(
        self,
        call: Call,
        usage: Usage | None,
        status: int,
        outcome: str,
        reason: str | None,
        response_model: str | None,
    ) -> None:
        """Price the call, swap its reservation for the cost, record it."""
        if response_model and call.route.billable:
            self._price_as_answered(call, response_model)
        cost = Decimal(0)
        if usage is not None and call.price is not None:
            cost = self.prices.cost(call.price, usage)
        elif usage is not None and call.route.billable:
            self._log_unpriced(call.facts.model or response_model)
            reason = reason or "unpriced model"
        changed = self.book.settle(call.budgets, call.reserved, cost, call.started)
        if call.rate_scopes and usage is not None:
            self.limiter.correct_tokens(
                call.rate_scopes, usage.total_tokens - call.estimated_input
            )
        row = to_row(
            call,
            usage=usage,
            cost=cost,
            status=status,
            outcome=outcome,
            reason=reason,
            response_model=response_model,
            ended_s=time.time(),
        )
        self._record(row, changed)

    def _record(self, row: dict[str, Any], changed: list[ScopeBudget]) -> None:
        self.ledger.append(row)
        for observer in self.observers:
            try:
                observer.on_row(row, changed)
            except Exception:  # metrics or alerts must never cost a recorded call
                logger.exception(
                    "tollgate: %s failed on a ledger row", type(observer).__name__
                )

    def _price_as_answered(self, call: Call, response_model: str) -> None:
        """Price by the model the provider says it ran, when that has a price.

        A request that named one model while another answered is charged for the
        one that answered, whatever spelling tricks the request used.
        """
        answered = self.prices.resolve(response_model)
        if answered is None:
            return
        if call.price is not None and answered.key == call.price.key:
            return
        if call.price is not None:
            pair = f"{call.price.key}->{answered.key}"
            if pair not in self._mismatch_logged and len(self._mismatch_logged) < 1000:
                self._mismatch_logged.add(pair)
                logger.warning(
                    "tollgate: a call for %r was answered by %r; such calls"
                    " are priced as the model that answered",
                    call.price.key,
                    answered.key,
                )
        call.price = answered

    def _log_unpriced(self, model: str | None) -> None:
        name = model or "(none)"
        if name not in self._unpriced_logged and len(self._unpriced_logged) < 1000:
            self._unpriced_logged.add(name)
            logger.warning(
                "tollgate: no price for model %r; its calls are recorded"
                " with cost 0 and reason 'unpriced model'",
                name,
            )

    def _ledger_state(self, store: str, ok: bool, reason: str) -> None:
        """Say once what broke (or healed) and what the gateway does about it."""
        path = self.ledger.path if store == "ledger" else self.ledger.journal_path
        if ok:
            other = "" if self.ledger.healthy else " (the other store is still down)"
            logger.info(
                "tollgate: %s %s is writable again; spooled calls are written to it%s",
                store,
                path,
                other,
            )
            return
        if store == "ledger":
            kept = f"kept in {self.ledger.journal_path} and memory and written"
        else:
            kept = "kept in memory only (a crash now loses them) and written"
        if self.policy.on_ledger_error == "fail_closed":
            doing = (
                "on_ledger_error is fail_closed, so calls are refused with 503"
                " until it is back"
            )
        else:
            doing = (
                "on_ledger_error is keep_serving, so calls go on and budgets are"
                " enforced from memory"
            )
        first = reason.splitlines()[0] if reason else "unknown error"
        logger.error(
            "tollgate: cannot write the %s %s (%s); %s; finished calls are"
            " %s when it is back",
            store,
            path,
            first,
            doing,
            kept,
        )


def same_definition(a: ScopeBudget, b: ScopeBudget) -> bool:
    return (a.limit, a.duration, a.model_pattern) == (
        b.limit,
        b.duration,
        b.model_pattern,
    )


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


class Clock:
    """Wall time for budget windows; optionally shifted to start at `start`."""

    def __init__(self, start: str = "") -> None:
        self.offset = timedelta(0)
        if start:
            try:
                target = datetime.fromisoformat(start)
            except ValueError:
                raise ConfigError(
                    f"budget_now: expected an ISO 8601 time, got {start!r}"
                ) from None
            if target.tzinfo is None:
                raise ConfigError(
                    f"budget_now: {start!r} needs a UTC offset, e.g. +00:00"
                )
            self.offset = target - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def at(self, epoch_s: float) -> datetime:
        return datetime.fromtimestamp(epoch_s, UTC) + self.offset
