"""Tests for scripts/fake_provider.py, run as a real subprocess on 127.0.0.1.

Only the stdlib `http.client` (and raw sockets where chunk boundaries or the
connection's end matter) talk to the server; zlib, brotli and zstandard decode.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fake_provider.py"
FIXTURES = ROOT / "tests" / "fixtures"
HOST = "127.0.0.1"
LISTENING = r"fake-provider listening on http://127\.0\.0\.1:(\d+)\n"
FULL_USAGE = (
    "input=100,output=20,cache_read=5,cache_write_5m=3,cache_write_1h=2,"
    "reasoning=7,web_search=1"
)
ANTHROPIC_ORDER = (
    ["message_start", "content_block_start", "ping"]
    + ["content_block_delta"] * 5
    + ["content_block_stop", "message_delta", "message_stop"]
)


# ----------------------------------------------------------------- process helpers


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int


def launch(*args: str) -> Server:
    """Start the fake provider on a free loopback port; wait for its line."""
    command = [sys.executable, str(SCRIPT), "--host", HOST, "--port", "0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline().decode() if ready else ""
    found = re.fullmatch(LISTENING, line)
    if not found:
        stop(proc)
        raise RuntimeError(f"fake provider said {line!r}")
    return Server(proc, int(found.group(1)))


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Signal the process by its PID; kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return int(proc.returncode)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = launch()
    yield running
    stop(running.proc)


@pytest.fixture
def port(server: Server) -> int:
    return server.port


# -------------------------------------------------------------------- http helpers


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Answer:
    """One request on a fresh connection; the body is not decompressed."""
    conn = http.client.HTTPConnection(HOST, port, timeout=15)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        names = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, names, raw)
    finally:
        conn.close()


def sse(raw: bytes, separator: bytes = b"\n\n") -> list[tuple[str | None, str]]:
    """(event name, data) pairs of an SSE body."""
    events = []
    for block in raw.split(separator):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.decode().splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def sse_json(raw: bytes) -> list[tuple[str | None, Any]]:
    return [(name, json.loads(data)) for name, data in sse(raw)]


def chat_chunks(raw: bytes) -> list[Any]:
    """Parsed chat chunks; the literal [DONE] stays a string."""
    return [data if data == "[DONE]" else json.loads(data) for _, data in sse(raw)]


class RawStream:
    """A request on a raw socket, reading the chunked response chunk by chunk."""

    def __init__(self, port: int, path: str, body: Any, headers: dict[str, str]):
        self.sock = socket.create_connection((HOST, port), timeout=15)
        data = json.dumps(body).encode()
        lines = [
            f"POST {path} HTTP/1.1",
            f"host: {HOST}:{port}",
            "content-type: application/json",
            f"content-length: {len(data)}",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        self.file: BinaryIO = self.sock.makefile("rb")
        self.status_line = self.file.readline()
        self.headers = self._read_headers()

    def _read_headers(self) -> dict[str, str]:
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def next_chunk(self) -> bytes | None:
        """The next chunk's data; None at the terminating chunk; b"" at EOF."""
        line = self.file.readline()
        if not line:
            return b""
        size = int(line.split(b";")[0], 16)
        if size == 0:
            self.file.readline()
            return None
        data = self.file.read(size)
        self.file.read(2)
        return data

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def decoder(encoding: str) -> Callable[[bytes], bytes]:
    """An incremental decompressor's feed function for a Content-Encoding."""
    if encoding == "gzip":
        return zlib.decompressobj(31).decompress
    if encoding == "deflate":
        return zlib.decompressobj(15).decompress
    if encoding == "br":
        brotli = pytest.importorskip("brotli")
        return brotli.Decompressor().process
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdDecompressor().decompressobj().decompress


def without_ids(raw: bytes) -> bytes:
    return re.sub(rb"FAKE\d+", b"FAKE", raw)


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ------------------------------------------------------------------------ startup


def test_server_prints_one_listening_line_when_started_on_port_zero(
    server: Server,
) -> None:
    assert server.port > 0
    assert call(server.port, "/plain/up", method="GET").status == 200


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_exits_with_code_zero_when_signalled(signum: int) -> None:
    running = launch()
    call(running.port, "/plain/x", method="GET")
    assert stop(running.proc, signum) == 0


def test_server_uses_usage_flag_when_request_has_no_usage_header() -> None:
    running = launch("--usage", "input=7,output=3")
    try:
        usage = call(running.port, "/v1/messages", {"model": "m"}).json()["usage"]
    finally:
        stop(running.proc)
    assert (usage["input_tokens"], usage["output_tokens"]) == (7, 3)
    assert usage["cache_read_input_tokens"] == 0


def test_start_background_serves_in_process_when_imported() -> None:
    spec = importlib.util.spec_from_file_location("fake_provider_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    handle, bound = module.start_background(HOST, 0)
    try:
        answer = call(bound, "/v1/messages", {"model": "m"})
    finally:
        handle.close()
    assert answer.json()["usage"]["input_tokens"] == 100


# ---------------------------------------------------------------------- anthropic


def test_anthropic_messages_reports_exact_usage_when_usage_header_set(
    port: int,
) -> None:
    request = {"model": "claude-x", "max_tokens": 9}
    answer = call(port, "/v1/messages?beta=true", request, {"x-fake-usage": FULL_USAGE})
    body = answer.json()
    assert answer.status == 200
    assert body["model"] == "claude-x"
    assert body["usage"] == {
        "input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 5,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 3,
            "ephemeral_1h_input_tokens": 2,
        },
        "output_tokens": 20,
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": "not_available",
    }


def test_anthropic_messages_matches_fixture_shape_when_not_streamed(port: int) -> None:
    body = call(port, "/v1/messages", {"model": "m"}).json()
    real = fixture_json("anthropic-messages-nonstream-cache-1h.json")
    assert set(body) == set(real)
    assert set(body["usage"]) == set(real["usage"])
    assert body["content"][0]["type"] == "text"
    assert body["stop_reason"] == "end_turn"


def test_anthropic_messages_uses_defaults_when_no_usage_given(port: int) -> None:
    usage = call(port, "/v1/messages", {"model": "m"}).json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (100, 20)
    assert usage["cache_creation_input_tokens"] == 0


def test_anthropic_messages_returns_400_when_model_missing(port: int) -> None:
    answer = call(port, "/v1/messages", {"max_tokens": 5})
    assert answer.status == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_stream_sends_events_in_order_when_stream_true(port: int) -> None:
    answer = call(
        port,
        "/v1/messages",
        {"model": "claude-x", "stream": True},
        {"x-fake-usage": FULL_USAGE},
    )
    events = sse_json(answer.body)
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert answer.headers["transfer-encoding"] == "chunked"
    assert [name for name, _ in events] == ANTHROPIC_ORDER
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["model"] == "claude-x"
    assert start["usage"]["input_tokens"] == 100
    assert start["usage"]["cache_read_input_tokens"] == 5
    assert start["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == 2
    assert start["usage"]["output_tokens"] == 1
    assert events[-2][1]["usage"] == {
        "input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 5,
        "output_tokens": 20,
        "server_tool_use": {"web_search_requests": 1},
    }


def test_anthropic_stream_pads_data_lines_when_streamed(port: int) -> None:
    raw = call(port, "/v1/messages", {"model": "m", "stream": True}).body
    data_lines = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert any(line.endswith((b"} ", b"  ")) for line in data_lines)
    assert b'data: {"type": "ping"}\n' in raw


def test_anthropic_stream_sends_requested_deltas_when_events_header_set(
    port: int,
) -> None:
    answer = call(
        port, "/v1/messages", {"model": "m", "stream": True}, {"x-fake-events": "12"}
    )
    names = [name for name, _ in sse(answer.body)]
    assert names.count("content_block_delta") == 12


def test_anthropic_stream_ends_with_error_event_when_error_event_header_set(
    port: int,
) -> None:
    answer = call(
        port,
        "/v1/messages",
        {"model": "m", "stream": True},
        {"x-fake-error-event": "1"},
    )
    events = sse_json(answer.body)
    names = [name for name, _ in events]
    assert answer.status == 200
    assert names[-1] == "error"
    assert "content_block_delta" in names
    assert "message_delta" not in names and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "overloaded_error"


def test_anthropic_count_tokens_returns_input_when_usage_header_set(port: int) -> None:
    answer = call(
        port,
        "/v1/messages/count_tokens",
        {"model": "m", "messages": []},
        {"x-fake-usage": "input=42"},
    )
    assert answer.json() == {"input_tokens": 42}


def test_anthropic_models_lists_models_when_get(port: int) -> None:
    answer = call(
        port, "/v1/models", method="GET", headers={"anthropic-version": "2023-06-01"}
    )
    body = answer.json()
    assert body["data"] and all(m["type"] == "model" for m in body["data"])
    assert body["has_more"] is False


# ------------------------------------------------------------------------- openai


def test_openai_chat_reports_exact_usage_when_not_streamed(port: int) -> None:
    body = call(
        port,
        "/v1/chat/completions",
        {"model": "gpt-x", "messages": []},
        {"x-fake-usage": FULL_USAGE},
    ).json()
    real = fixture_json("openai-chat-nonstream-docs.json")
    assert set(body) == set(real)
    assert body["model"] == "gpt-x"
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (105, 20)
    assert usage["total_tokens"] == 125
    assert usage["prompt_tokens_details"]["cached_tokens"] == 5
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 7


def test_openai_chat_stream_sends_usage_chunk_when_include_usage_true(
    port: int,
) -> None:
    request = {
        "model": "gpt-x",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chat_chunks(
        call(port, "/v1/chat/completions", request, {"x-fake-usage": FULL_USAGE}).body
    )
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 105
    assert usage_chunk["usage"]["completion_tokens"] == 20
    assert all(chunk["usage"] is None for chunk in chunks[:-2])
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"


def test_openai_chat_stream_has_no_usage_when_include_usage_absent(port: int) -> None:
    raw = call(port, "/v1/chat/completions", {"model": "gpt-x", "stream": True}).body
    chunks = chat_chunks(raw)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert all(chunk["choices"] for chunk in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == "Hello from the fake provider"


def test_openai_chat_stream_sends_error_line_when_error_event_header_set(
    port: int,
) -> None:
    request = {"model": "gpt-x", "stream": True}
    answer = call(port, "/v1/chat/completions", request, {"x-fake-error-event": "1"})
    chunks = chat_chunks(answer.body)
    assert answer.status == 200
    assert "[DONE]" not in chunks
    assert set(chunks[-1]) == {"error"}
    assert chunks[-1]["error"]["type"] == "server_error"


def test_azure_chat_reports_fixed_model_when_deployment_path(port: int) -> None:
    path = "/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    usage = {"x-fake-usage": "input=9,output=4"}
    body = call(port, path, {"messages": []}, usage).json()
    assert body["model"] == "gpt-4o-2024-11-20"
    assert body["usage"]["prompt_tokens"] == 9
    assert body["usage"]["completion_tokens"] == 4


def test_openai_responses_reports_exact_usage_when_not_streamed(port: int) -> None:
    body = call(
        port,
        "/v1/responses",
        {"model": "gpt-5", "input": "hi"},
        {"x-fake-usage": FULL_USAGE},
    ).json()
    real = fixture_json("openai-responses-nonstream-reasoning.json")
    assert body["model"] == "gpt-5"
    assert body["status"] == "completed"
    assert set(body["usage"]) == set(real["usage"])
    assert body["usage"] == {
        "input_tokens": 105,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 7},
        "total_tokens": 125,
    }


def test_openai_responses_stream_completes_with_usage_when_stream_true(
    port: int,
) -> None:
    answer = call(
        port,
        "/v1/responses",
        {"model": "gpt-5", "stream": True},
        {"x-fake-usage": FULL_USAGE, "x-fake-events": "3"},
    )
    events = sse_json(answer.body)
    names = [name for name, _ in events]
    assert names == (
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        + ["response.output_text.delta"] * 3
        + [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    )
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["response"]["usage"] is None
    final = events[-1][1]["response"]
    assert final["usage"]["input_tokens"] == 105
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 7


def test_openai_responses_stream_fails_when_error_event_header_set(port: int) -> None:
    answer = call(
        port,
        "/v1/responses",
        {"model": "gpt-5", "stream": True},
        {"x-fake-error-event": "1"},
    )
    events = sse_json(answer.body)
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    assert "response.completed" not in names
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["usage"] is None


def test_openai_embeddings_reports_prompt_tokens_when_called(port: int) -> None:
    request = {"model": "text-embedding-3-small", "input": "hi"}
    body = call(port, "/v1/embeddings", request, {"x-fake-usage": "input=11"}).json()
    assert body["object"] == "list"
    assert body["usage"] == {"prompt_tokens": 11, "total_tokens": 11}
    assert len(body["data"][0]["embedding"]) == 8


def test_openai_embeddings_returns_base64_when_encoding_format_base64(
    port: int,
) -> None:
    request = {"model": "e", "input": ["a", "b"], "encoding_format": "base64"}
    body = call(port, "/v1/embeddings", request).json()
    assert len(body["data"]) == 2
    floats = struct.unpack("<8f", base64.b64decode(body["data"][1]["embedding"]))
    assert len(floats) == 8


# ------------------------------------------------------------------------- gemini


def test_gemini_generate_reports_usage_metadata_when_usage_header_set(
    port: int,
) -> None:
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    body = call(port, path, {"contents": []}, {"x-fake-usage": FULL_USAGE}).json()
    meta = body["usageMetadata"]
    assert meta["promptTokenCount"] == 105
    assert meta["cachedContentTokenCount"] == 5
    assert meta["candidatesTokenCount"] == 13
    assert meta["thoughtsTokenCount"] == 7
    assert meta["totalTokenCount"] == 125
    assert body["modelVersion"] == "gemini-2.5-flash"
    assert body["candidates"][0]["finishReason"] == "STOP"


def test_gemini_generate_omits_zero_fields_when_no_cache_or_reasoning(
    port: int,
) -> None:
    path = "/v1/models/gemini-2.5-pro:generateContent"
    usage = {"x-fake-usage": "input=3,output=2"}
    body = call(port, path, {"contents": []}, usage).json()
    meta = body["usageMetadata"]
    assert "cachedContentTokenCount" not in meta
    assert "thoughtsTokenCount" not in meta
    assert (meta["promptTokenCount"], meta["candidatesTokenCount"]) == (3, 2)
    assert body["modelVersion"] == "gemini-2.5-pro"


def test_gemini_generate_decodes_model_when_path_url_encoded(port: int) -> None:
    path = "/v1beta/models%2Fgemini-2.5-flash%3AgenerateContent"
    answer = call(port, path, {"contents": []})
    assert answer.status == 200
    assert answer.json()["modelVersion"] == "gemini-2.5-flash"


def test_gemini_stream_uses_crlf_and_running_totals_when_alt_sse(port: int) -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    answer = call(port, path, {"contents": []}, {"x-fake-usage": FULL_USAGE})
    raw = answer.body
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert raw.endswith(b"\r\n\r\n")
    assert b"\n\n" not in raw.replace(b"\r\n\r\n", b"")
    chunks = [json.loads(data) for _, data in sse(raw, b"\r\n\r\n")]
    counts = [c["usageMetadata"]["candidatesTokenCount"] for c in chunks]
    assert len(chunks) == 5
    assert counts == sorted(counts) and counts[-1] == 13
    assert all(c["usageMetadata"]["promptTokenCount"] == 105 for c in chunks)
    assert all(c["usageMetadata"]["thoughtsTokenCount"] == 7 for c in chunks)
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 125
    assert "finishReason" in chunks[-1]["candidates"][0]


def test_gemini_stream_sends_json_array_when_alt_missing(port: int) -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    answer = call(port, path, {"contents": []}, {"x-fake-events": "3"})
    raw = answer.body
    assert answer.headers["content-type"].startswith("application/json")
    assert raw.startswith(b"[{") and raw.endswith(b"}\r\n]")
    assert raw.count(b"\r\n,{") == 2
    chunks = json.loads(raw)
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks][-1] == 20


# ------------------------------------------------------------------- error status


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/v1/messages", 429, "rate_limit_error"),
        ("/v1/messages", 529, "overloaded_error"),
        ("/v1/messages", 401, "authentication_error"),
        ("/v1/messages", 500, "api_error"),
    ],
)
def test_anthropic_error_has_native_body_when_status_header_set(
    port: int, path: str, status: int, kind: str
) -> None:
    answer = call(
        port, path, {"model": "m", "stream": True}, {"x-fake-status": str(status)}
    )
    body = answer.json()
    assert answer.status == status
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["request_id"].startswith("req_")
    retry = "true" if status in (429, 500, 529) else "false"
    assert answer.headers["x-should-retry"] == retry


@pytest.mark.parametrize(
    ("path", "status", "kind", "code"),
    [
        ("/v1/chat/completions", 401, "invalid_request_error", "invalid_api_key"),
        ("/v1/chat/completions", 429, "requests", "rate_limit_exceeded"),
        ("/v1/responses", 500, "server_error", None),
    ],
)
def test_openai_error_has_native_body_when_status_header_set(
    port: int, path: str, status: int, kind: str, code: str | None
) -> None:
    answer = call(port, path, {"model": "gpt-x"}, {"x-fake-status": str(status)})
    error = answer.json()["error"]
    assert answer.status == status
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (kind, code)


def test_gemini_error_has_native_body_when_status_header_set(port: int) -> None:
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    answer = call(port, path, {"contents": []}, {"x-fake-status": "429"})
    assert answer.status == 429
    assert answer.json()["error"]["code"] == 429
    assert answer.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_control_returns_400_when_usage_header_malformed(port: int) -> None:
    answer = call(port, "/v1/messages", {"model": "m"}, {"x-fake-usage": "bogus=1"})
    assert answer.status == 400
    assert "x-fake-usage" in answer.json()["error"]["message"]


# -------------------------------------------------------------------- compression


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_stream_decodes_to_same_events_when_encoding_set(
    port: int, encoding: str
) -> None:
    feed = decoder(encoding)
    request = {"model": "m", "stream": True}
    plain = call(port, "/v1/messages", request).body
    stream = RawStream(port, "/v1/messages", request, {"x-fake-encoding": encoding})
    try:
        first = feed(stream.next_chunk() or b"")
        rest = []
        while (chunk := stream.next_chunk()) is not None:
            assert chunk, "connection ended before the terminating chunk"
            rest.append(feed(chunk))
    finally:
        stream.close()
    assert stream.headers["content-encoding"] == encoding
    assert first.startswith(b"event: message_start\n") and first.endswith(b"\n\n")
    assert without_ids(first + b"".join(rest)) == without_ids(plain)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_whole_body_is_compressed_when_encoding_set(port: int, encoding: str) -> None:
    feed = decoder(encoding)
    answer = call(
        port,
        "/v1/chat/completions",
        {"model": "gpt-x"},
        {"x-fake-encoding": encoding, "accept-encoding": "identity"},
    )
    assert answer.headers["content-encoding"] == encoding
    assert json.loads(feed(answer.body))["model"] == "gpt-x"


# ------------------------------------------------------------------ stream timing


def test_stream_closes_connection_early_when_cut_after_set(port: int) -> None:
    request = {"model": "m", "stream": True}
    stream = RawStream(port, "/v1/messages", request, {"x-fake-cut-after": "3"})
    try:
        chunks = []
        while (chunk := stream.next_chunk()) not in (None, b""):
            chunks.append(chunk)
        ending = chunk
    finally:
        stream.close()
    assert ending == b"", "server sent a terminating chunk"
    assert [name for name, _ in sse(b"".join(chunks))] == ANTHROPIC_ORDER[:3]


def test_stream_raises_incomplete_read_when_cut_after_set(port: int) -> None:
    with pytest.raises(http.client.IncompleteRead):
        call(
            port,
            "/v1/chat/completions",
            {"model": "gpt-x", "stream": True},
            {"x-fake-cut-after": "2"},
        )


def test_stream_first_event_arrives_before_pause_ends_when_pause_set(port: int) -> None:
    request = {"model": "m", "stream": True}
    headers = {"x-fake-pause-after-first-ms": "1500"}
    stream = RawStream(port, "/v1/messages", request, headers)
    try:
        first = stream.next_chunk() or b""
        first_at = time.monotonic()
        rest = b""
        while (chunk := stream.next_chunk()) not in (None, b""):
            rest += chunk
        end_at = time.monotonic()
    finally:
        stream.close()
    assert first.startswith(b"event: message_start")
    assert b"message_stop" not in first and b"message_stop" in rest
    assert end_at - first_at >= 1.0


def test_stream_takes_longer_when_delay_set(port: int) -> None:
    started = time.monotonic()
    call(
        port,
        "/v1/chat/completions",
        {"model": "gpt-x", "stream": True},
        {"x-fake-delay-ms": "100"},
    )
    assert time.monotonic() - started >= 0.5


def test_reply_waits_before_headers_when_stall_set(port: int) -> None:
    started = time.monotonic()
    answer = call(port, "/v1/messages", {"model": "m"}, {"x-fake-stall-ms": "300"})
    assert answer.status == 200
    assert time.monotonic() - started >= 0.3


# -------------------------------------------------------------------- admin, http


def test_requests_log_records_headers_and_body_when_llm_call_made(port: int) -> None:
    call(port, "/_fake/reset")
    call(
        port,
        "/v1/messages?beta=true",
        {"model": "m", "max_tokens": 3},
        {"X-Custom-Thing": "Abc", "x-api-key": "sk-test"},
    )
    log = call(port, "/_fake/requests", method="GET").json()
    assert log["count"] == 1
    entry = log["requests"][0]
    assert (entry["method"], entry["path"]) == ("POST", "/v1/messages?beta=true")
    assert entry["headers"]["x-custom-thing"] == "Abc"
    assert entry["headers"]["x-api-key"] == "sk-test"
    assert entry["body"] == {"model": "m", "max_tokens": 3}


def test_requests_log_is_empty_when_reset(port: int) -> None:
    call(port, "/v1/messages", {"model": "m"})
    assert call(port, "/_fake/reset").json() == {"ok": True}
    assert call(port, "/_fake/requests", method="GET").json() == {
        "count": 0,
        "requests": [],
    }


def test_requests_log_keeps_size_only_when_body_over_64kb(port: int) -> None:
    call(port, "/_fake/reset")
    request = {"model": "m", "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert call(port, "/v1/messages", request).status == 200
    entry = call(port, "/_fake/requests", method="GET").json()["requests"][0]
    assert re.fullmatch(r"<\d+ bytes>", entry["body"])


def test_server_reads_body_when_request_is_chunked(port: int) -> None:
    call(port, "/_fake/reset")
    pieces = [b'{"model": ', b'"chunky", ', b'"max_tokens": 1}']
    conn = http.client.HTTPConnection(HOST, port, timeout=15)
    try:
        conn.request(
            "POST",
            "/v1/messages",
            body=iter(pieces),
            encode_chunked=True,
            headers={"content-type": "application/json"},
        )
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert body["model"] == "chunky"
    entry = call(port, "/_fake/requests", method="GET").json()["requests"][0]
    assert entry["headers"]["transfer-encoding"] == "chunked"
    assert entry["body"]["model"] == "chunky"


def test_server_reuses_connection_when_keep_alive(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=15)
    try:
        conn.request("POST", "/v1/messages", body=b'{"model":"m","stream":true}')
        conn.getresponse().read()
        first_socket = conn.sock
        conn.request("POST", "/v1/chat/completions", body=b'{"model":"g"}')
        assert conn.getresponse().status == 200
        assert conn.sock is first_socket and first_socket is not None
    finally:
        conn.close()


def test_server_answers_all_when_many_connections_open_at_once(port: int) -> None:
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
        b'content-length: 13\r\n\r\n{"model":"m"}'
    )
    sockets = [socket.create_connection((HOST, port), timeout=15) for _ in range(200)]
    try:
        for sock in sockets:
            sock.sendall(request)
        answers = []
        for sock in sockets:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            answers.append(data)
    finally:
        for sock in sockets:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)


def test_plain_route_returns_text_when_path_is_not_llm(port: int) -> None:
    answer = call(port, "/plain/some/thing?q=1", method="GET")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.body == b"plain:/plain/some/thing"


def test_unknown_path_returns_404_json_when_no_route(port: int) -> None:
    answer = call(port, "/v2/nothing", {"model": "m"})
    assert answer.status == 404
    assert "error" in answer.json()
