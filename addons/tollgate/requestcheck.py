"""Requests that could slip past metering, and what the gateway says about them.

Pure functions over a request's method, path and body. They find bodies that two
JSON parsers could read differently (a repeated key, a model id in two places or
in odd characters), output limits written in spellings the provider modules skip,
and provider endpoints whose cost the gateway cannot know (batches, images, audio,
WebSocket sessions). The gateway refuses such calls only where limits apply.
"""

import json
import math
import re
from typing import Any

from .pricing import normalize_model

MAX_MODEL_ID = 256
MAX_TOKENS = 10**12
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# Where a provider's priced API lives; a reverse-mode prefix may come first.
_API_PATH = re.compile(r"/(v1|v1beta|v1alpha|openai|ws|upload)/")
# Calls that change state but cost nothing (uploads, cancels, moderation).
_FREE = re.compile(
    r"/v1/files$|/v1/uploads(/.*)?$|/v1/moderations$"
    r"|/v1/(messages/)?batches/[^/]+/cancel$|/v1/responses/[^/]+/cancel$"
    r"|/v1/chat/completions/[^/]+$|/v1beta/files$"
)
_DECODER = json.JSONDecoder()
_scan_string = json.decoder.scanstring  # type: ignore[attr-defined]
_MODEL_ID = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
# Output limits by provider: every spelling its parser accepts (proto JSON takes
# snake_case and camelCase, and numbers written as strings).
_LIMIT_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "anthropic": (("max_tokens",),),
    "openai": (("max_output_tokens",), ("max_completion_tokens",), ("max_tokens",)),
    "gemini": (
        ("generationConfig", "maxOutputTokens"),
        ("generationConfig", "max_output_tokens"),
        ("generation_config", "maxOutputTokens"),
        ("generation_config", "max_output_tokens"),
    ),
}


_CHOICE_KEYS = (
    ("n",),
    ("generationConfig", "candidateCount"),
    ("generationConfig", "candidate_count"),
    ("generation_config", "candidateCount"),
    ("generation_config", "candidate_count"),
)
MAX_CHOICES = 128


def unmetered_reason(method: str, path: str, websocket: bool) -> str | None:
    """Why a provider call outside the metered endpoints would spend unseen, or None."""
    path = path.partition("?")[0]
    if websocket:
        return (
            "a WebSocket session (realtime or live API) is billed as it runs and"
            " cannot be metered"
        )
    if method.upper() in SAFE_METHODS or not _API_PATH.search(path):
        return None
    if _FREE.search(path):
        return None
    if path.endswith("/v1/messages/batches"):
        return (
            "message batches cannot be metered (their cost is known only when the"
            " batch ends); send the requests one by one"
        )
    shown = path if len(path) <= 80 else path[:77] + "..."
    return f"{method.upper()} {shown} cannot be metered"


def body_problem(
    body: dict[str, Any], repeated: list[str], path_models: tuple[str, ...] = ()
) -> str | None:
    """What makes a parsed body unsafe to admit under limits, or None.

    `path_models` are the names the URL gives the model (a Gemini model, an Azure
    deployment and the model it maps to); a body model must be one of them.
    """
    if repeated:
        return (
            f"the request body repeats the top-level key {repeated[0]!r}; parsers"
            " disagree on which one counts, so send each field once"
        )
    model = body.get("model")
    if model is None:
        return None
    if not isinstance(model, str):
        return "the model must be a string"
    if len(model) > MAX_MODEL_ID:
        return f"the model id is longer than {MAX_MODEL_ID} characters"
    if not _MODEL_ID.match(model):
        return (
            f"the model id {ascii(model)} holds spaces, control or non-ASCII"
            " characters, which no provider's model ids use"
        )
    if path_models and normalize_model(model) not in {
        normalize_model(m) for m in path_models
    }:
        return (
            f"the model in the path ({path_models[0]!r}) and in the body ({model!r})"
            " differ (an Azure deployment can be mapped in azure_deployments)"
        )
    return None


def load_object(text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Parse a JSON object in one pass: the object and the top-level keys it repeats.

    The object is what `json.loads` gives (the last of repeated keys wins), or None
    when the text is not one JSON object.
    """
    found: dict[str, Any] = {}
    repeated: list[str] = []
    try:
        i = _skip(text, 0)
        if text[i] != "{":
            return None, []
        i = _skip(text, i + 1)
        while text[i] != "}":
            if text[i] != '"':
                return None, []
            key, i = _scan_string(text, i + 1)
            i = _skip(text, i)
            if text[i] != ":":
                return None, []
            value, i = _DECODER.raw_decode(text, _skip(text, i + 1))
            if key in found and key not in repeated:
                repeated.append(key)
            found[key] = value
            i = _skip(text, i)
            if text[i] == ",":
                i = _skip(text, i + 1)
                if text[i] == "}":
                    return None, []  # a trailing comma
            elif text[i] != "}":
                return None, []
    except (ValueError, IndexError, RecursionError):
        return None, []
    if text[i + 1 :].strip(" \t\r\n"):
        return None, []
    return found, repeated


def widest_output_limit(
    provider: str, body: dict[str, Any], known: int | None
) -> int | None:
    """The largest output limit the provider could read from the body.

    A provider that takes `"max_tokens": "64000"` or a snake_case spelling must not
    leave the reservation at the default, so every accepted form counts.
    """
    found = [known] if known is not None else []
    for keys in _LIMIT_KEYS.get(provider, ()):
        number = lenient_count(_dig(body, keys))
        if number is not None:
            found.append(number)
    return min(max(found), MAX_TOKENS) if found else None


def output_choices(body: dict[str, Any]) -> int:
    """How many answers the call asks for (`n`, `candidateCount`); each may use the
    whole output limit."""
    asked = (lenient_count(_dig(body, keys)) for keys in _CHOICE_KEYS)
    return min(max((n for n in asked if n), default=1), MAX_CHOICES)


def bad_output_limit(provider: str, body: dict[str, Any]) -> str | None:
    """The output limit or choice count given in a form no count can be read from."""
    for keys in (*_LIMIT_KEYS.get(provider, ()), *_CHOICE_KEYS):
        value = _dig(body, keys)
        if value is not None and lenient_count(value) is None:
            shown = (
                ascii(value) if len(ascii(value)) <= 40 else ascii(value)[:37] + "..."
            )
            return f"{'.'.join(keys)} must be a whole number >= 0, got {shown}"
    return None


def _dig(body: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = body
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def lenient_count(value: object) -> int | None:
    """A token count written as an int, a float or a numeric string; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 40:
            return None
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return min(value, MAX_TOKENS) if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return min(math.ceil(value), MAX_TOKENS)
    return None


def _skip(text: str, i: int) -> int:
    while text[i] in " \t\r\n":
        i += 1
    return i
