"""Google Gemini generateContent: model in the path, running-total stream usage."""

import json
from typing import Any
from urllib.parse import unquote

from ..usage import Usage, count, total
from .base import RequestFacts, Route, StreamReader, as_dict, as_int, as_str, json_error

NAME = "gemini"
HOSTS = ("generativelanguage.googleapis.com",)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
}
_METHODS = {
    "generateContent": "generate",
    "streamGenerateContent": "stream_generate",
    "countTokens": "count_tokens",
}


def match(path: str) -> Route | None:
    """`.../models/{model}:{method}`; the model may be URL-encoded or prefixed."""
    head, sep, method = unquote(path).rpartition(":")
    if not sep or method not in _METHODS or "/models/" not in head:
        return None
    model = head.rsplit("/models/", 1)[1]
    endpoint = _METHODS[method]
    return Route(
        NAME, endpoint, path_model=model or None, billable=endpoint != "count_tokens"
    )


def read_request(route: Route, body: dict[str, Any]) -> RequestFacts:
    config = as_dict(body.get("generationConfig"))
    return RequestFacts(
        model=route.path_model,
        stream=route.endpoint == "stream_generate",
        max_output_tokens=as_int(config.get("maxOutputTokens")),
    )


def usage_from(raw: object) -> Usage | None:
    data = as_dict(raw)
    if not data:
        return None
    prompt = count(data.get("promptTokenCount"))
    cached = min(count(data.get("cachedContentTokenCount")), prompt)
    thoughts = count(data.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=total(prompt - cached, count(data.get("toolUsePromptTokenCount"))),
        cache_read_tokens=cached,
        output_tokens=total(count(data.get("candidatesTokenCount")), thoughts),
        reasoning_tokens=thoughts,
    )


def usage_from_body(route: Route, body: object) -> tuple[Usage | None, str | None]:
    data = as_dict(body)
    return usage_from(data.get("usageMetadata")), as_str(data.get("modelVersion"))


class Reader(StreamReader):
    """Every chunk repeats the running totals: the last one wins."""

    def on_payload(self, name: str, payload: dict[str, Any]) -> None:
        if "error" in payload:
            self.error = as_str(as_dict(payload["error"]).get("status"), 64) or "error"
            return
        usage = usage_from(payload.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        self.model = as_str(payload.get("modelVersion")) or self.model
        for candidate in payload.get("candidates") or ():
            if isinstance(candidate, dict) and candidate.get("finishReason"):
                self.complete = True


class JsonArraySplitter:
    """Cuts a streamed JSON array (`[{..},\\r\\n{..}]`) into its top-level objects."""

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._current = bytearray()

    def feed(self, data: bytes) -> list[str]:
        found: list[str] = []
        for byte in data:
            if self._depth == 0 and byte != 0x7B:
                continue
            self._current.append(byte)
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:
                    self._escape = True
                elif byte == 0x22:
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte == 0x7B:
                self._depth += 1
            elif byte == 0x7D:
                self._depth -= 1
                if self._depth == 0:
                    found.append(self._current.decode("utf-8", "replace"))
                    self._current.clear()
        return found


def error_body(status: int, message: str) -> tuple[int, bytes]:
    status_name = STATUS_NAMES.get(status, "INTERNAL")
    error = {"code": status, "message": message, "status": status_name}
    return json_error(status, {"error": error})


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        return as_dict(json.loads(text))
    except ValueError:
        return {}
