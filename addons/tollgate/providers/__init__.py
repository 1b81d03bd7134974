"""Provider registry: which host and path is which LLM endpoint, and wire helpers."""

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from ..usage import Usage
from . import anthropic, gemini, openai
from .base import RequestFacts, Route, StreamReader

MODULES: dict[str, ModuleType] = {m.NAME: m for m in (anthropic, openai, gemini)}
KNOWN_HOSTS: dict[str, str] = {h: m.NAME for m in MODULES.values() for h in m.HOSTS}

__all__ = ["RequestFacts", "Route", "StreamReader", "classify", "read_request"]


def classify(host: str, path: str, extra_hosts: Mapping[str, str]) -> Route | None:
    """The LLM endpoint a request is for, or None for traffic to pass untouched.

    Known provider hosts (and hosts declared in the policy) only match their own
    provider's paths; any other host is recognised by the shape of its path.
    """
    path = path.partition("?")[0]
    host = host.lower()
    provider = KNOWN_HOSTS.get(host) or extra_hosts.get(host)
    if provider is None and host.endswith(".openai.azure.com"):
        provider = openai.NAME
    if provider is not None:
        module = MODULES[provider]
        found: Route | None = module.match(path)
        return found or Route(provider, "other", billable=False)
    for module in MODULES.values():
        route: Route | None = module.match(path)
        if route is not None:
            return route
    return None


def passthrough_route(headers: Mapping[str, str]) -> Route:
    """A free provider call on an unknown host, told apart by its headers."""
    if "anthropic-version" in headers or "x-api-key" in headers:
        return Route(anthropic.NAME, "other", billable=False)
    if "x-goog-api-key" in headers:
        return Route(gemini.NAME, "other", billable=False)
    return Route(openai.NAME, "other", billable=False)


def read_request(route: Route, body: dict[str, Any]) -> RequestFacts:
    facts: RequestFacts = MODULES[route.provider].read_request(route, body)
    return facts


def usage_from_body(route: Route, body: object) -> tuple[Usage | None, str | None]:
    result: tuple[Usage | None, str | None] = MODULES[route.provider].usage_from_body(
        route, body
    )
    return result


def stream_reader(route: Route) -> StreamReader:
    if route.provider == openai.NAME:
        if route.endpoint == "responses":
            return openai.ResponsesReader()
        return openai.ChatReader()
    reader: StreamReader = MODULES[route.provider].Reader()
    return reader


def error_body(provider: str, status: int, message: str) -> tuple[int, bytes]:
    make: Callable[[int, str], tuple[int, bytes]] = MODULES[provider].error_body
    return make(status, message)
