"""One metered call from admission to its ledger row; no mitmproxy here."""

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from .budgets import ScopeBudget
from .identity import Principal
from .meter import StreamMeter
from .pricing import PriceEntry
from .providers.base import RequestFacts, Route
from .usage import Usage

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+=-]{0,63}$")
MAX_TAGS = 16


@dataclass(slots=True)
class Call:
    route: Route
    started: datetime
    started_s: float
    agent: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    facts: RequestFacts = field(default_factory=RequestFacts)
    principal: Principal | None = None
    session: str | None = None
    tags: tuple[str, ...] = ()
    price: PriceEntry | None = None
    budgets: list[ScopeBudget] = field(default_factory=list)
    reserved: Decimal = Decimal(0)
    rate_scopes: list[str] = field(default_factory=list)
    estimated_input: int = 0
    meter: StreamMeter | None = None
    recorded: bool = False
    overhead_s: float = 0.0


def clean_tags(values: list[str]) -> tuple[str, ...]:
    """Trimmed, de-duplicated tags of a safe shape; at most MAX_TAGS."""
    found: list[str] = []
    for value in values:
        tag = value.strip()
        if _TAG.match(tag) and tag not in found:
            found.append(tag)
    return tuple(found[:MAX_TAGS])


def estimate_input_tokens(body_bytes: int, bytes_per_token: int) -> int:
    return math.ceil(body_bytes / bytes_per_token)


def estimate_stream_usage(call: Call, known: Usage | None, body_bytes: int) -> Usage:
    """Usage of a stream that ended early: what was reported, plus output from text."""
    usage = (
        known if known is not None else Usage(input_tokens=math.ceil(body_bytes / 4))
    )
    if call.meter is not None:
        from_text = math.ceil(call.meter.reader.text_chars / 4)
        usage.output_tokens = max(usage.output_tokens, from_text)
    usage.estimated = True
    return usage


def to_row(
    call: Call,
    *,
    usage: Usage | None,
    cost: Decimal,
    status: int,
    outcome: str,
    reason: str | None,
    response_model: str | None,
    ended_s: float,
) -> dict[str, Any]:
    """The ledger row of a finished call (never prompt or completion text)."""
    principal = call.principal
    usage = usage or Usage()
    ttft = None
    if call.meter is not None and call.meter.first_byte_at is not None:
        ttft = round((call.meter.first_byte_at - call.started_s) * 1000)
    return {
        "id": call.id,
        "ts": call.started.isoformat(),
        "provider": call.route.provider,
        "endpoint": call.route.endpoint,
        "model": call.facts.model,
        "price_model": call.price.key if call.price else None,
        "response_model": response_model,
        "user_id": principal.user if principal else None,
        "team": principal.team if principal else None,
        "key_alias": principal.key_alias if principal else None,
        "key_fingerprint": principal.fingerprint if principal else None,
        "tags": list(call.tags),
        "session": call.session,
        "agent": call.agent,
        "streamed": call.facts.stream,
        "status": status,
        "outcome": outcome,
        "reason": reason,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "web_search_requests": usage.web_search_requests,
        "cost_usd": str(cost),
        "usage_estimated": usage.estimated,
        "latency_ms": max(round((ended_s - call.started_s) * 1000), 0),
        "ttft_ms": ttft,
    }
