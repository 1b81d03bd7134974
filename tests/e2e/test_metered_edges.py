"""The metered path's hard cases, with raw HTTP through a real reverse-mode mitmdump."""

import gzip
import http.client
import json
import socket
import time
import uuid
import zlib
from decimal import Decimal
from typing import Any

import brotli
import pytest
import zstandard

from harness import FakeProvider, Gateway, wait_rows

pytestmark = pytest.mark.e2e

ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def post(
    gateway: Gateway, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            json.dumps(body),
            {
                "content-type": "application/json",
                "x-api-key": "sk-ant-raw",
                **headers,
            },
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def tag_headers(
    usage: str = "input=100,output=20", **extra: str
) -> tuple[str, dict[str, str]]:
    tag = f"test:{uuid.uuid4().hex[:10]}"
    return tag, {"x-fake-usage": usage, "x-tollgate-tags": tag, **extra}


def open_stream(gateway: Gateway, headers: dict[str, str]) -> socket.socket:
    """A raw socket that has sent a streaming Messages request."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    body = json.dumps({**ANTHROPIC_BODY, "stream": True}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + head.encode()
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def one_row(gateway: Gateway, tag: str) -> dict[str, Any]:
    rows = wait_rows(gateway.db, 1, f"list_contains(tags, '{tag}')")
    assert len(rows) == 1, gateway.log_text()[-3000:]
    return rows[0]


DECODERS = {
    "gzip": lambda b: gzip.decompress(b),
    "deflate": lambda b: zlib.decompress(b),
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_stream_metered_when_upstream_ignores_identity(
    reverse_gateway: Gateway, encoding: str
) -> None:
    tag, headers = tag_headers("input=300,output=40", **{"x-fake-encoding": encoding})
    status, answer_headers, raw = post(
        reverse_gateway, "/v1/messages", {**ANTHROPIC_BODY, "stream": True}, headers
    )
    assert status == 200
    assert answer_headers["content-encoding"] == encoding
    assert b"message_stop" in DECODERS[encoding](raw)
    row = one_row(reverse_gateway, tag)
    assert (row["input_tokens"], row["output_tokens"], row["outcome"]) == (
        300,
        40,
        "ok",
    )
    assert row["cost_usd"] == Decimal("0.0015000000")  # 300*3 + 40*15 per million


def test_compressed_json_metered_when_not_streamed(reverse_gateway: Gateway) -> None:
    tag, headers = tag_headers("input=1000,output=10", **{"x-fake-encoding": "br"})
    status, _, raw = post(reverse_gateway, "/v1/messages", ANTHROPIC_BODY, headers)
    assert status == 200
    assert json.loads(brotli.decompress(raw))["usage"]["input_tokens"] == 1000
    assert one_row(reverse_gateway, tag)["cost_usd"] == Decimal("0.0031500000")


def test_stream_not_held_back_when_upstream_pauses_after_first_event(
    reverse_gateway: Gateway,
) -> None:
    _, headers = tag_headers(**{"x-fake-pause-after-first-ms": "2000"})
    sock = open_stream(reverse_gateway, headers)
    received = b""
    while b"message_start" not in received:
        received += sock.recv(65536)
    first_event_at = time.monotonic()
    assert b"message_stop" not in received
    while b"message_stop" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    # The upstream pauses 2 s after its first event: a buffering proxy would deliver
    # the first event together with the last one.
    assert time.monotonic() - first_event_at >= 1.5
    assert b"message_stop" in received


def test_client_disconnect_recorded_as_aborted_when_stream_cut_by_client(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers(
        "input=700,output=500", **{"x-fake-events": "40", "x-fake-delay-ms": "50"}
    )
    sock = open_stream(reverse_gateway, headers)
    received = b""
    while received.count(b"content_block_delta") < 3:
        received += sock.recv(65536)
    sock.close()
    row = one_row(reverse_gateway, tag)
    assert (row["outcome"], row["usage_estimated"], row["input_tokens"]) == (
        "aborted",
        True,
        700,
    )
    assert 0 < row["output_tokens"] < 500
    assert row["cost_usd"] > Decimal("0.0021")  # at least the 700 input tokens


def test_upstream_cut_recorded_with_input_when_connection_dies_mid_stream(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers("input=900,output=50", **{"x-fake-cut-after": "4"})
    try:
        post(
            reverse_gateway, "/v1/messages", {**ANTHROPIC_BODY, "stream": True}, headers
        )
    except (http.client.HTTPException, OSError):
        pass
    row = one_row(reverse_gateway, tag)
    assert (row["outcome"], row["input_tokens"], row["usage_estimated"]) == (
        "aborted",
        900,
        True,
    )
    assert row["status"] == 200


def test_midstream_error_event_recorded_as_upstream_error_when_provider_fails(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers("input=2679,output=80", **{"x-fake-error-event": "1"})
    status, _, raw = post(
        reverse_gateway, "/v1/messages", {**ANTHROPIC_BODY, "stream": True}, headers
    )
    assert status == 200 and b"overloaded_error" in raw
    row = one_row(reverse_gateway, tag)
    assert (row["outcome"], row["reason"], row["input_tokens"]) == (
        "upstream_error",
        "overloaded_error",
        2679,
    )
    assert row["usage_estimated"] is True


def test_upstream_429_recorded_with_zero_cost_when_provider_rate_limits(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers(**{"x-fake-status": "429"})
    status, _, raw = post(reverse_gateway, "/v1/messages", ANTHROPIC_BODY, headers)
    assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error"
    row = one_row(reverse_gateway, tag)
    assert (row["status"], row["outcome"], row["cost_usd"]) == (
        429,
        "upstream_error",
        Decimal(0),
    )


def test_unknown_model_recorded_unpriced_when_price_missing(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers()
    body = {**ANTHROPIC_BODY, "model": "claude-imaginary-9"}
    status, _, _ = post(reverse_gateway, "/v1/messages", body, headers)
    assert status == 200
    row = one_row(reverse_gateway, tag)
    assert (row["price_model"], row["cost_usd"], row["reason"]) == (
        None,
        Decimal(0),
        "unpriced model",
    )
    assert row["input_tokens"] == 100
    assert "no price for model 'claude-imaginary-9'" in reverse_gateway.log_text()


def test_gateway_fields_stripped_when_forwarded_to_provider(
    reverse_gateway: Gateway, fake: FakeProvider
) -> None:
    tag, headers = tag_headers()
    body = {**ANTHROPIC_BODY, "metadata": {"tags": ["project:p"], "user_id": "u1"}}
    post(reverse_gateway, "/v1/messages", body, headers)
    seen = [
        r
        for r in fake.requests()
        if isinstance(r["body"], dict)
        and r["body"].get("metadata") == {"user_id": "u1"}
    ]
    assert seen, "the provider never saw the call"
    assert not any(h.startswith("x-tollgate") for h in seen[-1]["headers"])
    row = one_row(reverse_gateway, tag)
    assert sorted(row["tags"]) == sorted(["project:p", tag])


def test_plain_traffic_untouched_and_unrecorded_when_not_llm(
    reverse_gateway: Gateway,
) -> None:
    tag, headers = tag_headers()
    post(reverse_gateway, "/v1/messages", ANTHROPIC_BODY, headers)
    connection = http.client.HTTPConnection(
        "127.0.0.1", reverse_gateway.port, timeout=10
    )
    connection.request("GET", "/plain/hello", headers={"accept-encoding": "gzip"})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"plain:/plain/hello")
    connection.close()
    post(reverse_gateway, "/v1/messages", ANTHROPIC_BODY, headers)
    first, last = wait_rows(reverse_gateway.db, 2, f"list_contains(tags, '{tag}')")
    between = wait_rows(
        reverse_gateway.db,
        0,
        f"ts > '{first['ts'].isoformat()}' and ts < '{last['ts'].isoformat()}'",
    )
    assert between == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "sse"),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", "array"),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "json"),
    ],
    ids=["sse", "json-array", "json"],
)
def test_gemini_usage_metered_when_model_only_in_path(
    reverse_gateway: Gateway, path: str, expected: str
) -> None:
    tag, headers = tag_headers("input=1000,output=300,reasoning=120,cache_read=400")
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, _, raw = post(
        reverse_gateway, path, body, {"x-goog-api-key": "g", **headers}
    )
    assert status == 200 and raw
    row = one_row(reverse_gateway, tag)
    assert (row["model"], row["price_model"], row["streamed"]) == (
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        expected != "json",
    )
    assert (
        row["input_tokens"],
        row["cache_read_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    ) == (1000, 400, 300, 120)
    # 1000*0.30 + 400*0.03 + 300*2.50 per million
    assert row["cost_usd"] == Decimal("0.0010620000")
