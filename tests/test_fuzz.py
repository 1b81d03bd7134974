"""Property-based tests: odd input through the real addon hooks never breaks a rule.

Request bodies, credentials, hosts and paths; response bodies and SSE streams cut
anywhere, garbled or compressed oddly; usage objects with missing, negative, huge
or wrongly typed numbers. For each: no exception leaves a hook, a call is either
passed or refused with a known reason (never "internal"), no cost is negative,
streamed bytes reach the client unchanged and no reservation outlives its call.
Run with `--hypothesis-show-statistics` to see how many cases were tried.
"""

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from tollgate.gateway import CALL, BudgetGuard
from tollgate.identity import fingerprint
from tollgate.meter import StreamMeter
from tollgate.pricing import DEFAULT_PRICES, load_prices
from tollgate.providers import anthropic, gemini, openai, stream_reader
from tollgate.providers.base import Route
from tollgate.requestcheck import lenient_count, load_object

FIXTURES = Path(__file__).parent / "fixtures"
FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HOOK_FUZZ = settings(FUZZ, max_examples=1500)
KEY = "tg-fuzz-bob"
POLICY = f"""version: 1
timezone: UTC
unknown_callers: allow
allow_unpriced_models: false
providers: {{anthropic: {{api_key: sk-real-fuzz}}, openai: {{api_key: sk-real-fuzz}}}}
org: {{max_budget: 1000000}}
default_budget: {{max_budget: 100000}}
users:
  bob: {{max_budget: 100000, models: ["claude-*", "gpt-*", "gemini-*"]}}
keys:
  - {{key_alias: bob-key, user: bob, key_sha256: {fingerprint(KEY)}}}
"""
REASONS = {
    "auth",
    "body",
    "model",
    "unpriced",
    "budget",
    "rpm",
    "tpm",
    "ledger",
    "config",
    "unmetered",
    "stopping",
}
STREAMS = {
    "anthropic": [
        "anthropic-messages-stream-basic.sse",
        "anthropic-messages-stream-cache.sse",
        "anthropic-messages-stream-error-midstream.sse",
    ],
    "openai": [
        "openai-chat-stream-include-usage.sse",
        "openai-responses-stream-text.sse",
        "openai-responses-stream-error-failed.sse",
    ],
    "gemini": [
        "gemini-streamgeneratecontent-basic.sse",
        "gemini-streamgeneratecontent-functioncall.sse",
    ],
}
PATHS = {
    "anthropic": [
        "/v1/messages",
        "/v1/messages?beta=true",
        "/v1/messages/count_tokens",
        "/v1/messages/batches",
        "/v1/models",
        "/v1/complete",
    ],
    "openai": [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/openai/deployments/gpt4o/chat/completions",
        "/v1/images/generations",
        "/v1/realtime?model=x",
        "/v1/files",
    ],
    "gemini": [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.5-pro%2Fx:countTokens",
        "/v1beta/cachedContents",
    ],
}
HOSTS = {
    "anthropic": "api.anthropic.com",
    "openai": "api.openai.com",
    "gemini": "generativelanguage.googleapis.com",
}

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.just("64000"),
    st.just("1e5"),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=12,
)
models = st.one_of(
    st.sampled_from(
        [
            "claude-sonnet-4-5",
            "claude-opus-4-1",
            "gpt-4.1",
            "gemini-2.5-flash",
            " claude-haiku-4-5",
            "claude\u2010haiku-4-5",
            "CLAUDE-SONNET-4-5",
            "anthropic/claude-sonnet-4-5",
            "gpt-4o%2D",
            "\ud800",
        ]
    ),
    st.text(max_size=40),
    numbers,
    st.lists(st.text(max_size=5), max_size=2),
)
request_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": models, "messages": st.just([{"role": "user", "content": "hi"}])},
        optional={
            "max_tokens": numbers,
            "stream": st.one_of(st.booleans(), numbers),
            "max_output_tokens": numbers,
            "metadata": json_values,
            "stream_options": json_values,
            "generationConfig": st.dictionaries(
                st.sampled_from(["maxOutputTokens", "max_output_tokens"]), numbers
            ),
        },
    ).map(lambda d: json.dumps(d).encode()),
    st.tuples(st.sampled_from(["model", "max_tokens", "stream"]), models, models).map(
        lambda t: (
            f'{{"{t[0]}": {json.dumps(t[1])}, "{t[0]}": {json.dumps(t[2])}}}'.encode()
        )
    ),
)
credentials = st.sampled_from(
    [
        {},
        {"x-api-key": KEY},
        {"authorization": f"Bearer {KEY}"},
        {"x-api-key": "tg-nope"},
        {"x-api-key": "sk-raw-key"},
        {"authorization": "Basic Ym9iOnRn"},
        {"x-goog-api-key": KEY},
        {"api-key": KEY},
        {"x-api-key": f"{KEY}, {KEY}"},
    ]
)
encodings = st.sampled_from(
    [None, "gzip", "br", "zstd", "deflate", "identity", "x-odd", "gzip, br"]
)


class RowSpy:
    """An engine observer that keeps every ledger row."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_row(self, row: dict[str, Any], budgets: list[Any]) -> None:
        self.rows.append(row)

    def on_policy(self, engine: Any) -> None: ...

    def on_overhead(self, seconds: float) -> None: ...

    def close(self) -> None: ...


@pytest.fixture(scope="module")
def guard(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BudgetGuard, RowSpy]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "policy.yaml").write_text(POLICY)
    addon = BudgetGuard()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(
            addon,
            budget_db=str(tmp / "spend.duckdb"),
            budget_metrics_port=0,
            budget_policy=str(tmp / "policy.yaml"),
        )
        assert addon.engine is not None
        spy = RowSpy()
        addon.engine.observers.append(spy)
        yield addon, spy
        asyncio.run(addon.done())


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def encode(data: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    return data  # other encodings: the bytes lie about their encoding


def check_rows(spy: RowSpy, before: int) -> None:
    for row in spy.rows[before:]:
        cost = Decimal(row["cost_usd"])
        assert cost.is_finite() and cost >= 0
        assert all(row[n] >= 0 for n in ("input_tokens", "output_tokens", "latency_ms"))
        if row["outcome"] == "blocked":
            assert row["reason"] in REASONS


@HOOK_FUZZ
@given(
    provider=st.sampled_from(sorted(HOSTS)),
    data=st.data(),
    body=request_bodies,
    creds=credentials,
    request_encoding=st.sampled_from([None, "gzip", "x-odd"]),
    response_encoding=encodings,
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    ending=st.sampled_from(["response", "error"]),
)
def test_hooks_pass_or_refuse_by_rule_when_input_is_odd(
    guard: tuple[BudgetGuard, RowSpy],
    provider: str,
    data: st.DataObject,
    body: bytes,
    creds: dict[str, str],
    request_encoding: str | None,
    response_encoding: str | None,
    cuts: list[int],
    ending: str,
) -> None:
    addon, spy = guard
    engine = addon.engine
    assert engine is not None
    addon._inflight.clear()  # an earlier failing example must not fail this one
    before = len(spy.rows)
    held = sum(b.reserved for b in engine.book.all_budgets())
    path = data.draw(st.sampled_from(PATHS[provider]))
    headers = {"content-type": "application/json", **creds}
    if request_encoding:
        headers["content-encoding"] = request_encoding
    flow = tflow.tflow(
        req=tutils.treq(
            host=HOSTS[provider],
            port=443,
            scheme=b"https",
            path=path.encode(),
            headers=http.Headers(
                **{k.replace("-", "_"): v for k, v in headers.items()}
            ),
            content=encode(body, request_encoding),
        )
    )
    flow.request.timestamp_start = time.time()

    addon.requestheaders(flow)
    addon.request(flow)
    if flow.response is not None and flow.metadata.get(CALL) is not None:
        reason = flow.response.headers.get("x-tollgate-refusal")
        assert reason in REASONS, flow.response.content
        event(f"refused: {reason}")
        addon.response(flow)  # mitmproxy answers a refusal through the response hook
    else:
        event("passed" if flow.metadata.get(CALL) else "not an LLM call")
        stream = data.draw(st.sampled_from(STREAMS[provider]))
        raw = data.draw(
            st.one_of(
                st.just((FIXTURES / stream).read_bytes()),
                st.binary(max_size=300),
                json_values.map(
                    lambda v: json.dumps({"usage": v, "usageMetadata": v}).encode()
                ),
            )
        )
        sse = data.draw(st.booleans())
        response_headers = {
            "content-type": "text/event-stream" if sse else "application/json"
        }
        if response_encoding:
            response_headers["content-encoding"] = response_encoding
        flow.response = tutils.tresp(
            headers=http.Headers(
                **{k.replace("-", "_"): v for k, v in response_headers.items()}
            ),
            content=b"" if sse else raw,
        )
        addon.responseheaders(flow)
        meter = flow.response.stream
        if callable(meter):
            assert isinstance(meter, StreamMeter)
            out = [meter(piece) for piece in split(raw, cuts)]
            if ending != "error":
                out.append(meter(b""))
            if not meter._drop:
                assert b"".join(out) == raw
            event("streamed")
        if ending == "error":
            flow.error = flow.error or tflow.terr("Client disconnected.")
            addon.error(flow)
        else:
            addon.response(flow)
    check_rows(spy, before)
    assert sum(b.reserved for b in engine.book.all_budgets()) == held
    assert addon._inflight == {}


ROUTES = {
    "anthropic": Route("anthropic", "messages"),
    "openai-chat": Route("openai", "chat"),
    "openai-responses": Route("openai", "responses"),
    "gemini": Route("gemini", "stream_generate"),
}
FILES = {
    "anthropic": STREAMS["anthropic"] + ["anthropic-messages-stream-websearch.sse"],
    "openai-chat": [
        "openai-chat-stream-include-usage.sse",
        "openai-chat-stream-no-usage.sse",
    ],
    "openai-responses": [
        "openai-responses-stream-docs.sse",
        "openai-responses-stream-toolcall-reasoning.sse",
    ],
    "gemini": STREAMS["gemini"],
}
CASES = [(route, name) for route, names in FILES.items() for name in names]


def counts_of(usage: Any) -> tuple[int, ...]:
    """Every count a Usage holds."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.reasoning_tokens,
        usage.web_search_requests,
    )


def metered(route: str, pieces: list[bytes]) -> tuple[bytes, Any, Any]:
    meter = StreamMeter(stream_reader(ROUTES[route]), content_encoding=None)
    out = b"".join(meter(p) for p in [*pieces, b""])
    reader = meter.reader
    return out, reader.usage, (reader.model, reader.complete, reader.error)


@pytest.mark.parametrize(("route", "name"), CASES, ids=[n for _, n in CASES])
def test_stream_usage_same_when_cut_at_every_byte(route: str, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    whole = metered(route, [data])
    assert whole[0] == data
    for i in range(len(data) + 1):
        assert metered(route, [data[:i], data[i:]]) == whole, i


@FUZZ
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(0, 10**5), max_size=40))
def test_stream_usage_same_when_cut_anywhere_many_times(
    case: tuple[str, str], cuts: list[int]
) -> None:
    route, name = case
    data = (FIXTURES / name).read_bytes()
    assert metered(route, split(data, cuts)) == metered(route, [data])


@FUZZ
@given(
    case=st.sampled_from(CASES),
    edits=st.lists(st.tuples(st.integers(0, 10**5), st.binary(max_size=8)), max_size=6),
    cuts=st.lists(st.integers(0, 10**5), max_size=8),
    encoding=encodings,
)
def test_meter_passes_bytes_and_counts_nothing_negative_when_stream_garbled(
    case: tuple[str, str],
    edits: list[tuple[int, bytes]],
    cuts: list[int],
    encoding: str | None,
) -> None:
    route, name = case
    data = bytearray((FIXTURES / name).read_bytes())
    for at, junk in edits:
        data[at % (len(data) + 1) : at % (len(data) + 1) + len(junk)] = junk
    meter = StreamMeter(stream_reader(ROUTES[route]), content_encoding=encoding)
    out = b"".join(meter(p) for p in [*split(bytes(data), cuts), b""])
    assert out == bytes(data)
    usage = meter.reader.usage
    if usage is not None:
        assert min(counts_of(usage)) >= 0


PRICES = load_prices(Path(DEFAULT_PRICES))
ENTRIES = [PRICES.entries[k] for k in sorted(PRICES.entries)]
usage_keys = st.sampled_from(
    [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation",
        "server_tool_use",
        "output_tokens_details",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "promptTokenCount",
        "candidatesTokenCount",
        "cachedContentTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
    ]
)
usage_objects = st.dictionaries(usage_keys, st.one_of(numbers, json_values), max_size=8)


@FUZZ
@given(raw=st.one_of(usage_objects, json_values), entry=st.sampled_from(ENTRIES))
def test_usage_counts_and_costs_never_negative_when_numbers_are_odd(
    raw: Any, entry: Any
) -> None:
    found = [anthropic.usage_from(raw), openai.usage_from(raw), gemini.usage_from(raw)]
    for usage in found:
        if usage is None:
            continue
        counts = counts_of(usage)
        assert all(isinstance(c, int) and 0 <= c <= 10**12 for c in counts)
        cost = PRICES.cost(entry, usage)
        assert cost.is_finite() and 0 <= cost < Decimal(10) ** 10


def reference_repeats(text: str) -> list[str]:
    found: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        found.append([k for i, k in enumerate(keys) if k in keys[:i]])
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return list(dict.fromkeys(found[-1])) if found else []


@FUZZ
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["model", "max_tokens", "a", "mod\u0065l", "é"]),
            json_values,
        ),
        max_size=6,
    ),
    spaces=st.sampled_from(["", " ", "\n\t "]),
)
def test_repeated_keys_found_like_a_strict_parser_when_body_repeats_keys(
    pairs: list[tuple[str, Any]], spaces: str
) -> None:
    members = [f"{json.dumps(k)}{spaces}:{spaces}{json.dumps(v)}" for k, v in pairs]
    text = f"{spaces}{{{spaces}{(',' + spaces).join(members)}{spaces}}}{spaces}"
    assert load_object(text)[1] == reference_repeats(text)


@FUZZ
@given(value=st.one_of(numbers, json_values))
def test_lenient_count_is_a_bounded_count_or_none_when_value_is_anything(
    value: Any,
) -> None:
    found = lenient_count(value)
    assert found is None or (isinstance(found, int) and 0 <= found <= 10**12)
