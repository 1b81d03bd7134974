"""Anthropic Messages API: request facts, usage from bodies and streams, errors."""

import json
import re
from typing import Any

from ..sse import Event
from ..usage import Usage, count
from .base import (
    RequestFacts,
    Route,
    StreamReader,
    as_dict,
    as_int,
    as_str,
    json_error,
    pop_tags,
)

NAME = "anthropic"
HOSTS = ("api.anthropic.com",)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}

_DELTA_TEXT = re.compile(r'"(?:text|thinking|partial_json)"\s*:\s*"')


def match(path: str) -> Route | None:
    """Recognise Messages endpoints by path (a reverse-mode prefix is allowed)."""
    if path.endswith("/v1/messages"):
        return Route(NAME, "messages")
    if path.endswith("/v1/messages/count_tokens"):
        return Route(NAME, "count_tokens", billable=False)
    if "/v1/messages/batches" in path:
        return Route(NAME, "batches")
    return None


def read_request(route: Route, body: dict[str, Any]) -> RequestFacts:
    facts = RequestFacts(
        model=as_str(body.get("model")),
        stream=body.get("stream") is True,
        max_output_tokens=as_int(body.get("max_tokens")),
    )
    pop_tags(body, facts)
    facts.session = session_from_user_id(as_dict(body.get("metadata")).get("user_id"))
    return facts


def session_from_user_id(user_id: object) -> str | None:
    """Claude Code's session id from `metadata.user_id` (JSON string or legacy form)."""
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            return None
        return as_str(as_dict(parsed).get("session_id"), 128)
    _, sep, session = user_id.rpartition("_session_")
    return session[:128] or None if sep else None


def usage_from(raw: object, into: Usage | None = None) -> Usage:
    """Normalise an Anthropic `usage` object; fields present overwrite `into`."""
    usage = into if into is not None else Usage()
    data = as_dict(raw)
    if "input_tokens" in data:
        usage.input_tokens = count(data["input_tokens"])
    if "output_tokens" in data:
        usage.output_tokens = count(data["output_tokens"])
    if "cache_read_input_tokens" in data:
        usage.cache_read_tokens = count(data["cache_read_input_tokens"])
    creation = as_dict(data.get("cache_creation"))
    flat = count(data.get("cache_creation_input_tokens"))
    if creation:
        five = count(creation.get("ephemeral_5m_input_tokens"))
        hour = count(creation.get("ephemeral_1h_input_tokens"))
        # Some hosts report a zero flat total beside a non-zero split: trust the larger.
        usage.cache_write_5m_tokens = five + max(flat - five - hour, 0)
        usage.cache_write_1h_tokens = hour
    elif "cache_creation_input_tokens" in data:
        # A flat total alone (message_delta repeats it): keep the 1h part already known.
        hour = min(usage.cache_write_1h_tokens, flat)
        usage.cache_write_1h_tokens = hour
        usage.cache_write_5m_tokens = flat - hour
    details = as_dict(data.get("output_tokens_details"))
    if "thinking_tokens" in details:
        usage.reasoning_tokens = count(details["thinking_tokens"])
    tools = as_dict(data.get("server_tool_use"))
    if "web_search_requests" in tools:
        usage.web_search_requests = count(tools["web_search_requests"])
    return usage


def usage_from_body(route: Route, body: object) -> tuple[Usage | None, str | None]:
    data = as_dict(body)
    if "usage" not in data:
        return None, as_str(data.get("model"))
    return usage_from(data["usage"]), as_str(data.get("model"))


class Reader(StreamReader):
    """message_start gives input and cache counts; message_delta is cumulative."""

    def on_event(self, event: Event) -> None:
        if event.event == "content_block_delta":
            # Most events of a stream carry only text: measured, never parsed.
            self.events += 1
            self.text_chars += delta_text_length(event.data)
            return
        super().on_event(event)

    def on_payload(self, name: str, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = as_dict(payload.get("message"))
            self.model = as_str(message.get("model"))
            self.usage = usage_from(message.get("usage"))
        elif kind == "message_delta":
            self.usage = usage_from(payload.get("usage"), self.usage)
        elif kind == "content_block_delta":
            delta = as_dict(payload.get("delta"))
            for name in ("text", "thinking", "partial_json"):
                text = delta.get(name)
                if isinstance(text, str):
                    self.text_chars += len(text)
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            error = as_dict(payload.get("error"))
            self.error = as_str(error.get("type"), 64) or "error"


def error_body(status: int, message: str) -> tuple[int, bytes]:
    kind = ERROR_TYPES.get(status, "api_error")
    return json_error(
        status, {"type": "error", "error": {"type": kind, "message": message}}
    )


def delta_text_length(data: str) -> int:
    """About how many characters of text a content_block_delta event carries."""
    found = _DELTA_TEXT.search(data)
    if found is None:
        return 0
    return max(len(data.rstrip()) - found.end() - len('"}}'), 0)
