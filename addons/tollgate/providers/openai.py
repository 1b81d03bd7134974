"""OpenAI (and Azure OpenAI): chat completions, responses, embeddings."""

from typing import Any

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

NAME = "openai"
HOSTS = ("api.openai.com",)
ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "budget_exceeded"),
    403: ("permission_error", "model_not_allowed"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_ENDPOINTS = {
    "/chat/completions": "chat",
    "/responses": "responses",
    "/embeddings": "embeddings",
    "/completions": "completions",
}


def match(path: str) -> Route | None:
    """`/v1/...` paths and Azure deployment URLs (model chosen by the deployment)."""
    if "/openai/deployments/" in path:
        deployment, _, rest = path.split("/openai/deployments/", 1)[1].partition("/")
        endpoint = _ENDPOINTS.get("/" + rest)
        if endpoint is None:
            return None
        return Route(NAME, endpoint, path_model=deployment or None)
    for suffix, endpoint in _ENDPOINTS.items():
        if path.endswith(("/v1" + suffix, "/openai" + suffix)):
            return Route(NAME, endpoint)
    if path.endswith("/v1/responses/input_tokens"):
        return Route(NAME, "count_tokens", billable=False)
    return None


def read_request(route: Route, body: dict[str, Any]) -> RequestFacts:
    facts = RequestFacts(
        model=as_str(body.get("model")) or route.path_model,
        stream=body.get("stream") is True,
    )
    limit = body.get("max_output_tokens", body.get("max_completion_tokens"))
    facts.max_output_tokens = as_int(
        limit if limit is not None else body.get("max_tokens")
    )
    pop_tags(body, facts)
    if facts.stream and route.endpoint in ("chat", "completions"):
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            # Usage arrives only on request; the extra chunk is kept from the client.
            body["stream_options"] = {**as_dict(options), "include_usage": True}
            facts.usage_injected = True
            facts.changed = True
    return facts


def usage_from(raw: object) -> Usage | None:
    """Normalise chat (`prompt_tokens`) and responses (`input_tokens`) usage."""
    data = as_dict(raw)
    if not data:
        return None
    if "prompt_tokens" in data:
        prompt = count(data.get("prompt_tokens"))
        output = count(data.get("completion_tokens"))
        inputs = as_dict(data.get("prompt_tokens_details"))
        outputs = as_dict(data.get("completion_tokens_details"))
    else:
        prompt = count(data.get("input_tokens"))
        output = count(data.get("output_tokens"))
        inputs = as_dict(data.get("input_tokens_details"))
        outputs = as_dict(data.get("output_tokens_details"))
    cached = min(count(inputs.get("cached_tokens")), prompt)
    return Usage(
        input_tokens=prompt - cached,
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=min(count(outputs.get("reasoning_tokens")), output),
    )


def usage_from_body(route: Route, body: object) -> tuple[Usage | None, str | None]:
    data = as_dict(body)
    return usage_from(data.get("usage")), as_str(data.get("model"))


class ChatReader(StreamReader):
    """Chat chunks: usage only in the final chunk (with `include_usage`)."""

    def on_event(self, event: Any) -> None:
        if event.data.strip() == "[DONE]":
            self.complete = True
            return
        super().on_event(event)

    def on_payload(self, name: str, payload: dict[str, Any]) -> None:
        if "error" in payload:
            self.error = as_str(as_dict(payload["error"]).get("type"), 64) or "error"
            return
        if self.model is None:
            self.model = as_str(payload.get("model"))
        for choice in payload.get("choices") or ():
            content = as_dict(as_dict(choice).get("delta")).get("content")
            if isinstance(content, str):
                self.text_chars += len(content)
        usage = usage_from(payload.get("usage"))
        if usage is not None:
            self.usage = usage


class ResponsesReader(StreamReader):
    """Responses events: usage on the terminal completed/incomplete/failed event."""

    def on_payload(self, name: str, payload: dict[str, Any]) -> None:
        kind = payload.get("type") or name
        delta = payload.get("delta")
        if isinstance(delta, str):
            self.text_chars += len(delta)
        response = as_dict(payload.get("response"))
        if kind == "response.created":
            self.model = as_str(response.get("model"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.model = as_str(response.get("model")) or self.model
            usage = usage_from(response.get("usage"))
            if usage is not None:
                self.usage = usage
            self.complete = kind != "response.failed"
            if kind == "response.failed" and self.error is None:
                self.error = "response.failed"
        elif kind == "error":
            error = as_dict(payload.get("error")) or payload
            self.error = as_str(error.get("code") or error.get("type"), 64) or "error"


def is_usage_chunk(data: str) -> bool:
    """The include_usage chunk: no choices, a usage object."""
    return '"usage"' in data and '"choices":[]' in data.replace(" ", "")


def error_body(status: int, message: str) -> tuple[int, bytes]:
    kind, code = ERROR_TYPES.get(status, ("api_error", "gateway_error"))
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json_error(status, {"error": error})
