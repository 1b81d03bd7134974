#!/usr/bin/env python3
"""A local fake LLM provider speaking the Anthropic, OpenAI and Gemini wire formats.

Tollgate's end-to-end tests, README demo and benchmark point the gateway at this
server instead of the real providers. It is a small HTTP/1.1 server on asyncio
streams (stdlib only; `brotli` and `zstandard` are imported only if present and
only needed for `x-fake-encoding: br|zstd`).

    python scripts/fake_provider.py [--host 127.0.0.1] [--port 0] [--delay-ms N]
        [--usage SPEC] [--tls-cert FILE --tls-key FILE]

On start it prints one line, `fake-provider listening on http://127.0.0.1:PORT`.

Request headers that steer a reply (all optional):

    x-fake-usage: input=100,output=20,cache_read=5,cache_write_5m=3,
                  cache_write_1h=2,reasoning=7,web_search=1   (any subset)
    x-fake-status: 400..599        error reply in the provider's own shape
    x-fake-events: N               text deltas in a stream (1..10000, default 5)
    x-fake-delay-ms: N             sleep between stream events
    x-fake-pause-after-first-ms: N sleep after the first stream event
    x-fake-encoding: gzip|br|zstd|deflate|identity
    x-fake-cut-after: N            close the connection after N stream events
    x-fake-error-event: 1          provider-style error event mid-stream
    x-fake-stall-ms: N             sleep before sending the status line

Admin routes: `GET /_fake/requests` (what was received), `POST /_fake/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
import re
import signal
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

try:  # optional: only for x-fake-encoding: br
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None
try:  # optional: only for x-fake-encoding: zstd
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
LOG_MAX_ENTRIES = 10_000
LOG_MAX_BODY_BYTES = 64 * 1024
DEFAULT_EVENTS = 5
MAX_EVENTS = 10_000
MAX_SLEEP_MS = 600_000
ERROR_AFTER_DELTAS = 2
AZURE_MODEL = "gpt-4o-2024-11-20"
WORDS = ("Hello", " from", " the", " fake", " provider", ".")
ANTHROPIC_PADS = (3, 5, 13, 3, 4, 15, 8, 1, 11)
ENCODINGS = ("gzip", "deflate", "br", "zstd")
GEMINI_JSON = ("content-type", "application/json; charset=UTF-8")

_compact = json.JSONEncoder(separators=(",", ":")).encode
_spaced = json.JSONEncoder(separators=(",", ": ")).encode
_pretty = json.JSONEncoder(indent=2).encode


# --------------------------------------------------------------------------- usage


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in the gateway's normalised meaning (see module docstring)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    web_search: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def prompt(self) -> int:
        """OpenAI/Gemini prompt size: uncached input plus cache hits."""
        return self.input + self.cache_read

    @property
    def visible_output(self) -> int:
        """Output without reasoning (Gemini's candidatesTokenCount)."""
        return self.output - self.reasoning


DEFAULT_USAGE = Usage(input=100, output=20)
USAGE_KEYS = frozenset(Usage.__dataclass_fields__)


@lru_cache(maxsize=512)
def parse_usage(spec: str) -> Usage:
    """`input=100,output=20,...` to a Usage; missing keys are 0."""
    values: dict[str, int] = {}
    for part in spec.split(","):
        key, sep, raw = part.strip().partition("=")
        if not key and not sep:
            continue
        key = key.strip()
        if not sep or key not in USAGE_KEYS:
            raise ValueError(f"bad usage item {part.strip()!r}")
        try:
            values[key] = int(raw.strip())
        except ValueError:
            raise ValueError(f"usage {key} must be an integer") from None
        if values[key] < 0:
            raise ValueError(f"usage {key} must not be negative")
    usage = Usage(**values)
    if usage.reasoning > usage.output:
        raise ValueError("usage reasoning must not exceed output")
    return usage


# ------------------------------------------------------------------------- control


class ControlError(ValueError):
    """A malformed x-fake-* request header."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Server-wide defaults set on the command line."""

    usage: Usage = DEFAULT_USAGE
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Control:
    """How to answer one request, read from its x-fake-* headers."""

    usage: Usage = DEFAULT_USAGE
    status: int | None = None
    events: int = DEFAULT_EVENTS
    delay_ms: int = 0
    pause_ms: int = 0
    encoding: str | None = None
    cut_after: int | None = None
    error_event: bool = False
    stall_ms: int = 0


NO_CONTROL = Control()


def _int_header(headers: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ControlError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ControlError(f"{name} must be between {low} and {high}")
    return value


def _encoding_header(headers: dict[str, str]) -> str | None:
    raw = headers.get("x-fake-encoding")
    if raw is None or raw.strip().lower() in ("", "identity"):
        return None
    name = raw.strip().lower()
    if name not in ENCODINGS:
        raise ControlError(f"x-fake-encoding must be one of {', '.join(ENCODINGS)}")
    missing = {"br": brotli, "zstd": zstandard}
    if name in missing and missing[name] is None:
        package = "brotli" if name == "br" else "zstandard"
        logger.error("x-fake-encoding %s asked for; %s is not installed", name, package)
        raise ControlError(f"x-fake-encoding {name} needs the {package!r} package")
    return name


def _usage_header(headers: dict[str, str], settings: Settings) -> Usage:
    spec = headers.get("x-fake-usage")
    if spec is None:
        return settings.usage
    try:
        return parse_usage(spec)
    except ValueError as exc:
        raise ControlError(f"x-fake-usage: {exc}") from None


def parse_control(headers: dict[str, str], settings: Settings) -> Control:
    """Read the x-fake-* headers; raise ControlError on a malformed one."""
    delay = _int_header(headers, "x-fake-delay-ms", 0, MAX_SLEEP_MS)
    events = _int_header(headers, "x-fake-events", 1, MAX_EVENTS)
    pause = _int_header(headers, "x-fake-pause-after-first-ms", 0, MAX_SLEEP_MS)
    stall = _int_header(headers, "x-fake-stall-ms", 0, MAX_SLEEP_MS)
    error_event = headers.get("x-fake-error-event", "0").strip().lower()
    return Control(
        usage=_usage_header(headers, settings),
        status=_int_header(headers, "x-fake-status", 400, 599),
        events=DEFAULT_EVENTS if events is None else events,
        delay_ms=settings.delay_ms if delay is None else delay,
        pause_ms=pause or 0,
        encoding=_encoding_header(headers),
        cut_after=_int_header(headers, "x-fake-cut-after", 0, 10 * MAX_EVENTS),
        error_event=error_event in ("1", "true", "yes"),
        stall_ms=stall or 0,
    )


# ---------------------------------------------------------------------- http layer


class HttpError(Exception):
    """A request the server cannot parse; answered, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    path: str = ""
    query: str = ""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return False


@dataclass(slots=True)
class Reply:
    """A response: a whole body, or `events` written one by one as a stream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: Iterator[bytes] | None = None


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "truncated request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, "malformed header line")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    method, target, version = parts
    path, _, query = target.partition("?")
    return Request(method, target, version, headers, path=path, query=query)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            await _skip_trailers(reader)
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError(413, "request body too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass


async def _read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
) -> bytes:
    headers = request.headers
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = headers.get("content-length")
    if not chunked and length is None:
        return b""
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        return await _read_chunked(reader)
    try:
        size = int(length or "")
    except ValueError:
        raise HttpError(400, "bad content-length") from None
    if size < 0:
        raise HttpError(400, "bad content-length")
    if size > MAX_BODY_BYTES:
        raise HttpError(413, "request body too large")
    return await reader.readexactly(size)


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on a connection, or None when the client closed it."""
    head = await _read_head(reader)
    if head is None:
        return None
    request = _parse_head(head)
    try:
        request.body = await _read_body(reader, writer, request)
    except ValueError:  # readline over the stream limit
        raise HttpError(400, "chunk line too long") from None
    return request


@lru_cache(maxsize=128)
def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


def _head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return _status_line(status) + lines.encode("latin-1") + b"\r\n"


# ------------------------------------------------------------------- compression


class Encoder(Protocol):
    """Compresses a whole body, or a stream piece by piece with a flush each time."""

    def whole(self, data: bytes) -> bytes: ...

    def piece(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Identity:
    def whole(self, data: bytes) -> bytes:
        return data

    def piece(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._obj = zlib.compressobj(6, zlib.DEFLATED, wbits)

    def whole(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_FINISH)

    def piece(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self) -> None:
        self._obj = brotli.Compressor(quality=5)

    def whole(self, data: bytes) -> bytes:
        return bytes(brotli.compress(data, quality=5))

    def piece(self, data: bytes) -> bytes:
        return bytes(self._obj.process(data) + self._obj.flush())

    def finish(self) -> bytes:
        return bytes(self._obj.finish())


class _Zstd:
    def __init__(self) -> None:
        self._obj = zstandard.ZstdCompressor().compressobj()

    def whole(self, data: bytes) -> bytes:
        return bytes(zstandard.ZstdCompressor().compress(data))

    def piece(self, data: bytes) -> bytes:
        flushed = self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return bytes(self._obj.compress(data) + flushed)

    def finish(self) -> bytes:
        return bytes(self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))


def make_encoder(name: str | None) -> Encoder:
    """An encoder for a Content-Encoding name (None = identity)."""
    if name == "gzip":
        return _Zlib(31)
    if name == "deflate":
        return _Zlib(15)
    if name == "br":
        return _Brotli()
    if name == "zstd":
        return _Zstd()
    return _Identity()


# --------------------------------------------------------------- reply building


@dataclass(slots=True)
class Call:
    """What a provider handler gets: the request, its JSON body and its controls."""

    request: Request
    payload: Any
    control: Control
    request_id: str
    serial: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return self.payload if isinstance(self.payload, dict) else {}


def json_reply(status: int, obj: Any, headers: list[tuple[str, str]]) -> Reply:
    """A whole JSON body."""
    body = _compact(obj).encode()
    return Reply(status, [("content-type", "application/json"), *headers], body)


def stream_reply(
    content_type: str, events: Iterator[bytes], headers: list[tuple[str, str]]
) -> Reply:
    """A streamed body, one event at a time."""
    base = [("content-type", content_type), ("cache-control", "no-cache")]
    return Reply(200, [*base, *headers], events=events)


@lru_cache(maxsize=64)
def text_pieces(count: int) -> tuple[str, ...]:
    """The deterministic text deltas of a reply with `count` events."""
    return tuple(WORDS[i % len(WORDS)] for i in range(count))


def stream_pieces(control: Control) -> tuple[tuple[str, ...], bool]:
    """The deltas to send and whether a mid-stream error follows them."""
    pieces = text_pieces(control.events)
    if control.error_event:
        return pieces[:ERROR_AFTER_DELTAS], True
    return pieces, False


def _sse(event: str, data: dict[str, Any], pad: int = 0) -> bytes:
    return f"event: {event}\ndata: {_compact(data)}{' ' * pad}\n\n".encode()


def _data_line(data: dict[str, Any]) -> bytes:
    return f"data: {_compact(data)}\n\n".encode()


# ------------------------------------------------------------------------ errors

ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request (fake provider)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low (fake provider)."),
    403: ("permission_error", "Your API key does not have permission (fake)."),
    404: ("not_found_error", "Not found (fake provider)."),
    413: ("request_too_large", "Request exceeds the maximum size (fake)."),
    429: ("rate_limit_error", "This request would exceed your rate limit (fake)."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out (fake provider)."),
    529: ("overloaded_error", "Overloaded"),
}
OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request (fake provider)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key (fake)."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Denied."),
    404: ("invalid_request_error", "model_not_found", "Not found (fake provider)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (fake provider)."),
    500: ("server_error", None, "The server had an error (fake provider)."),
    503: ("server_error", None, "The engine is currently overloaded (fake)."),
}
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _should_retry(status: int) -> str:
    return "true" if status in (408, 409, 429) or status >= 500 else "false"


def anthropic_error(status: int, message: str | None, request_id: str) -> Reply:
    fallback = ANTHROPIC_ERRORS[500 if status >= 500 else 400]
    kind, default = ANTHROPIC_ERRORS.get(status, fallback)
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": request_id,
    }
    headers = [("request-id", request_id), ("x-should-retry", _should_retry(status))]
    return json_reply(status, body, headers)


def openai_error(status: int, message: str | None, request_id: str) -> Reply:
    fallback = OPENAI_ERRORS[500 if status >= 500 else 400]
    kind, code, default = OPENAI_ERRORS.get(status, fallback)
    error = {"message": message or default, "type": kind, "param": None, "code": code}
    return json_reply(status, {"error": error}, [("x-request-id", request_id)])


def gemini_error(status: int, message: str | None, request_id: str) -> Reply:
    fallback = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
    name = GEMINI_STATUSES.get(status, fallback)
    text = message or f"{name} (fake provider)"
    error = {"code": status, "message": text, "status": name}
    body = (_pretty({"error": error}) + "\n").encode()
    return Reply(status, [GEMINI_JSON], body)


def plain_error(status: int, message: str | None, request_id: str) -> Reply:
    text = f"plain error {status}: {message or 'x-fake-status'}"
    return Reply(status, [("content-type", "text/plain; charset=utf-8")], text.encode())


ERROR_BUILDERS: dict[str, Callable[[int, str | None, str], Reply]] = {
    "anthropic": anthropic_error,
    "openai": openai_error,
    "gemini": gemini_error,
    "plain": plain_error,
}


def error_reply(provider: str, status: int, message: str | None, rid: str) -> Reply:
    """An error in the shape the given provider uses."""
    return ERROR_BUILDERS[provider](status, message, rid)


def not_found(request: Request) -> Reply:
    message = f"no route for {request.method} {request.path}"
    error = {"type": "not_found", "message": message}
    return json_reply(404, {"error": error}, [])


# --------------------------------------------------------------------- anthropic


def _anthropic_input_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m,
            "ephemeral_1h_input_tokens": usage.cache_write_1h,
        },
    }


def _anthropic_final_usage(usage: Usage) -> dict[str, Any]:
    return {
        **_anthropic_input_usage(usage),
        "output_tokens": usage.output,
        "server_tool_use": {
            "web_search_requests": usage.web_search,
            "web_fetch_requests": 0,
        },
        "service_tier": "standard",
        "inference_geo": "not_available",
    }


def _anthropic_delta_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.output,
        "server_tool_use": {"web_search_requests": usage.web_search},
    }


def _anthropic_message(call: Call, model: str, text: str) -> dict[str, Any]:
    return {
        "model": model,
        "id": f"msg_01FAKE{call.serial:018d}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_final_usage(call.control.usage),
    }


def _anthropic_start(call: Call, model: str) -> bytes:
    usage = call.control.usage
    message = {
        "model": model,
        "id": f"msg_01FAKE{call.serial:018d}",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            **_anthropic_input_usage(usage),
            "output_tokens": 1,
            "service_tier": "standard",
            "inference_geo": "not_available",
        },
    }
    return _sse("message_start", {"type": "message_start", "message": message}, 3)


def anthropic_events(call: Call, model: str) -> Iterator[bytes]:
    """message_start .. message_stop, or an error event after the first deltas."""
    pieces, fails = stream_pieces(call.control)
    yield _anthropic_start(call, model)
    block = {"type": "text", "text": ""}
    start = {"type": "content_block_start", "index": 0, "content_block": block}
    yield _sse("content_block_start", start, 5)
    yield b'event: ping\ndata: {"type": "ping"}\n\n'
    for i, piece in enumerate(pieces):
        delta = {"type": "text_delta", "text": piece}
        data = {"type": "content_block_delta", "index": 0, "delta": delta}
        yield _sse("content_block_delta", data, ANTHROPIC_PADS[i % len(ANTHROPIC_PADS)])
    if fails:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        data = {"type": "error", "error": error, "request_id": call.request_id}
        yield _sse("error", data)
        return
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0}, 8)
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    usage = _anthropic_delta_usage(call.control.usage)
    data = {"type": "message_delta", "delta": stop, "usage": usage}
    yield _sse("message_delta", data, 13)
    yield _sse("message_stop", {"type": "message_stop"}, 14)


def anthropic_messages(call: Call) -> Reply:
    """POST /v1/messages."""
    if not isinstance(call.payload, dict):
        message = "Request body must be a JSON object."
        return anthropic_error(400, message, call.request_id)
    model = call.body.get("model")
    if not isinstance(model, str) or not model:
        return anthropic_error(400, "model: Field required", call.request_id)
    headers = [("request-id", call.request_id)]
    if call.body.get("stream") is True:
        events = anthropic_events(call, model)
        return stream_reply("text/event-stream; charset=utf-8", events, headers)
    text = "".join(text_pieces(call.control.events))
    return json_reply(200, _anthropic_message(call, model, text), headers)


def anthropic_count_tokens(call: Call) -> Reply:
    """POST /v1/messages/count_tokens: the `input` count of the usage."""
    body = {"input_tokens": call.control.usage.input}
    return json_reply(200, body, [("request-id", call.request_id)])


ANTHROPIC_MODELS = [
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-01T00:00:00Z"),
]
OPENAI_MODELS = [("gpt-4o-2024-11-20", 1732000000), ("gpt-5-2025-08-07", 1754500000)]


def _anthropic_model_list() -> dict[str, Any]:
    data = [
        {"type": "model", "id": mid, "display_name": name, "created_at": created}
        for mid, name, created in ANTHROPIC_MODELS
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"],
        "last_id": data[-1]["id"],
    }


def _openai_model_list() -> dict[str, Any]:
    data = [
        {"id": mid, "object": "model", "created": created, "owned_by": "system"}
        for mid, created in OPENAI_MODELS
    ]
    return {"object": "list", "data": data}


def models_list(call: Call) -> Reply:
    """GET /v1/models: Anthropic's list unless the client looks like OpenAI's."""
    headers = call.request.headers
    if "anthropic-version" not in headers and "authorization" in headers:
        headers = [("x-request-id", call.request_id)]
        return json_reply(200, _openai_model_list(), headers)
    return json_reply(200, _anthropic_model_list(), [("request-id", call.request_id)])


# ------------------------------------------------------------------ openai chat


def _chat_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.output,
        "total_tokens": usage.prompt + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completion(call: Call, model: str) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": "".join(text_pieces(call.control.events)),
        "refusal": None,
        "annotations": [],
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": f"chatcmpl-FAKE{call.serial:016d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _chat_usage(call.control.usage),
        "service_tier": "default",
    }


AZURE_FILTER_CHUNK = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
}


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chat_chunk_base(call: Call, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-FAKE{call.serial:016d}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake000001",
    }


def chat_events(call: Call, model: str, azure: bool) -> Iterator[bytes]:
    """Chat completion chunks, the optional usage chunk, then [DONE]."""
    pieces, fails = stream_pieces(call.control)
    base = _chat_chunk_base(call, model)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data_line({**base, "choices": [choice], "usage": None})

    if azure:
        yield _data_line(AZURE_FILTER_CHUNK)
    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in pieces:
        yield chunk({"content": piece})
    if fails:
        error = {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        yield _data_line({"error": error})
        return
    yield chunk({}, "stop")
    if _wants_usage(call.body):
        usage = _chat_usage(call.control.usage)
        yield _data_line({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _chat(call: Call, model: str, azure: bool) -> Reply:
    headers = [("x-request-id", call.request_id)]
    if call.body.get("stream") is True:
        events = chat_events(call, model, azure)
        return stream_reply("text/event-stream; charset=utf-8", events, headers)
    return json_reply(200, _chat_completion(call, model), headers)


def _openai_model(call: Call) -> str | None:
    model = call.body.get("model")
    return model if isinstance(model, str) and model else None


def openai_chat(call: Call) -> Reply:
    """POST /v1/chat/completions."""
    model = _openai_model(call)
    if model is None:
        return openai_error(400, "you must provide a model parameter", call.request_id)
    return _chat(call, model, azure=False)


def azure_chat(call: Call) -> Reply:
    """POST /openai/deployments/{deployment}/chat/completions."""
    return _chat(call, AZURE_MODEL, azure=True)


# ------------------------------------------------------------- openai responses


def _responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.output,
    }


RESPONSE_TEMPLATE: dict[str, Any] = {
    "object": "response",
    "background": False,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "model": "",
    "output": [],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "safety_identifier": None,
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": None,
    "user": None,
    "metadata": {},
}


def _response_object(
    call: Call, model: str, status: str, **extra: Any
) -> dict[str, Any]:
    head = {
        "id": f"resp_FAKE{call.serial:040d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
    }
    return {**head, **RESPONSE_TEMPLATE, "model": model, **extra}


def _output_message(call: Call, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_output_text(text)]
    return {
        "id": f"msg_FAKE{call.serial:040d}",
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _completed_response(call: Call, model: str, text: str) -> dict[str, Any]:
    output = [_output_message(call, "completed", text)]
    usage = _responses_usage(call.control.usage)
    return _response_object(call, model, "completed", output=output, usage=usage)


def responses_events(call: Call, model: str) -> Iterator[bytes]:
    """The Responses API lifecycle, each event with a sequence_number."""
    pieces, fails = stream_pieces(call.control)
    counter = itertools.count()
    item_id = f"msg_FAKE{call.serial:040d}"
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **data: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(counter), **data})

    pending = _response_object(call, model, "in_progress")
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    yield event(
        "response.output_item.added",
        output_index=0,
        item=_output_message(call, "in_progress", None),
    )
    yield event("response.content_part.added", **where, part=_output_text(""))
    for piece in pieces:
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    if fails:
        yield from _responses_failure(call, model, event)
        return
    text = "".join(pieces)
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=_output_text(text))
    yield event(
        "response.output_item.done",
        output_index=0,
        item=_output_message(call, "completed", text),
    )
    yield event("response.completed", response=_completed_response(call, model, text))


def _responses_failure(
    call: Call, model: str, event: Callable[..., bytes]
) -> Iterator[bytes]:
    message = "The server had an error while processing your request."
    error = {
        "type": "server_error",
        "code": "server_error",
        "message": message,
        "param": None,
    }
    yield event("error", error=error)
    failed = _response_object(
        call, model, "failed", error={"code": "server_error", "message": message}
    )
    yield event("response.failed", response=failed)


def openai_responses(call: Call) -> Reply:
    """POST /v1/responses."""
    model = _openai_model(call)
    if model is None:
        message = "Missing required parameter: 'model'."
        return openai_error(400, message, call.request_id)
    headers = [("x-request-id", call.request_id)]
    if call.body.get("stream") is True:
        events = responses_events(call, model)
        return stream_reply("text/event-stream; charset=utf-8", events, headers)
    text = "".join(text_pieces(call.control.events))
    return json_reply(200, _completed_response(call, model, text), headers)


# ----------------------------------------------------------- openai embeddings

EMBEDDING = (0.0123, -0.0456, 0.0789, -0.0135, 0.0246, -0.0357, 0.0468, -0.0579)
EMBEDDING_BASE64 = base64.b64encode(struct.pack("<8f", *EMBEDDING)).decode()


def _embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def _embeddings(call: Call, model: str) -> Reply:
    vector: Any = EMBEDDING_BASE64
    if call.body.get("encoding_format") != "base64":
        vector = list(EMBEDDING)
    data = [
        {"object": "embedding", "index": i, "embedding": vector}
        for i in range(_embedding_inputs(call.body))
    ]
    tokens = call.control.usage.input
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    return json_reply(200, body, [("x-request-id", call.request_id)])


def openai_embeddings(call: Call) -> Reply:
    """POST /v1/embeddings: prompt_tokens is the `input` count."""
    model = _openai_model(call)
    if model is None:
        return openai_error(400, "you must provide a model parameter", call.request_id)
    return _embeddings(call, model)


def azure_embeddings(call: Call) -> Reply:
    """POST /openai/deployments/{deployment}/embeddings."""
    return _embeddings(call, "text-embedding-3-small")


# ------------------------------------------------------------------------ gemini


def _gemini_usage(usage: Usage, candidates: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"promptTokenCount": usage.prompt}
    if usage.cache_read:
        meta["cachedContentTokenCount"] = usage.cache_read
    meta["candidatesTokenCount"] = candidates
    meta["totalTokenCount"] = usage.prompt + candidates + usage.reasoning
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.prompt}]
    if usage.cache_read:
        cached = [{"modality": "TEXT", "tokenCount": usage.cache_read}]
        meta["cacheTokensDetails"] = cached
    if usage.reasoning:
        meta["thoughtsTokenCount"] = usage.reasoning
    return meta


def _gemini_chunk(call: Call, text: str, candidates: int, last: bool) -> dict[str, Any]:
    content = {"parts": [{"text": text}], "role": "model"}
    candidate: dict[str, Any] = {"content": content}
    if last:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": _gemini_usage(call.control.usage, candidates),
        "modelVersion": call.params["model"],
        "responseId": f"FAKE{call.serial:018d}",
    }


def gemini_chunks(call: Call) -> Iterator[dict[str, Any]]:
    """Response chunks, usage a running total in each; an error object may end them."""
    pieces, fails = stream_pieces(call.control)
    visible = call.control.usage.visible_output
    total = len(text_pieces(call.control.events))
    for i, piece in enumerate(pieces):
        last = i + 1 == total
        yield _gemini_chunk(call, piece, visible * (i + 1) // total, last)
    if fails:
        message = "An internal error has occurred (fake provider)."
        yield {"error": {"code": 500, "message": message, "status": "INTERNAL"}}


def gemini_sse_events(call: Call) -> Iterator[bytes]:
    """`?alt=sse`: `data: {...}` events separated by CRLF CRLF."""
    for chunk in gemini_chunks(call):
        yield f"data: {_spaced(chunk)}\r\n\r\n".encode()


def gemini_array_events(call: Call) -> Iterator[bytes]:
    """No `alt=sse`: one JSON array, element by element."""
    separator = "["
    for chunk in gemini_chunks(call):
        yield f"{separator}{_spaced(chunk)}".encode()
        separator = "\r\n,"
    yield b"\r\n]"


def gemini_generate(call: Call) -> Reply:
    """POST /v1beta/models/{model}:generateContent."""
    text = "".join(text_pieces(call.control.events))
    visible = call.control.usage.visible_output
    body = _pretty(_gemini_chunk(call, text, visible, True)) + "\n"
    return Reply(200, [GEMINI_JSON], body.encode())


def gemini_stream(call: Call) -> Reply:
    """POST /v1beta/models/{model}:streamGenerateContent[?alt=sse]."""
    if "alt=sse" in call.request.query.split("&"):
        return stream_reply("text/event-stream", gemini_sse_events(call), [])
    return stream_reply(GEMINI_JSON[1], gemini_array_events(call), [])


def gemini_count_tokens(call: Call) -> Reply:
    """POST /v1beta/models/{model}:countTokens."""
    body = {"totalTokens": call.control.usage.prompt}
    return Reply(200, [GEMINI_JSON], (_pretty(body) + "\n").encode())


# ------------------------------------------------------------------------ plain


def plain(call: Call) -> Reply:
    """Any method on /plain/...: `plain:` + path, for non-LLM pass-through checks."""
    body = f"plain:{call.request.path}".encode()
    return Reply(200, [("content-type", "text/plain; charset=utf-8")], body)


# ----------------------------------------------------------------------- routing

Handler = Callable[[Call], Reply]


@dataclass(frozen=True, slots=True)
class Route:
    """Which provider answers a path, and how."""

    provider: str
    handler: Handler
    params: dict[str, str] = field(default_factory=dict)


STATIC_ROUTES: dict[tuple[str, str], tuple[str, Handler]] = {
    ("POST", "/v1/messages"): ("anthropic", anthropic_messages),
    ("POST", "/v1/messages/count_tokens"): ("anthropic", anthropic_count_tokens),
    ("GET", "/v1/models"): ("anthropic", models_list),
    ("POST", "/v1/chat/completions"): ("openai", openai_chat),
    ("POST", "/v1/responses"): ("openai", openai_responses),
    ("POST", "/v1/embeddings"): ("openai", openai_embeddings),
}
AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")
AZURE_HANDLERS = {"chat/completions": azure_chat, "embeddings": azure_embeddings}
GEMINI_PATH = re.compile(
    r"^/(?:v1beta|v1|v1alpha)/(.+):(generateContent|streamGenerateContent|countTokens)$"
)
GEMINI_HANDLERS = {
    "generateContent": gemini_generate,
    "streamGenerateContent": gemini_stream,
    "countTokens": gemini_count_tokens,
}


def _gemini_model(resource: str) -> str:
    return resource[len("models/") :] if resource.startswith("models/") else resource


def _provider_for_models(request: Request) -> str:
    headers = request.headers
    if "anthropic-version" not in headers and "authorization" in headers:
        return "openai"
    return "anthropic"


def find_route(request: Request) -> Route | None:
    """The route for a request, or None (404)."""
    path = request.path
    if path.startswith("/openai/v1/"):
        path = path[len("/openai") :]
    static = STATIC_ROUTES.get((request.method, path))
    if static is not None:
        provider = static[0]
        if static[1] is models_list:
            provider = _provider_for_models(request)
        return Route(provider, static[1])
    if path.startswith("/plain/") or path == "/plain":
        return Route("plain", plain)
    if request.method != "POST":
        return None
    return _pattern_route(path)


def _pattern_route(path: str) -> Route | None:
    azure = AZURE_PATH.match(path)
    if azure:
        params = {"deployment": unquote(azure.group(1))}
        return Route("openai", AZURE_HANDLERS[azure.group(2)], params)
    gemini = GEMINI_PATH.match(unquote(path))
    if gemini:
        params = {"model": _gemini_model(gemini.group(1))}
        return Route("gemini", GEMINI_HANDLERS[gemini.group(2)], params)
    return None


# ----------------------------------------------------------------- request log


def parse_json(body: bytes) -> Any:
    """The JSON value of a body, or None if it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


class RequestLog:
    """The last LOG_MAX_ENTRIES requests, for GET /_fake/requests."""

    def __init__(self, limit: int = LOG_MAX_ENTRIES) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self.count = 0

    def add(self, request: Request, payload: Any) -> None:
        size = len(request.body)
        body = payload if size < LOG_MAX_BODY_BYTES else f"<{size} bytes>"
        self.count += 1
        self._entries.append(
            {
                "seq": self.count,
                "method": request.method,
                "path": request.target,
                "headers": dict(request.headers),
                "body": body,
                "body_bytes": size,
            }
        )

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count, "requests": list(self._entries)}

    def clear(self) -> None:
        self._entries.clear()
        self.count = 0


# ------------------------------------------------------------------------ server


class FakeProvider:
    """Answers connections: parse, route, reply, repeat while keep-alive holds."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.log = RequestLog()
        self._serials = itertools.count(1)

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """asyncio.start_server callback for one client connection."""
        try:
            await self._serve(reader, writer)
        except HttpError as exc:
            await self._refuse(writer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("client went away")
        except Exception:  # keep serving other clients whatever happens here
            logger.exception("error while answering a request")
        finally:
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            request = await read_request(reader, writer)
            if request is None:
                return
            reply, control = self.dispatch(request)
            if not await self._send(writer, request, reply, control):
                return

    async def _refuse(self, writer: asyncio.StreamWriter, exc: HttpError) -> None:
        error = {"type": "bad_request", "message": str(exc)}
        body = _compact({"error": error}).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            writer.write(_head_bytes(exc.status, headers) + body)
            await writer.drain()
        except ConnectionError:
            pass

    def dispatch(self, request: Request) -> tuple[Reply, Control]:
        """The reply for a request and the controls that shape its delivery."""
        if request.path.startswith("/_fake/"):
            return self._admin(request), NO_CONTROL
        payload = parse_json(request.body)
        self.log.add(request, payload)
        route = find_route(request)
        if route is None:
            return not_found(request), NO_CONTROL
        serial = next(self._serials)
        request_id = f"req_011FAKE{serial:016d}"
        try:
            control = parse_control(request.headers, self.settings)
        except ControlError as exc:
            return error_reply(route.provider, 400, str(exc), request_id), NO_CONTROL
        if control.status is not None:
            reply = error_reply(route.provider, control.status, None, request_id)
            return reply, control
        call = Call(request, payload, control, request_id, serial, route.params)
        return route.handler(call), control

    def _admin(self, request: Request) -> Reply:
        if request.method == "GET" and request.path == "/_fake/requests":
            return json_reply(200, self.log.snapshot(), [])
        if request.method == "POST" and request.path == "/_fake/reset":
            self.log.clear()
            return json_reply(200, {"ok": True}, [])
        return not_found(request)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        request: Request,
        reply: Reply,
        control: Control,
    ) -> bool:
        """Write a reply; True if the connection can take another request."""
        if control.stall_ms:
            await asyncio.sleep(control.stall_ms / 1000)
        headers = list(reply.headers)
        if control.encoding:
            headers.append(("content-encoding", control.encoding))
        if reply.events is None:
            return await self._send_whole(writer, request, reply, control, headers)
        return await self._send_stream(writer, request, reply, control, headers)

    async def _send_whole(
        self,
        writer: asyncio.StreamWriter,
        request: Request,
        reply: Reply,
        control: Control,
        headers: list[tuple[str, str]],
    ) -> bool:
        body = make_encoder(control.encoding).whole(reply.body)
        headers.append(("content-length", str(len(body))))
        keep = request.keep_alive and control.cut_after is None
        if not keep:
            headers.append(("connection", "close"))
        if control.cut_after is not None:
            body = body[: len(body) // 2]
        writer.write(_head_bytes(reply.status, headers) + body)
        await writer.drain()
        return keep

    async def _send_stream(
        self,
        writer: asyncio.StreamWriter,
        request: Request,
        reply: Reply,
        control: Control,
        headers: list[tuple[str, str]],
    ) -> bool:
        assert reply.events is not None
        chunked = request.version == "HTTP/1.1"
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            headers.append(("connection", "close"))
        writer.write(_head_bytes(reply.status, headers))
        await writer.drain()
        encoder = make_encoder(control.encoding)
        sent = await _pump(writer, reply.events, control, encoder, chunked)
        if control.cut_after is not None:
            logger.debug("cutting the connection after %d events", sent)
            return False
        await _write_piece(writer, encoder.finish(), chunked)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return chunked and request.keep_alive


async def _pump(
    writer: asyncio.StreamWriter,
    events: Iterator[bytes],
    control: Control,
    encoder: Encoder,
    chunked: bool,
) -> int:
    """Write events as they are produced, honouring delays and cut-after."""
    sent = 0
    for event in events:
        if control.cut_after is not None and sent >= control.cut_after:
            break
        if sent and control.delay_ms:
            await asyncio.sleep(control.delay_ms / 1000)
        await _write_piece(writer, encoder.piece(event), chunked)
        sent += 1
        if sent == 1 and control.pause_ms:
            await asyncio.sleep(control.pause_ms / 1000)
    return sent


async def _write_piece(
    writer: asyncio.StreamWriter, data: bytes, chunked: bool
) -> None:
    if not data:
        return
    writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    await writer.drain()


# ------------------------------------------------------------------ entry points


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    settings: Settings | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, int]:
    """Start listening in the running event loop; (server, bound port)."""
    provider = FakeProvider(settings)
    server = await asyncio.start_server(
        provider.handle_connection,
        host,
        port,
        limit=MAX_HEAD_BYTES,
        ssl=tls,
        backlog=1024,
    )
    bound = int(server.sockets[0].getsockname()[1])
    return server, bound


async def _shutdown(server: asyncio.Server) -> None:
    server.close()
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await server.wait_closed()


class BackgroundServer:
    """A fake provider on its own event-loop thread, for in-process use."""

    def __init__(self, host: str, port: int, settings: Settings | None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        starting = start(host, port, settings)
        future = asyncio.run_coroutine_threadsafe(starting, self._loop)
        self._server, self.port = future.result(timeout=10)

    def close(self) -> None:
        """Stop listening, drop open connections and end the thread."""
        done = asyncio.run_coroutine_threadsafe(_shutdown(self._server), self._loop)
        done.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def start_background(
    host: str = "127.0.0.1", port: int = 0, settings: Settings | None = None
) -> tuple[BackgroundServer, int]:
    """Run a fake provider in a thread; (handle with .close(), bound port)."""
    server = BackgroundServer(host, port, settings)
    return server, server.port


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise SystemExit("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT; print the listening line once bound."""
    settings = Settings(usage=args.usage, delay_ms=args.delay_ms)
    tls = _tls_context(args.tls_cert, args.tls_key)
    server, port = await start(args.host, args.port, settings, tls)
    scheme = "https" if tls else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fake-provider listening on {scheme}://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("stopping")
    await _shutdown(server)
    return 0


def _usage_arg(spec: str) -> Usage:
    try:
        return parse_usage(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--delay-ms", type=int, default=0, help="default delay between stream events"
    )
    parser.add_argument(
        "--usage",
        type=_usage_arg,
        default=DEFAULT_USAGE,
        help="default usage, e.g. input=100,output=20",
    )
    parser.add_argument("--tls-cert", help="PEM certificate (serve https)")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
