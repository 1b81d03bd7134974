"""Tests of the price table: model-id resolution, exact Decimal costs, file errors."""

from decimal import Decimal
from pathlib import Path

import pytest

from tollgate import pricing
from tollgate.errors import PriceError
from tollgate.pricing import (
    PriceEntry,
    PriceTable,
    Rates,
    load_prices,
    normalize_model,
    parse_prices,
)
from tollgate.usage import Usage
from tollgate.yamlsrc import parse_yaml

SHIPPED = Path(__file__).resolve().parents[1] / "policies" / "prices.yaml"
MODEL_FIELDS = (
    "aliases, cache_read, cache_write_1h, cache_write_5m, input, long_context,"
    " output, per_request, provider"
)
LONG_FIELDS = (
    "above_prompt_tokens, cache_read, cache_write_1h, cache_write_5m, input, output"
)
PER_MTOK = "expected a number of USD per million tokens >= 0"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_prices(SHIPPED)


def small_table(text: str) -> PriceTable:
    return parse_prices(parse_yaml(text, source="small.yaml"))


def entry_of(table: PriceTable, model: str) -> PriceEntry:
    entry = table.resolve(model)
    assert entry is not None, model
    return entry


# --- the shipped table ------------------------------------------------------------


def test_load_prices_succeeds_when_reading_the_shipped_table(table: PriceTable) -> None:
    for key in (
        "gpt-4.1-mini",
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "gemini-2.5-flash",
    ):
        assert key in table.entries
    assert table.batch_discount == Decimal("0.5")
    assert table.source == str(SHIPPED)
    assert {e.provider for e in table.entries.values()} == {
        "anthropic",
        "openai",
        "gemini",
    }


@pytest.mark.parametrize(
    ("key", "field", "price"),
    [
        ("claude-sonnet-4-5", "cache_write_5m", "3.75"),
        ("claude-opus-4-1", "cache_write_1h", "30"),
        ("claude-opus-5-5", "cache_read", "0.20"),
        ("claude-sonnet-5-5", "cache_read", "0.10"),
        ("claude-haiku-5-5", "cache_write_5m", "0.125"),
        ("claude-3-haiku", "cache_write_5m", "0.30"),
        ("gpt-4o", "cache_read", "1.25"),
        ("gpt-4o-2024-05-13", "input", "5"),
        ("gpt-4o-2024-05-13", "cache_read", "5"),
        ("gpt-5.4-mini", "cache_read", "0.075"),
        ("gpt-5-nano", "cache_read", "0.005"),
        ("o4-mini", "cache_read", "0.275"),
        ("text-embedding-3-large", "input", "0.13"),
        ("gemini-2.5-pro", "cache_read", "0.125"),
        ("gemini-3.5-flash", "cache_read", "1.50"),
        ("gemini-2.0-flash", "cache_write_5m", "0.10"),
    ],
    ids=lambda v: str(v),
)
def test_shipped_table_has_list_price_when_reading_entry(
    table: PriceTable, key: str, field: str, price: str
) -> None:
    value = getattr(table.entries[key].rates, field)
    assert type(value) is Decimal
    assert value == Decimal(price)


def test_shipped_table_charges_web_search_when_model_is_claude(
    table: PriceTable,
) -> None:
    for key, entry in table.entries.items():
        if entry.provider == "anthropic":
            assert entry.per_request == {"web_search": Decimal("0.01")}, key
        else:
            assert entry.per_request == {}, key


# --- resolution -------------------------------------------------------------------

SPELLINGS = [
    # Anthropic: snapshot, alias, Bedrock, Vertex (prices.md spelling table)
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("claude-opus-4-0", "claude-opus-4"),
    ("claude-4-opus-20250514", "claude-opus-4"),
    ("anthropic.claude-opus-4-20250514-v1:0", "claude-opus-4"),
    ("claude-opus-4@20250514", "claude-opus-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-opus-4-1", "claude-opus-4-1"),
    ("anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
    ("claude-opus-4-1@20250805", "claude-opus-4-1"),
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ("claude-opus-4-5", "claude-opus-4-5"),
    ("anthropic.claude-opus-4-5-20251101-v1:0", "claude-opus-4-5"),
    ("claude-opus-4-5@20251101", "claude-opus-4-5"),
    ("claude-opus-4-6", "claude-opus-4-6"),
    ("claude-opus-4-7", "claude-opus-4-7"),
    ("claude-opus-4-8", "claude-opus-4-8"),
    ("claude-opus-5", "claude-opus-5"),
    ("claude-opus-5-5", "claude-opus-5-5"),
    ("anthropic.claude-opus-4-6-v1", "claude-opus-4-6"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-0", "claude-sonnet-4"),
    ("anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("claude-sonnet-4@20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-6", "claude-sonnet-4-6"),
    ("claude-sonnet-5", "claude-sonnet-5"),
    ("claude-sonnet-5-5", "claude-sonnet-5-5"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-haiku-4-5", "claude-haiku-4-5"),
    ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
    ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
    ("claude-haiku-5-5", "claude-haiku-5-5"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
    ("claude-3-haiku-20240307", "claude-3-haiku"),
    ("claude-fable-5-1", "claude-fable-5-1"),
    ("claude-mythos-5-2", "claude-mythos-5-2"),
    # Bedrock inference profiles, ARNs and URL-encoded path ids
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("eu.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
    ("apac.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("jp.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("au.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("us.anthropic.claude-opus-4-1-20250805-v1%3A0", "claude-opus-4-1"),
    (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4-5",
    ),
    (
        "arn:aws:bedrock:us-west-2::foundation-model/"
        "anthropic.claude-3-haiku-20240307-v1:0:200k",
        "claude-3-haiku",
    ),
    # OpenRouter and other OpenAI-compatible hosts
    ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("anthropic/claude-opus-4.1", "claude-opus-4-1"),
    ("anthropic/claude-3.5-haiku", "claude-3-5-haiku"),
    ("openai/gpt-5", "gpt-5"),
    ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ("google/gemini-2.5-pro", "gemini-2.5-pro"),
    # OpenAI aliases and dated snapshots
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-2024-11-20", "gpt-4o"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ("openai/gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
    ("gpt-5-codex", "gpt-5-codex"),
    ("gpt-5.1-codex", "gpt-5.1-codex"),
    ("gpt-5.4-pro", "gpt-5.4-pro"),
    ("gpt-5.5", "gpt-5.5"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
    ("o3-2025-04-16", "o3"),
    ("o4-mini-2025-04-16", "o4-mini"),
    ("o3-mini", "o3-mini"),
    ("text-embedding-3-small", "text-embedding-3-small"),
    ("text-embedding-ada-002", "text-embedding-ada-002"),
    # Gemini: stable, preview, dated preview, -latest, models/ and Vertex paths
    ("gemini-2.5-pro", "gemini-2.5-pro"),
    ("gemini-3-pro-preview", "gemini-3-pro-preview"),
    ("gemini-3.1-pro-preview", "gemini-3.1-pro"),
    ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
    ("gemini-2.5-flash-latest", "gemini-2.5-flash"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ("models%2Fgemini-2.5-flash", "gemini-2.5-flash"),
    ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
    (
        "projects/p/locations/us-central1/publishers/google/models/gemini-3-flash",
        "gemini-3-flash",
    ),
    (
        "projects/p/locations/global/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929",
        "claude-sonnet-4-5",
    ),
    ("gemini-2.5-pro:streamGenerateContent", "gemini-2.5-pro"),
    ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ("gemini-3.1-flash-lite", "gemini-3.1-flash-lite"),
    ("gemini-3.5-flash", "gemini-3.5-flash"),
    # case and whitespace
    ("  Claude-Sonnet-4-5-20250929 \n", "claude-sonnet-4-5"),
    ("GPT-4.1", "gpt-4.1"),
]


@pytest.mark.parametrize(("model", "key"), SPELLINGS, ids=[s for s, _ in SPELLINGS])
def test_resolve_finds_price_key_when_model_is_a_known_spelling(
    table: PriceTable, model: str, key: str
) -> None:
    assert entry_of(table, model).key == key


SEPARATOR_CASES = [
    ("claude-sonnet-5-5x", None),
    ("claude-sonnet-5-5-fast", "claude-sonnet-5-5"),
    ("claude-opus-4-1-preview", "claude-opus-4-1"),
    ("claude-opus-4-9", None),
    ("claude-opus-49", None),
    ("claude-sonnet-4-5:beta", "claude-sonnet-4-5"),
    ("anthropic/claude-sonnet-4.5:thinking", "claude-sonnet-4-5"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("gpt-4.1-preview", "gpt-4.1"),
    ("gpt-4.10", None),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini-search-preview", "gpt-4o-mini"),
    ("gpt-4oo", None),
    ("gpt-5.3", None),
    ("gpt-5.3-codex", None),
    ("gpt-5-chat-latest", "gpt-5"),
    ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
    ("o3-mini-high", "o3-mini"),
    ("o30", None),
    ("gemini-2.5-flash-lite-preview-09-2025", "gemini-2.5-flash-lite"),
    ("gemini-3-flash-preview", "gemini-3-flash"),
    ("gemini-3.1-flash", None),
    ("gemini-2.5-pro-exp", "gemini-2.5-pro"),
]


@pytest.mark.parametrize(
    ("model", "key"), SEPARATOR_CASES, ids=[s for s, _ in SEPARATOR_CASES]
)
def test_resolve_matches_prefix_only_at_separator_when_id_is_longer(
    table: PriceTable, model: str, key: str | None
) -> None:
    entry = table.resolve(model)
    assert (entry.key if entry else None) == key


LOOK_ALIKES = [
    ("claude-\u043epus-4-1", "cyrillic-o"),
    ("claude-haiku-4-5".replace("k", "\u212a"), "kelvin-sign"),
    ("gpt-4\u03bf", "greek-omicron"),
    ("\uff47\uff50\uff54-4.1", "fullwidth"),
    ("claude-%D0%BEpus-4-1", "url-encoded-cyrillic"),
    ("gpt-4.1\u200b", "zero-width-space"),
    ("cla\u0301ude-sonnet-4-5", "combining-accent"),
]


@pytest.mark.parametrize(
    "model", [m for m, _ in LOOK_ALIKES], ids=[i for _, i in LOOK_ALIKES]
)
def test_resolve_returns_none_when_id_has_unicode_look_alikes(
    table: PriceTable, model: str
) -> None:
    assert table.resolve(model) is None


@pytest.mark.parametrize(
    "model",
    [
        None,
        "",
        "   ",
        "llama-3.3-70b-versatile",
        "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        "claude-3-7-sonnet-20250219",
        "my-azure-deployment",
        "tunedModels/my-model",
        "claude-sonnet-4-5" + "-x" * 400,
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "other-vendor",
        "fine-tuned",
        "unpriced-claude",
        "azure-deployment",
        "tuned-gemini",
        "overlong",
    ],
)
def test_resolve_returns_none_when_model_is_unknown(
    table: PriceTable, model: str | None
) -> None:
    assert table.resolve(model) is None


def test_resolve_keeps_cache_bounded_when_many_distinct_ids_arrive(
    table: PriceTable,
) -> None:
    for i in range(pricing._CACHE_LIMIT + 50):
        table.resolve(f"unknown-model-{i}")
        assert len(table._cache) <= pricing._CACHE_LIMIT
    assert entry_of(table, "gpt-4.1").key == "gpt-4.1"
    assert table.resolve("gpt-4.1") is table.resolve("gpt-4.1")


def test_resolve_uses_aliases_when_table_is_built_in_code() -> None:
    rates = Rates(
        input=Decimal(1),
        output=Decimal(2),
        cache_read=Decimal(1),
        cache_write_5m=Decimal(1),
        cache_write_1h=Decimal(1),
    )
    entry = PriceEntry(
        key="house-model", provider="other", rates=rates, aliases=("hm",)
    )
    built = PriceTable(source="code", entries={"house-model": entry})
    assert built.resolve("HM") is entry
    assert built.resolve("house-model-v2") is entry
    assert built.batch_discount == Decimal("0.5")


@pytest.mark.parametrize(
    ("model", "normal"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-4-opus", "claude-opus-4"),
        ("claude-4-sonnet-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-3.5-haiku", "claude-3-5-haiku"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash-preview-05-20"),
        (" O3-2025-04-16 ", "o3"),
        ("claude-\u043epus-4", "claude-\u043epus-4"),
    ],
    ids=lambda v: str(v),
)
def test_normalize_model_gives_canonical_id_when_spelling_varies(
    model: str, normal: str
) -> None:
    assert normalize_model(model) == normal


# --- costs ------------------------------------------------------------------------


def test_cost_is_exact_decimal_when_call_uses_cache_writes_and_reads(
    table: PriceTable,
) -> None:
    # Sonnet 4.5, prompt 3 + 3117 + 14723 = 17843 tokens (standard tier):
    #   input       3 x 3.00  =     9.00
    #   5m write 3117 x 3.75  = 11688.75
    #   read    14723 x 0.30  =  4416.90
    #   output    500 x 15.00 =  7500.00
    #   sum 23614.65 / 1,000,000 = 0.02361465 USD
    usage = Usage(
        input_tokens=3,
        cache_write_5m_tokens=3117,
        cache_read_tokens=14723,
        output_tokens=500,
    )
    cost = table.cost(entry_of(table, "claude-sonnet-4-5-20250929"), usage)
    assert cost == Decimal("0.02361465")
    assert str(cost) == "0.0236146500"


def test_cost_uses_one_hour_write_price_when_tokens_are_written_for_an_hour(
    table: PriceTable,
) -> None:
    # Opus 4.1: 10,000 x 30 (1h) + 10,000 x 18.75 (5m) = 487,500 / 1M = 0.4875
    usage = Usage(cache_write_1h_tokens=10_000, cache_write_5m_tokens=10_000)
    assert table.cost(entry_of(table, "claude-opus-4-1"), usage) == Decimal("0.4875")


@pytest.mark.parametrize(
    ("model", "usage", "expected"),
    [
        # 150,000 x 3 + 50,000 x 0.30 + 1,000 x 15 = 480,000 -> 0.48 (at 200K: standard)
        (
            "claude-sonnet-4-5",
            Usage(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1_000),
            "0.48",
        ),
        # 150,000 x 6 + 50,001 x 0.60 + 1,000 x 22.50 = 952,500.6 -> 0.9525006
        (
            "claude-sonnet-4-5",
            Usage(input_tokens=150_000, cache_read_tokens=50_001, output_tokens=1_000),
            "0.9525006",
        ),
        # cache writes count towards the prompt: 1,000 x 6 + 199,001 x 7.50 (5m)
        # = 1,498,507.5 -> 1.4985075
        (
            "claude-sonnet-4",
            Usage(input_tokens=1_000, cache_write_5m_tokens=199_001),
            "1.4985075",
        ),
        # Haiku 5.5 at 100K: 100,000 x 0.10 + 2,000 x 0.50 = 11,000 -> 0.011
        (
            "claude-haiku-5-5",
            Usage(input_tokens=100_000, output_tokens=2_000),
            "0.011",
        ),
        # Haiku 5.5 above 100K: 100,001 x 0.50 + 2,000 x 2.50 = 55,000.5 -> 0.0550005
        (
            "claude-haiku-5-5",
            Usage(input_tokens=100_001, output_tokens=2_000),
            "0.0550005",
        ),
        # Haiku 5.5 above 100K with cache: 1 x 0.50 + 100,000 x 0.05 + 10 x 1.00 (1h)
        # = 5,010.5 -> 0.0050105
        (
            "claude-haiku-5-5",
            Usage(input_tokens=1, cache_read_tokens=100_000, cache_write_1h_tokens=10),
            "0.0050105",
        ),
        # Gemini 2.5 Pro above 200K: 180,001 x 2.50 + 20,000 x 0.25 + 100 x 15
        # = 456,502.5 -> 0.4565025
        (
            "gemini-2.5-pro",
            Usage(input_tokens=180_001, cache_read_tokens=20_000, output_tokens=100),
            "0.4565025",
        ),
    ],
    ids=[
        "sonnet-4-5-at-200k",
        "sonnet-4-5-above-200k",
        "sonnet-4-cache-write-above-200k",
        "haiku-5-5-at-100k",
        "haiku-5-5-above-100k",
        "haiku-5-5-cache-above-100k",
        "gemini-2-5-pro-above-200k",
    ],
)
def test_cost_reprices_whole_request_when_prompt_exceeds_long_context_threshold(
    table: PriceTable, model: str, usage: Usage, expected: str
) -> None:
    assert table.cost(entry_of(table, model), usage) == Decimal(expected)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [(False, "1.83"), (True, "0.93")],
    ids=["standard", "batch"],
)
def test_cost_halves_token_costs_but_not_fees_when_batch(
    table: PriceTable, batch: bool, expected: str
) -> None:
    # 100,000 x 3 + 100,000 x 15 = 1,800,000 / 1M = 1.80 USD of tokens (batch: 0.90),
    # plus 3 searches x 0.01 = 0.03 USD, never discounted
    usage = Usage(input_tokens=100_000, output_tokens=100_000, web_search_requests=3)
    cost = table.cost(entry_of(table, "claude-sonnet-4-5"), usage, batch=batch)
    assert cost == Decimal(expected)


@pytest.mark.parametrize(
    ("model", "searches", "expected"),
    [
        ("claude-sonnet-4-5", 2, "0.02"),
        ("claude-opus-4-1", 1000, "10"),
        ("gpt-4.1", 5, "0"),
    ],
    ids=["sonnet-two-searches", "opus-thousand-searches", "gpt-no-search-fee"],
)
def test_cost_adds_web_search_fee_when_model_has_a_per_request_price(
    table: PriceTable, model: str, searches: int, expected: str
) -> None:
    usage = Usage(web_search_requests=searches)
    assert table.cost(entry_of(table, model), usage) == Decimal(expected)


def test_cost_counts_reasoning_once_when_it_is_inside_output(table: PriceTable) -> None:
    # gpt-5: 1,000 output tokens (800 of them reasoning) x 10 = 10,000 -> 0.01
    entry = entry_of(table, "gpt-5")
    with_reasoning = table.cost(entry, Usage(output_tokens=1_000, reasoning_tokens=800))
    without = table.cost(entry, Usage(output_tokens=1_000))
    assert with_reasoning == without == Decimal("0.01")


def test_cost_is_zero_when_counts_are_negative(table: PriceTable) -> None:
    usage = Usage(input_tokens=-5, output_tokens=-1, web_search_requests=-2)
    cost = table.cost(entry_of(table, "claude-sonnet-4-5"), usage)
    assert cost == Decimal(0)
    assert cost >= 0


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("0.00005", "0.0000000000"),
        ("0.00015", "0.0000000002"),
        ("0.00025", "0.0000000002"),
        ("0.00035", "0.0000000004"),
        ("0.000123456", "0.0000000001"),
    ],
    ids=[
        "half-to-even-zero",
        "half-up-to-2",
        "half-down-to-2",
        "half-up-to-4",
        "plain",
    ],
)
def test_cost_rounds_half_to_even_when_below_ten_decimal_places(
    rate: str, expected: str
) -> None:
    # one input token at `rate` USD per MTok costs rate / 1,000,000 USD
    small = small_table(f"models:\n  tiny:\n    input: '{rate}'\n    output: 0\n")
    cost = small.cost(small.entries["tiny"], Usage(input_tokens=1))
    assert f"{cost:f}" == expected
    assert cost.as_tuple().exponent == -10


@pytest.mark.parametrize(
    ("provider", "read", "write_5m", "write_1h"),
    [
        ("anthropic", "0.3", "3.75", "6"),
        ("openai", "3", "3", "3"),
        ("gemini", "3", "3", "3"),
        (None, "3", "3", "3"),
    ],
    ids=["anthropic-multipliers", "openai-input", "gemini-input", "default-input"],
)
def test_parse_prices_defaults_cache_rates_when_not_given(
    provider: str | None, read: str, write_5m: str, write_1h: str
) -> None:
    line = f"    provider: {provider}\n" if provider else ""
    small = small_table(
        "models:\n  m:\n" + line + "    input: 3\n    output: 15\n"
        "    long_context: {above_prompt_tokens: 10, input: 6, output: 30}\n"
    )
    entry = small.entries["m"]
    assert (entry.rates.cache_read, entry.rates.cache_write_5m) == (
        Decimal(read),
        Decimal(write_5m),
    )
    assert entry.rates.cache_write_1h == Decimal(write_1h)
    assert entry.provider == (provider or "other")
    assert entry.long_context is not None
    assert entry.long_context.cache_read == Decimal(read) * 2


def test_parse_prices_reads_numbers_exactly_when_given_as_floats_or_strings() -> None:
    small = small_table(
        "batch_discount: '0.25'\nmodels:\n"
        "  m: {input: 0.1, output: '0.075', cache_read: 1e-7, cache_write_5m: 1_000}\n"
    )
    rates = small.entries["m"].rates
    assert rates.input == Decimal("0.1")
    assert rates.output == Decimal("0.075")
    assert rates.cache_read == Decimal("1E-7")
    assert rates.cache_write_5m == Decimal(1000)
    assert small.batch_discount == Decimal("0.25")
    assert all(type(getattr(rates, f)) is Decimal for f in Rates.__slots__)


# --- price-file errors ------------------------------------------------------------

ERROR_CASES = [
    (
        "input-not-a-number",
        "version: 1\nmodels:\n  gpt-4.1:\n    provider: openai\n    input: 2k\n"
        "    output: 8\n",
        [f"{{path}}:5: models.gpt-4.1.input: {PER_MTOK}, got '2k'"],
    ),
    (
        "output-negative",
        "models:\n  gpt-4.1:\n    input: 2\n    output: -1\n",
        [f"{{path}}:4: models.gpt-4.1.output: {PER_MTOK}, got -1"],
    ),
    (
        "cache-read-bool",
        "models:\n  gpt-4.1:\n    input: 2\n    output: 8\n    cache_read: true\n",
        [f"{{path}}:5: models.gpt-4.1.cache_read: {PER_MTOK}, got True"],
    ),
    (
        "input-null",
        "models:\n  gpt-4.1:\n    input:\n    output: 8\n",
        [f"{{path}}:3: models.gpt-4.1.input: {PER_MTOK}, got None"],
    ),
    (
        "input-infinite",
        "models:\n  gpt-4.1:\n    input: .inf\n    output: 8\n",
        [f"{{path}}:3: models.gpt-4.1.input: {PER_MTOK}, got inf"],
    ),
    (
        "cache-write-list",
        "models:\n  m:\n    input: 2\n    output: 8\n    cache_write_1h: [1]\n",
        [f"{{path}}:5: models.m.cache_write_1h: {PER_MTOK}, got [1]"],
    ),
    (
        "unknown-field-and-missing-input",
        "models:\n  gpt-4.1:\n    provider: openai\n    inptu: 2\n    output: 8\n",
        [
            "{path}:2: models.gpt-4.1: missing required field 'input'",
            "{path}:4: models.gpt-4.1.inptu: unknown field 'inptu'"
            f" - known: {MODEL_FIELDS}",
        ],
    ),
    (
        "missing-output",
        "models:\n  claude-x:\n    provider: anthropic\n    input: 2\n",
        ["{path}:2: models.claude-x: missing required field 'output'"],
    ),
    (
        "duplicate-alias",
        "models:\n  a-model:\n    input: 1\n    output: 2\n    aliases: [shared]\n"
        "  b-model:\n    input: 1\n    output: 2\n    aliases: [other, shared]\n",
        [
            "{path}:9: models.b-model.aliases[1]: alias 'shared' is already an alias"
            " of model 'a-model'"
        ],
    ),
    (
        "alias-is-another-key",
        "models:\n  a-model:\n    input: 1\n    output: 2\n"
        "  b-model:\n    input: 1\n    output: 2\n    aliases:\n      - a-model\n",
        [
            "{path}:9: models.b-model.aliases[0]: alias 'a-model' is already the key"
            " of a model"
        ],
    ),
    (
        "alias-not-lowercase",
        "models:\n  m:\n    input: 1\n    output: 2\n    aliases: [GPT4]\n",
        [
            "{path}:5: models.m.aliases[0]: expected a lowercase ASCII model id,"
            " got 'GPT4'"
        ],
    ),
    (
        "aliases-not-a-list",
        "models:\n  m:\n    input: 1\n    output: 2\n    aliases: gpt-4\n",
        ["{path}:5: models.m.aliases: expected a list of model ids, got 'gpt-4'"],
    ),
    (
        "provider-not-a-name",
        "models:\n  m:\n    provider: OpenAI\n    input: 1\n    output: 2\n",
        [
            "{path}:3: models.m.provider: expected a provider name such as anthropic,"
            " openai or gemini, got 'OpenAI'"
        ],
    ),
    (
        "key-not-lowercase",
        "models:\n  GPT-4.1:\n    input: 1\n    output: 2\n",
        [
            "{path}:2: models.GPT-4.1: expected a lowercase ASCII model id,"
            " got 'GPT-4.1'"
        ],
    ),
    (
        "key-non-ascii",
        "models:\n  claude-\u043epus:\n    input: 1\n    output: 2\n",
        [
            "{path}:2: models.claude-\u043epus: expected a lowercase ASCII model id,"
            " got 'claude-\u043epus'"
        ],
    ),
    (
        "entry-not-a-mapping",
        "models:\n  gpt-4.1: 3\n",
        ["{path}:2: models.gpt-4.1: expected a mapping of prices, got 3"],
    ),
    (
        "long-context-threshold-zero",
        "models:\n  m:\n    input: 1\n    output: 2\n    long_context:\n"
        "      above_prompt_tokens: 0\n      input: 2\n      output: 4\n",
        [
            "{path}:6: models.m.long_context.above_prompt_tokens: expected a whole"
            " number of prompt tokens >= 1, got 0"
        ],
    ),
    (
        "long-context-threshold-text",
        "models:\n  m:\n    input: 1\n    output: 2\n    long_context:\n"
        "      above_prompt_tokens: 200K\n      input: 2\n      output: 4\n",
        [
            "{path}:6: models.m.long_context.above_prompt_tokens: expected a whole"
            " number of prompt tokens >= 1, got '200K'"
        ],
    ),
    (
        "long-context-missing-fields",
        "models:\n  m:\n    input: 1\n    output: 2\n    long_context:\n"
        "      output: 4\n      cache_raed: 1\n",
        [
            "{path}:5: models.m.long_context: missing required field"
            " 'above_prompt_tokens'",
            "{path}:5: models.m.long_context: missing required field 'input'",
            "{path}:7: models.m.long_context.cache_raed: unknown field 'cache_raed'"
            f" - known: {LONG_FIELDS}",
        ],
    ),
    (
        "long-context-not-a-mapping",
        "models:\n  m:\n    input: 1\n    output: 2\n    long_context: 200000\n",
        [
            "{path}:5: models.m.long_context: expected a mapping of long-context"
            " prices, got 200000"
        ],
    ),
    (
        "per-request-fee-text",
        "models:\n  m:\n    input: 1\n    output: 2\n    per_request:\n"
        "      web_search: ten\n",
        [
            "{path}:6: models.m.per_request.web_search: expected a number of USD per"
            " request >= 0, got 'ten'"
        ],
    ),
    (
        "per-request-unknown-fee",
        "models:\n  m:\n    input: 1\n    output: 2\n    per_request: {web_serch: 1}\n",
        [
            "{path}:5: models.m.per_request.web_serch: unknown field 'web_serch'"
            " - known: web_search"
        ],
    ),
    (
        "per-request-not-a-mapping",
        "models:\n  m:\n    input: 1\n    output: 2\n    per_request: 0.01\n",
        [
            "{path}:5: models.m.per_request: expected a mapping of per-request fees,"
            " got 0.01"
        ],
    ),
    (
        "batch-discount-above-one",
        "batch_discount: 1.5\nmodels: {}\n",
        ["{path}:1: batch_discount: expected a fraction from 0 to 1, got 1.5"],
    ),
    (
        "batch-discount-bool",
        "batch_discount: false\nmodels: {}\n",
        ["{path}:1: batch_discount: expected a fraction from 0 to 1, got False"],
    ),
    (
        "version-two",
        "version: 2\nmodels: {}\n",
        ["{path}:1: version: expected 1, got 2"],
    ),
    (
        "version-true",
        "version: true\nmodels: {}\n",
        ["{path}:1: version: expected 1, got True"],
    ),
    (
        "models-misspelt",
        "version: 1\nmodles: {}\n",
        [
            "{path}: missing required field 'models'",
            "{path}:2: modles: unknown field 'modles' - known: batch_discount, models,"
            " version",
        ],
    ),
    (
        "models-a-list",
        "models: [gpt-4.1]\n",
        [
            "{path}:1: models: expected a mapping of model ids to prices,"
            " got ['gpt-4.1']"
        ],
    ),
    (
        "empty-file",
        "",
        ["{path}: expected a mapping with a 'models' field, got None"],
    ),
    (
        "document-a-list",
        "- gpt-4.1\n",
        ["{path}: expected a mapping with a 'models' field, got ['gpt-4.1']"],
    ),
    (
        "errors-sorted-by-line",
        "models:\n  a-model:\n    input: 1\n    output: 2\n    aliases: [b-model]\n"
        "  b-model:\n    input: 2k\n    output: 2\n  c-model:\n    output: 1\n",
        [
            "{path}:5: models.a-model.aliases[0]: alias 'b-model' is already the key"
            " of a model",
            f"{{path}}:7: models.b-model.input: {PER_MTOK}, got '2k'",
            "{path}:9: models.c-model: missing required field 'input'",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in ERROR_CASES],
    ids=[name for name, _, _ in ERROR_CASES],
)
def test_load_prices_raises_located_errors_when_file_is_invalid(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PriceError) as caught:
        load_prices(path)
    assert str(caught.value) == "\n".join(line.format(path=path) for line in expected)


def test_load_prices_raises_price_error_when_yaml_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: [1, 2\n", encoding="utf-8")
    with pytest.raises(PriceError) as caught:
        load_prices(path)
    assert str(caught.value).startswith(f"{path}:")
    assert "invalid YAML" in str(caught.value)


def test_load_prices_raises_price_error_when_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PriceError) as caught:
        load_prices(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"
