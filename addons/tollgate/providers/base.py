"""What every provider module offers: request facts, usage readers and error bodies."""

import json
from dataclasses import dataclass, field
from typing import Any

from ..sse import Event
from ..usage import Usage


@dataclass(frozen=True, slots=True)
class Route:
    """A recognised LLM endpoint: which provider, which operation, model in the path."""

    provider: str
    endpoint: str
    path_model: str | None = None
    billable: bool = True


@dataclass(slots=True)
class RequestFacts:
    """What the gateway needs from a request body; `changed` means re-serialise it."""

    model: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    choices: int = 1  # answers asked for (`n`); each may use max_output_tokens
    tags: list[str] = field(default_factory=list)
    session: str | None = None
    usage_injected: bool = False
    changed: bool = False


class StreamReader:
    """Collects usage from the events of one streamed response."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.model: str | None = None
        self.error: str | None = None
        self.complete = False
        self.events = 0
        self.text_chars = 0

    def on_event(self, event: Event) -> None:
        self.events += 1
        try:
            payload = json.loads(event.data)
        except ValueError:
            return
        if isinstance(payload, dict):
            self.on_payload(event.event, payload)

    def on_payload(self, name: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError


def as_dict(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_int(value: object) -> int | None:
    """A non-negative int from JSON, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def as_str(value: object, limit: int = 256) -> str | None:
    """A short string from JSON, or None."""
    if not isinstance(value, str) or not value:
        return None
    return value[:limit]


def pop_tags(body: dict[str, Any], facts: RequestFacts) -> None:
    """Move LiteLLM-style `metadata.tags` out of the body: providers reject it."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or "tags" not in metadata:
        return
    tags = metadata.pop("tags")
    if isinstance(tags, list):
        facts.tags.extend(t for t in tags if isinstance(t, str))
    elif isinstance(tags, str):
        facts.tags.extend(tags.split(","))
    if not metadata:
        del body["metadata"]
    facts.changed = True


def json_error(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()
