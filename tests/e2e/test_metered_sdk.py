"""The official SDKs through a real mitmdump, reverse and forward mode: exact rows."""

import uuid
from decimal import Decimal
from typing import Any

import pytest

from harness import TOKENS, Gateway, run_sdk, wait_rows

from .conftest import usage_header

pytestmark = pytest.mark.e2e


def tagged(**counts: int) -> tuple[str, dict[str, str]]:
    tag = f"test:{uuid.uuid4().hex[:10]}"
    return tag, {**usage_header(**counts), "x-tollgate-tags": tag}


def rows_for(gateway: Gateway, tag: str, count: int = 1) -> list[dict[str, Any]]:
    rows = wait_rows(gateway.db, count, f"list_contains(tags, '{tag}')")
    assert len(rows) == count, gateway.log_text()[-2000:]
    return rows


def tokens(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(row[name] for name in TOKENS)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_call_recorded_exactly_when_sent_by_sdk(
    gateway: Gateway, stream: bool
) -> None:
    tag, headers = tagged(
        input=1200,
        output=345,
        cache_read=14723,
        cache_write_5m=3117,
        cache_write_1h=2000,
    )
    [result] = run_sdk(
        [
            {
                "sdk": "anthropic",
                "model": "claude-sonnet-4-5",
                "stream": stream,
                "headers": headers,
            }
        ],
        gateway.sdk_env(gateway.mode),
    )
    assert result["ok"], result
    assert result["usage"]["output_tokens"] == 345
    [row] = rows_for(gateway, tag)
    assert tokens(row) == (1200, 345, 14723, 3117, 2000, 0)
    # 1200*3 + 345*15 + 14723*0.30 + 3117*3.75 + 2000*6 = 36,880.65 USD per million
    assert row["cost_usd"] == Decimal("0.0368806500")
    assert (row["provider"], row["endpoint"], row["model"]) == (
        "anthropic",
        "messages",
        "claude-sonnet-4-5",
    )
    assert row["price_model"] == "claude-sonnet-4-5"
    assert (row["status"], row["outcome"], row["streamed"]) == (200, "ok", stream)
    assert row["agent"] == "anthropic-python"
    assert row["usage_estimated"] is False


@pytest.mark.parametrize(
    "include_usage", [False, True], ids=["no-usage", "include-usage"]
)
def test_openai_chat_stream_costed_when_client_did_not_ask_for_usage(
    gateway: Gateway, include_usage: bool
) -> None:
    tag, headers = tagged(input=800, output=120, cache_read=200)
    [result] = run_sdk(
        [
            {
                "sdk": "openai",
                "model": "gpt-4.1-mini",
                "stream": True,
                "include_usage": include_usage,
                "headers": headers,
            }
        ],
        gateway.sdk_env(gateway.mode),
    )
    assert result["ok"], result
    usage_chunks = [c for c in result["chunks"] if c["usage"]]
    assert len(usage_chunks) == (1 if include_usage else 0)
    [row] = rows_for(gateway, tag)
    assert tokens(row) == (800, 120, 200, 0, 0, 0)
    # 800*0.40 + 120*1.60 + 200*0.10 = 532 USD per million
    assert row["cost_usd"] == Decimal("0.0005320000")
    assert row["agent"] == "openai-python"


def test_openai_responses_reasoning_tokens_recorded_when_streamed(
    gateway: Gateway,
) -> None:
    tag, headers = tagged(input=500, output=300, reasoning=128, cache_read=100)
    [streamed, plain] = run_sdk(
        [
            {
                "sdk": "openai",
                "api": "responses",
                "model": "gpt-5",
                "stream": True,
                "headers": headers,
            },
            {"sdk": "openai", "api": "responses", "model": "gpt-5", "headers": headers},
        ],
        gateway.sdk_env(gateway.mode),
    )
    assert streamed["ok"] and plain["ok"], (streamed, plain)
    assert streamed["usage"]["output_tokens_details"]["reasoning_tokens"] == 128
    rows = rows_for(gateway, tag, 2)
    for row in rows:
        assert tokens(row) == (500, 300, 100, 0, 0, 128)
        # 500*1.25 + 300*10 + 100*0.125 = 3637.5 USD per million
        assert row["cost_usd"] == Decimal("0.0036375000")
    assert sorted(r["streamed"] for r in rows) == [False, True]


def test_openai_embeddings_priced_on_input_when_called(gateway: Gateway) -> None:
    tag, headers = tagged(input=1000)
    [result] = run_sdk(
        [
            {
                "sdk": "openai",
                "api": "embeddings",
                "model": "text-embedding-3-small",
                "headers": headers,
            }
        ],
        gateway.sdk_env(gateway.mode),
    )
    assert result["ok"], result
    [row] = rows_for(gateway, tag)
    assert row["endpoint"] == "embeddings"
    assert row["input_tokens"] == 1000
    assert row["cost_usd"] == Decimal("0.0000200000")


def test_count_tokens_free_and_recorded_when_called(gateway: Gateway) -> None:
    tag, headers = tagged(input=4242)
    [result] = run_sdk(
        [
            {
                "sdk": "anthropic",
                "api": "count_tokens",
                "model": "claude-opus-4-1",
                "headers": headers,
            }
        ],
        gateway.sdk_env(gateway.mode),
    )
    assert result == {"ok": True, "input_tokens": 4242}
    [row] = rows_for(gateway, tag)
    assert (row["endpoint"], row["cost_usd"]) == ("count_tokens", Decimal("0E-10"))
