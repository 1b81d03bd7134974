"""Provider wire formats: recognising endpoints and reading usage from real payloads."""

import json
from pathlib import Path

import pytest

from tollgate import providers
from tollgate.providers import Route
from tollgate.providers import anthropic as anthropic_provider
from tollgate.providers.anthropic import session_from_user_id
from tollgate.providers.gemini import JsonArraySplitter
from tollgate.sse import SSEDecoder
from tollgate.usage import Usage

FIXTURES = Path(__file__).parent / "fixtures"
ANTHROPIC = Route("anthropic", "messages")
CHAT = Route("openai", "chat")
RESPONSES = Route("openai", "responses")
GEMINI = Route("gemini", "stream_generate", "gemini-2.5-flash")


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        (
            "api.anthropic.com",
            "/v1/messages?beta=true",
            ("anthropic", "messages", None),
        ),
        (
            "api.anthropic.com",
            "/v1/messages/count_tokens",
            ("anthropic", "count_tokens", None),
        ),
        ("api.anthropic.com", "/v1/models", ("anthropic", "other", None)),
        ("api.openai.com", "/v1/chat/completions", ("openai", "chat", None)),
        ("api.openai.com", "/v1/responses", ("openai", "responses", None)),
        ("api.openai.com", "/v1/embeddings", ("openai", "embeddings", None)),
        (
            "corp.openai.azure.com",
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            ("openai", "chat", "gpt4o-prod"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            ("gemini", "stream_generate", "gemini-2.5-flash"),
        ),
        ("127.0.0.1", "/v1/messages", ("anthropic", "messages", None)),
        (
            "127.0.0.1",
            "/v1beta/models/gemini-2.5-pro%3AgenerateContent",
            ("gemini", "generate", "gemini-2.5-pro"),
        ),
        ("llm.corp.example", "/v1/chat/completions", ("openai", "chat", None)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_classify_recognises_endpoint_when_host_or_path_matches(
    host: str, path: str, expected: tuple[str, str, str | None]
) -> None:
    route = providers.classify(host, path, {})
    assert route is not None
    assert (route.provider, route.endpoint, route.path_model) == expected


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("example.com", "/index.html"),
        ("127.0.0.1", "/v1/models"),
        ("pypi.org", "/simple/"),
    ],
)
def test_classify_passes_traffic_when_not_an_llm_call(host: str, path: str) -> None:
    assert providers.classify(host, path, {}) is None


def test_classify_uses_policy_host_when_declared() -> None:
    route = providers.classify(
        "llm.internal", "/v1/messages", {"llm.internal": "anthropic"}
    )
    assert route == Route("anthropic", "messages")


def stream_usage(route: Route, name: str) -> tuple[Usage | None, bool, str | None]:
    reader = providers.stream_reader(route)
    decoder = SSEDecoder()
    raw = (FIXTURES / name).read_bytes()
    for event in decoder.feed(raw) + decoder.flush():
        reader.on_event(event)
    return reader.usage, reader.complete, reader.error


@pytest.mark.parametrize(
    ("route", "name", "usage", "complete", "error"),
    [
        (ANTHROPIC, "anthropic-messages-stream-basic.sse", Usage(135, 10), True, None),
        (
            ANTHROPIC,
            "anthropic-messages-stream-cache.sse",
            Usage(3, 5, cache_read_tokens=14723, cache_write_5m_tokens=3117),
            True,
            None,
        ),
        (
            ANTHROPIC,
            "anthropic-messages-stream-websearch.sse",
            Usage(10682, 510, web_search_requests=1),
            True,
            None,
        ),
        (
            ANTHROPIC,
            "anthropic-messages-stream-error-midstream.sse",
            Usage(2679, 1),
            False,
            "overloaded_error",
        ),
        (CHAT, "openai-chat-stream-include-usage.sse", Usage(14, 30), True, None),
        (CHAT, "openai-chat-stream-no-usage.sse", None, True, None),
        (
            RESPONSES,
            "openai-responses-stream-toolcall-reasoning.sse",
            Usage(75, 155, reasoning_tokens=128),
            True,
            None,
        ),
        (
            RESPONSES,
            "openai-responses-stream-error-failed.sse",
            None,
            False,
            "insufficient_quota",
        ),
        (
            GEMINI,
            "gemini-streamgeneratecontent-thinking-long.sse",
            Usage(4, 7989, reasoning_tokens=2042),
            True,
            None,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".sse") else None,
)
def test_stream_reader_reports_usage_when_fed_recorded_stream(
    route: Route, name: str, usage: Usage | None, complete: bool, error: str | None
) -> None:
    assert stream_usage(route, name) == (usage, complete, error)


@pytest.mark.parametrize(
    ("route", "name", "usage", "model"),
    [
        (
            ANTHROPIC,
            "anthropic-messages-nonstream-cache-1h.json",
            Usage(2, 120, 110000, 4000, 16000),
            "claude-opus-4-6",
        ),
        (
            ANTHROPIC,
            "anthropic-messages-nonstream-cache.json",
            Usage(3, 18, 14723, 3117),
            "claude-sonnet-4-5-20250929",
        ),
        (
            CHAT,
            "openai-chat-nonstream-recorded.json",
            Usage(14, 37),
            "gpt-4o-2024-08-06",
        ),
        (
            RESPONSES,
            "openai-responses-nonstream-reasoning.json",
            Usage(72, 25),
            "gpt-5-mini-2025-08-07",
        ),
        (
            Route("gemini", "generate"),
            "gemini-generatecontent-basic.json",
            Usage(3, 19, reasoning_tokens=17),
            "gemini-2.5-flash",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".json") else None,
)
def test_usage_from_body_normalises_when_given_real_response(
    route: Route, name: str, usage: Usage, model: str
) -> None:
    body = json.loads((FIXTURES / name).read_text())
    assert providers.usage_from_body(route, body) == (usage, model)


def test_anthropic_usage_uses_split_when_flat_cache_total_is_zero() -> None:
    body = {
        "usage": {
            "input_tokens": 1,
            "output_tokens": 2,
            "cache_creation_input_tokens": 0,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 7,
                "ephemeral_1h_input_tokens": 5,
            },
        }
    }
    usage, _ = providers.usage_from_body(ANTHROPIC, body)
    assert usage == Usage(1, 2, cache_write_5m_tokens=7, cache_write_1h_tokens=5)


@pytest.mark.parametrize(
    "raw",
    [
        {"input_tokens": -5, "output_tokens": "9"},
        {"input_tokens": True, "output_tokens": None},
        {"input_tokens": 1.5},
        [],
    ],
    ids=["negative-and-string", "bool-and-null", "fraction", "not-an-object"],
)
def test_usage_counts_are_zero_when_values_are_not_counts(raw: object) -> None:
    usage, _ = providers.usage_from_body(ANTHROPIC, {"usage": raw})
    assert usage == Usage()


def test_openai_request_asks_for_usage_when_stream_lacks_include_usage() -> None:
    body = {"model": "gpt-4.1", "stream": True, "metadata": {"tags": ["a:b"], "k": "v"}}
    facts = providers.read_request(CHAT, body)
    assert body == {
        "model": "gpt-4.1",
        "stream": True,
        "metadata": {"k": "v"},
        "stream_options": {"include_usage": True},
    }
    assert (facts.usage_injected, facts.changed, facts.tags) == (True, True, ["a:b"])


def test_anthropic_request_drops_tags_and_metadata_when_only_tags_were_there() -> None:
    body = {
        "model": "claude-opus-4-1",
        "max_tokens": 50,
        "metadata": {"tags": "x:1,y:2"},
    }
    facts = providers.read_request(ANTHROPIC, body)
    assert body == {"model": "claude-opus-4-1", "max_tokens": 50}
    assert (facts.model, facts.max_output_tokens, facts.tags) == (
        "claude-opus-4-1",
        50,
        ["x:1", "y:2"],
    )


@pytest.mark.parametrize(
    ("user_id", "session"),
    [
        ('{"device_id":"d","account_uuid":"","session_id":"5f0c-11"}', "5f0c-11"),
        ("user_abc_account__session_7e2d-9a", "7e2d-9a"),
        ("plain-user", None),
        ("{not json", None),
    ],
)
def test_session_read_from_user_id_when_claude_code_sends_it(
    user_id: str, session: str | None
) -> None:
    assert session_from_user_id(user_id) == session


def test_json_array_splitter_finds_objects_when_cut_anywhere() -> None:
    raw = b'[{"a": "}{\\"x"},\r\n{"b": {"c": 1}}\r\n]'
    for cut in range(len(raw) + 1):
        splitter = JsonArraySplitter()
        found = splitter.feed(raw[:cut]) + splitter.feed(raw[cut:])
        assert [json.loads(t) for t in found] == [{"a": '}{"x'}, {"b": {"c": 1}}]


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_error_body_has_provider_shape_when_gateway_refuses(provider: str) -> None:
    status, body = providers.error_body(provider, 402, "Tollgate: budget")
    data = json.loads(body)
    expected = {
        "anthropic": {
            "type": "error",
            "error": {"type": "billing_error", "message": "Tollgate: budget"},
        },
        "openai": {
            "error": {
                "message": "Tollgate: budget",
                "type": "insufficient_quota",
                "param": None,
                "code": "budget_exceeded",
            }
        },
        "gemini": {
            "error": {
                "code": 402,
                "message": "Tollgate: budget",
                "status": "RESOURCE_EXHAUSTED",
            }
        },
    }[provider]
    assert (status, data) == (402, expected)


@pytest.mark.parametrize(
    ("data", "chars"),
    [
        (
            '{"type":"content_block_delta","index":0,'
            '"delta":{"type":"text_delta","text":"Hello"}}',
            5,
        ),
        (
            '{"type": "content_block_delta", "index": 0,'
            ' "delta": {"type": "thinking_delta", "thinking": "ab\\ncd"}}',
            6,
        ),
        (
            '{"type":"content_block_delta","index":1,'
            '"delta":{"type":"input_json_delta","partial_json":"{\\"a\\""}}',
            6,
        ),
        (
            '{"type":"content_block_delta","index":0,'
            '"delta":{"type":"signature_delta","signature":"abc"}}',
            0,
        ),
    ],
    ids=["text", "thinking-spaced", "tool-json", "signature"],
)
def test_delta_text_measured_without_parsing_when_event_is_a_content_delta(
    data: str, chars: int
) -> None:
    # An escape counts as the characters it is written with: an estimate.
    assert anthropic_provider.delta_text_length(data) == chars
