"""The decision before a call goes upstream: identity, model, budgets, rate limits.

Every check runs before a token is spent; the first that says no becomes a Refusal
with the status agents handle best and a message naming the limit and its reset.
"""

from dataclasses import dataclass
from decimal import Decimal

from .budgets import BudgetBook, BudgetRefusal, Member
from .calls import Call, estimate_input_tokens
from .identity import Principal
from .limits import RateLimiter, RateRefusal
from .modelmatch import allowed
from .policy import Policy
from .pricing import PriceTable
from .usage import MAX_COUNT as MAX_TOKENS
from .usage import Usage

CENT = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str  # auth | body | model | unpriced | budget | rpm | tpm | ledger
    message: str
    retry_after_s: int | None = None


def usd(amount: Decimal) -> str:
    return f"${amount.quantize(CENT)}"


class Admission:
    def __init__(
        self, policy: Policy, prices: PriceTable, book: BudgetBook, limiter: RateLimiter
    ) -> None:
        self.policy = policy
        self.prices = prices
        self.book = book
        self.limiter = limiter

    def admit(
        self, call: Call, principal: Principal, body_bytes: int
    ) -> Refusal | None:
        """Check the call; on success its budgets hold a reservation."""
        call.principal = principal
        if principal.refusal is not None:
            return Refusal(401, "auth", f"Tollgate: {principal.refusal}")
        model = call.facts.model
        if model and model == call.route.path_model and call.route.provider == "openai":
            model = call.facts.model = self.policy.azure_deployments.get(model, model)
        call.price = self.prices.resolve(model) if model else None
        if not call.route.billable:
            return None

        levels = principal.levels(self.policy)
        for level in reversed(levels):  # name the narrowest level that says no
            if not allowed(level.models, model):
                named = f"model {model!r}" if model else "a request naming no model"
                return Refusal(
                    400,
                    "model",
                    f"Tollgate: {named} is not allowed for {level.kind}"
                    f" {level.name!r} - allowed: {', '.join(level.models or ())}",
                )

        member = Member(
            user=principal.user,
            team=principal.team,
            key_alias=principal.key_alias,
            tags=call.tags,
            model=call.price.key if call.price else model,
            unknown_key=principal.fingerprint if principal.user is None else None,
        )
        budgets = self.book.budgets_for(member)
        if budgets and call.price is None and not self.policy.allow_unpriced_models:
            return Refusal(
                400,
                "unpriced",
                f"Tollgate: model {model!r} has no price, and calls under a budget"
                " need one - add it to the price table or set allow_unpriced_models",
            )

        call.estimated_input = estimate_input_tokens(
            body_bytes, self.policy.bytes_per_token
        )
        rates = [
            (level_label(level.kind, level.name), level.rpm_limit, level.tpm_limit)
            for level in levels
            if level.rpm_limit is not None or level.tpm_limit is not None
        ]
        if rates:
            refused = self.limiter.admit(rates, call.estimated_input)
            if refused is not None:
                return rate_refusal(refused)
            call.rate_scopes = [scope for scope, _, tpm in rates if tpm is not None]

        amount = self.worst_case(call)
        over = self.book.admit(budgets, amount)
        if over is not None:
            return budget_refusal(over)
        call.budgets = budgets
        call.reserved = amount
        return None

    def worst_case(self, call: Call) -> Decimal:
        """The most this call can cost: estimated input plus all its output tokens."""
        if call.price is None:
            return Decimal(0)
        limit = call.facts.max_output_tokens or self.policy.default_max_output_tokens
        output = min(limit * call.facts.choices, MAX_TOKENS)
        usage = Usage(input_tokens=call.estimated_input, output_tokens=output)
        return self.prices.cost(call.price, usage)


def level_label(kind: str, name: str) -> str:
    return "org" if kind == "org" else f"{kind}:{name}"


def rate_refusal(refused: RateRefusal) -> Refusal:
    unit = "requests" if refused.kind == "rpm" else "tokens"
    return Refusal(
        429,
        refused.kind,
        f"Tollgate: {refused.kind} limit of {refused.scope} reached:"
        f" {refused.used} of {refused.limit} {unit} in the last 60 s;"
        f" retry in {refused.retry_after_s} s",
        retry_after_s=refused.retry_after_s,
    )


def budget_refusal(over: BudgetRefusal) -> Refusal:
    budget = over.budget
    reset = budget.window_end.isoformat() if budget.window_end else "unknown"
    scope = budget.label if budget.label != "org" else "the organisation"
    in_flight = f" (+{usd(budget.reserved)} in flight)" if budget.reserved else ""
    return Refusal(
        402,
        "budget",
        f"Tollgate: budget of {scope} exhausted: spent {usd(budget.spent)}{in_flight}"
        f" of {usd(budget.limit)} this {budget.duration} window; this call may cost"
        f" up to {usd(over.needed)}; resets {reset}",
    )
