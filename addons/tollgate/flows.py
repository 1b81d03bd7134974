"""Helpers over mitmproxy requests for the addon: bodies, destinations, credentials.

They read and change `http.Request` objects and nothing else; the decisions stay in
`gateway.py` and the pure modules.
"""

import base64
import ipaddress
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from . import providers
from .admission import Refusal
from .calls import Call
from .engine import Engine
from .identity import CREDENTIAL_HEADERS, VIRTUAL_PREFIX
from .requestcheck import load_object

GATEWAY_HEADER_PREFIX = "x-tollgate-"
ANTHROPIC_OAUTH_PREFIX = "sk-ant-oat"
_LOOKS_LIKE_IP = re.compile(r"[0-9.]+$|.*:")
_STRIPPED_HEADERS = (GATEWAY_HEADER_PREFIX.encode(), b"proxy-authorization")


def parse_body(message: http.Message) -> dict[str, Any] | None:
    """The JSON object in a message body, or None (never raises)."""
    return read_json(message)[0]


def read_request_json(message: http.Message) -> tuple[dict[str, Any] | None, list[str]]:
    """The JSON object in a request body and the top-level keys it repeats."""
    try:
        content = message.get_content(strict=False)
        if not content:
            return None, []
        text = content.decode(json.detect_encoding(content))
    except (ValueError, UnicodeDecodeError):
        return None, []
    return load_object(text)


def read_json(message: http.Message) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in a message body and its text; (None, "") if there is none."""
    try:
        content = message.get_content(strict=False)
        if not content:
            return None, ""
        text = content.decode(json.detect_encoding(content))
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, ""
    return (data, text) if isinstance(data, dict) else (None, "")


def header_map(request: http.Request) -> dict[str, str]:
    """The request's headers by lower-case name, read in one pass.

    Repeated headers are joined with ", " as `Headers.get` does.
    """
    found: dict[str, str] = {}
    for raw_name, raw_value in request.headers.fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def destination_host(request: http.Request) -> str:
    """Where the request really goes; the Host header only when that is an address.

    In regular and reverse mode `request.host` is the server mitmproxy connects to,
    while the Host header is whatever the client wrote. Transparent mode only knows
    an IP address, so there the header is the best name available.
    """
    host = request.host
    if _LOOKS_LIKE_IP.match(host) is None:
        return host  # a name: no need to parse it as an address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return request.pretty_host


def trusted_destination(
    flow: http.HTTPFlow, extra_hosts: dict[str, str], provider: str
) -> bool:
    """True when `provider`'s key may be sent where this request goes.

    A known provider host takes only its own provider's key. Reverse mode to any
    other host (an internal server, a test double) goes where the operator said;
    the other modes go where the client says, so only provider hosts qualify.
    """
    host = flow.request.host.lower().rstrip(".")
    owner = providers.KNOWN_HOSTS.get(host) or extra_hosts.get(host)
    if owner is None and host.endswith(".openai.azure.com"):
        owner = "openai"
    if owner is not None:
        return owner == provider
    return isinstance(flow.client_conn.proxy_mode, ReverseMode)


def untrusted_refusal(destination: str) -> Refusal:
    return Refusal(
        403,
        "auth",
        "Tollgate: a Tollgate key is exchanged for a provider key only on requests"
        f" to that provider, and this one goes to {destination[:100]!r}",
    )


def path_models(call: Call, engine: Engine) -> tuple[str, ...]:
    """The names the URL gives the model: a Gemini model or an Azure deployment."""
    named = call.route.path_model
    if not named:
        return ()
    mapped = engine.policy.azure_deployments.get(named)
    return (named, mapped) if mapped else (named,)


def flow_status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else 502


def strip_gateway_headers(request: http.Request) -> None:
    """Gateway headers and proxy logins never reach the provider."""
    fields = request.headers.fields
    kept = tuple(
        (name, value)
        for name, value in fields
        if not name.lower().startswith(_STRIPPED_HEADERS)
    )
    if len(kept) != len(fields):
        request.headers.fields = kept


def swap_credential(
    request: http.Request,
    present: Mapping[str, str],
    secret: str,
    real: str,
    provider: str,
) -> None:
    """Put the provider key wherever the client put its Tollgate key, and only there.

    `present` is the request's `header_map`. Anthropic takes API keys in
    `x-api-key` only (a bearer token there is an OAuth token), so a Tollgate key
    sent as `ANTHROPIC_AUTH_TOKEN` moves to `x-api-key`.
    """
    headers = request.headers
    for name in CREDENTIAL_HEADERS:
        value = present.get(name)
        if value is None:
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if token.strip() != secret:
                continue
            if provider == "anthropic" and not real.startswith(ANTHROPIC_OAUTH_PREFIX):
                del headers[name]
                headers["x-api-key"] = real
            else:
                headers[name] = f"{scheme} {real}"
        elif value.strip() == secret:
            headers[name] = real


def move_query_key(request: http.Request) -> None:
    """Move Gemini's `?key=` into `x-goog-api-key`, where no logged URL shows it."""
    key = request.query.get("key")
    if key is None:
        return
    del request.query["key"]
    if "x-goog-api-key" not in request.headers:
        request.headers["x-goog-api-key"] = key


def canonical_path(path: str) -> str:
    """The path as a lenient server may read it: unescaped, dot segments resolved,
    lower case; the query is kept as it is."""
    raw, sep, query = path.partition("?")
    plain = unquote(raw)
    resolved = posixpath.normpath(plain) if plain.startswith("/") else plain
    resolved = "/" + resolved.lstrip("/")
    return resolved.lower() + sep + query


def scrub_virtual_keys(request: http.Request) -> None:
    """A Tollgate key never leaves: credentials and query values holding one go."""
    for name in CREDENTIAL_HEADERS:
        value = request.headers.get(name)
        if value is not None and _holds_virtual_key(name, value):
            del request.headers[name]
    drop_virtual_query_values(request)


def carries_virtual_key(request: http.Request) -> bool:
    """True when any credential header holds a Tollgate key."""
    return any(
        _holds_virtual_key(name, value)
        for name in CREDENTIAL_HEADERS
        if (value := request.headers.get(name)) is not None
    )


def drop_virtual_query_values(request: http.Request) -> None:
    """Remove every query parameter holding a Tollgate key, before anything logs."""
    if "?" not in request.path or VIRTUAL_PREFIX not in request.path:
        return
    fields = request.query.fields
    kept = tuple((k, v) for k, v in fields if VIRTUAL_PREFIX not in v)
    if len(kept) != len(fields):
        request.query.fields = kept


def _holds_virtual_key(name: str, value: str) -> bool:
    if VIRTUAL_PREFIX in value:
        return True
    scheme, _, token = value.partition(" ")
    if name != "authorization" or scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("latin-1")
    except ValueError:
        return False
    return VIRTUAL_PREFIX in decoded
