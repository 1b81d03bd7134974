"""Request bodies that could shrink a reservation or hide the model, and paths."""

import pytest
from mitmproxy.test import tflow, tutils

from tollgate.flows import canonical_path, trusted_destination
from tollgate.pricing import DEFAULT_PRICES, load_prices
from tollgate.requestcheck import (
    bad_output_limit,
    output_choices,
    widest_output_limit,
)

PRICES = load_prices(DEFAULT_PRICES)


@pytest.mark.parametrize(
    ("provider", "body", "limit"),
    [
        ("openai", {"max_tokens": 1000, "n": 50}, 1000),
        ("openai", {"max_completion_tokens": "2000", "max_tokens": 10}, 2000),
        ("gemini", {"generationConfig": {"max_output_tokens": 100}}, 100),
        ("anthropic", {"max_tokens": 10**30}, 10**12),
        ("anthropic", {}, None),
    ],
    ids=["n-apart", "widest", "snake", "huge", "none"],
)
def test_output_limit_read_in_every_spelling_when_body_gives_one(
    provider: str, body: dict[str, object], limit: int | None
) -> None:
    assert widest_output_limit(provider, body, None) == limit


@pytest.mark.parametrize(
    ("body", "choices"),
    [
        ({"n": 50}, 50),
        ({"n": "3"}, 3),
        ({"generationConfig": {"candidateCount": 4}}, 4),
        ({"generationConfig": {"candidate_count": 8}}, 8),
        ({"generation_config": {"candidateCount": 6}}, 6),
        ({"n": 10**6}, 128),
        ({"n": 0}, 1),
        ({}, 1),
    ],
    ids=["n", "string", "camel", "mixed", "snake-camel", "capped", "zero", "none"],
)
def test_every_choice_counted_when_body_asks_for_several(
    body: dict[str, object], choices: int
) -> None:
    assert output_choices(body) == choices


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"max_tokens": -1}, "max_tokens must be a whole number >= 0, got -1"),
        (
            {"max_tokens": float("nan")},
            "max_tokens must be a whole number >= 0, got nan",
        ),
        (
            {"max_tokens": "0x7fffffff"},
            "max_tokens must be a whole number >= 0, got '0x7fffffff'",
        ),
        (
            {"max_tokens": "0" * 45 + "1"},
            "max_tokens must be a whole number >= 0, got '" + "0" * 36 + "...",
        ),
        ({"max_tokens": 100, "n": "many"}, "n must be a whole number >= 0, got 'many'"),
        ({"max_tokens": 100}, None),
    ],
    ids=["negative", "nan", "hex", "long", "n", "fine"],
)
def test_output_limit_refused_when_no_count_can_be_read(
    body: dict[str, object], problem: str | None
) -> None:
    assert bad_output_limit("openai", body) == problem


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/v1/messages?beta=true", "/v1/messages?beta=true"),
        ("/V1/Messages", "/v1/messages"),
        ("/v1%2Fmessages", "/v1/messages"),
        ("//v1/./uploads/../messages/", "/v1/messages"),
        ("/%761/messages?key=A", "/v1/messages?key=A"),
    ],
)
def test_path_read_as_a_lenient_server_would_when_spelled_oddly(
    path: str, canonical: str
) -> None:
    assert canonical_path(path) == canonical


@pytest.mark.parametrize(
    "model",
    [
        "claude-opus-4-1/claude-haiku-4-5",
        "claude-haiku-4-5@claude-opus-4-1",
        "gpt-4.1/claude-haiku-4-5",
    ],
)
def test_model_unpriced_when_id_names_two_models(model: str) -> None:
    assert PRICES.resolve(model) is None


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ],
)
def test_model_priced_when_prefix_or_version_is_a_known_spelling(
    model: str, key: str
) -> None:
    entry = PRICES.resolve(model)
    assert entry is not None and entry.key == key


@pytest.mark.parametrize(
    ("host", "provider", "trusted"),
    [
        ("api.anthropic.com", "anthropic", True),
        ("api.anthropic.com", "openai", False),
        ("api.openai.com", "anthropic", False),
        ("x.openai.azure.com", "openai", True),
        ("llm.internal.example", "openai", True),
        ("elsewhere.example", "openai", False),
    ],
)
def test_provider_key_trusted_only_to_its_own_host_when_forward_proxied(
    host: str, provider: str, trusted: bool
) -> None:
    flow = tflow.tflow(req=tutils.treq(host=host, port=443, scheme=b"https"))
    extra = {"llm.internal.example": "openai"}
    assert trusted_destination(flow, extra, provider) is trusted
