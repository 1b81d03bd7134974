"""The mitmproxy addon: the only module that touches flows, hooks and options.

Each hook hands the flow's facts to the pure modules (providers, admission, meter,
pricing, ledger) and applies their answers to the flow.
"""

import json
import logging
import time
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import Client

from . import providers
from .admission import Refusal
from .agents import detect_agent, detect_session
from .calls import Call, clean_tags, estimate_stream_usage, to_row
from .engine import Engine
from .errors import TollgateError
from .identity import VIRTUAL_PREFIX, identify, presented_secret, proxy_secret
from .meter import StreamMeter
from .usage import Usage

logger = logging.getLogger(__name__)

GATEWAY_HEADER_PREFIX = "x-tollgate-"
CALL = "tollgate.call"


class BudgetGuard:
    """Meters every LLM call and refuses those a policy says no to."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._proxy_tokens: dict[str, str] = {}

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "budget_policy", str, "",
            "Policy YAML with budgets, model allow-lists, rate limits and keys, e.g."
            " policies/example.yaml. Empty: the built-in policy that meters every"
            " call and refuses none.",
        )
        loader.add_option(
            "budget_db", str, "spend.duckdb",
            "DuckDB file of the spend ledger; a journal file sits beside it.",
        )
        loader.add_option(
            "budget_prices", str, "",
            "Price table YAML (USD per million tokens). Empty: the shipped"
            " policies/prices.yaml.",
        )
        loader.add_option(
            "budget_now", str, "",
            "Start the budget clock at this ISO 8601 time instead of now, e.g."
            " 2026-01-31T23:59:00+00:00 (for rehearsing window resets).",
        )
        loader.add_option(
            "budget_metrics_port", int, 9464,
            "Port of the Prometheus /metrics endpoint; 0 turns it off.",
        )
        loader.add_option(
            "budget_metrics_host", str, "127.0.0.1",
            "Address the /metrics endpoint binds to.",
        )

    def configure(self, updated: set[str]) -> None:
        if ctx.options.connection_strategy != "lazy":
            # Local refusals need the upstream connection to wait for the request.
            ctx.options.connection_strategy = "lazy"
        try:
            if self.engine is None:
                self.engine = Engine.from_options(ctx.options)
            else:
                self.engine.reconfigure(ctx.options, updated)
        except TollgateError as e:
            raise exceptions.OptionsError(str(e)) from e  # type: ignore[no-untyped-call]

    def running(self) -> None:
        if self.engine is not None:
            self.engine.start_background()

    def done(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def http_connect(self, flow: http.HTTPFlow) -> None:
        token = proxy_secret(flow.request.headers.get("proxy-authorization"))
        if token is not None:
            self._proxy_tokens[flow.client_conn.id] = token

    def client_disconnected(self, client: Client) -> None:
        self._proxy_tokens.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        engine = self.engine
        if engine is None:
            return
        request = flow.request
        route = providers.classify(request.pretty_host, request.path, engine.policy.hosts)
        if route is None:
            secret = presented_secret(request.headers, request.query)
            if secret is None or not secret.startswith(VIRTUAL_PREFIX):
                return
            route = providers.passthrough_route(request.headers)
        started_s = request.timestamp_start or time.time()
        flow.metadata[CALL] = Call(
            route=route,
            started=engine.wall_time(started_s),
            started_s=started_s,
            agent=detect_agent(request.headers),
        )
        if route.billable:
            request.headers["accept-encoding"] = "identity"

    def request(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        engine = self.engine
        if call is None or engine is None or flow.response is not None:
            return
        began = time.perf_counter()
        try:
            if call.route.endpoint == "other":
                self._pass_other(flow, call, engine)
            else:
                self._admit(flow, call, engine)
        except Exception:
            logger.exception("tollgate: admission failed for flow %s", flow.id)
            refusal = Refusal(500, "internal", "Tollgate: internal error")
            self._refuse(flow, call, engine, refusal)
        call.overhead_s += time.perf_counter() - began

    def _pass_other(self, flow: http.HTTPFlow, call: Call, engine: Engine) -> None:
        """Provider traffic that costs nothing: only a Tollgate key is swapped."""
        call.recorded = True
        request = flow.request
        strip_gateway_headers(request)
        secret = presented_secret(request.headers, request.query)
        if secret is None or not secret.startswith(VIRTUAL_PREFIX):
            return
        principal = identify(engine.policy, secret, None)
        real = engine.policy.provider_keys.get(call.route.provider)
        if principal.refusal is not None:
            self._refuse(flow, call, engine, Refusal(401, "auth", f"Tollgate: {principal.refusal}"))
        elif real is None:
            self._refuse(flow, call, engine, engine.missing_provider_key(call))
        else:
            swap_credential(request, real)

    def _admit(self, flow: http.HTTPFlow, call: Call, engine: Engine) -> None:
        request = flow.request
        body_bytes = len(request.raw_content or b"")
        body: dict[str, Any] | None = None
        if call.route.billable or call.route.endpoint == "count_tokens":
            body = parse_body(request)
            if body is None and body_bytes:
                refusal = engine.unreadable_body(call)
                if refusal is not None:
                    self._refuse(flow, call, engine, refusal)
                    return
        if body is not None:
            call.facts = providers.read_request(call.route, body)
        elif call.route.path_model:
            call.facts.model = call.route.path_model
        header_tags = request.headers.get("x-tollgate-tags", "")
        call.tags = clean_tags(call.facts.tags + header_tags.split(","))
        call.session = detect_session(request.headers, call.facts.session)

        proxy_token = self._proxy_tokens.get(flow.client_conn.id)
        if proxy_token is None and "proxyauth" in flow.metadata:
            proxy_token = str(flow.metadata["proxyauth"][1])
        secret = presented_secret(request.headers, request.query)
        principal = identify(engine.policy, secret, proxy_token)
        refusal = engine.admit(call, principal, body_bytes)
        if refusal is not None:
            self._refuse(flow, call, engine, refusal)
            return

        strip_gateway_headers(request)
        if principal.swap_key:
            real = engine.policy.provider_keys.get(call.route.provider)
            if real is None:
                self._refuse(flow, call, engine, engine.missing_provider_key(call))
                return
            swap_credential(request, real)
        if body is not None and call.facts.changed:
            request.content = json.dumps(body).encode()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        response = flow.response
        if call is None or response is None or call.recorded or not call.route.billable:
            return
        content_type = response.headers.get("content-type", "")
        json_array = call.route.endpoint == "stream_generate" and "json" in content_type
        if "text/event-stream" not in content_type and not json_array:
            return
        call.facts.stream = True
        call.meter = StreamMeter(
            providers.stream_reader(call.route),
            content_encoding=response.headers.get("content-encoding"),
            json_array=json_array,
            drop_usage_chunk=call.facts.usage_injected,
        )
        response.stream = call.meter

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, aborted=None)

    def error(self, flow: http.HTTPFlow) -> None:
        message = flow.error.msg if flow.error else "connection error"
        self._finish(flow, aborted=message)

    def _finish(self, flow: http.HTTPFlow, aborted: str | None) -> None:
        call: Call | None = flow.metadata.get(CALL)
        engine = self.engine
        if call is None or engine is None or call.recorded:
            return
        call.recorded = True
        began = time.perf_counter()
        try:
            self._settle(flow, call, engine, aborted)
        except Exception:
            logger.exception("tollgate: settling flow %s failed", flow.id)
            engine.settle(call, None, flow_status(flow), "aborted", "internal", None)
        engine.observe_overhead(call.overhead_s + time.perf_counter() - began)

    def _settle(
        self, flow: http.HTTPFlow, call: Call, engine: Engine, aborted: str | None
    ) -> None:
        status = flow_status(flow)
        usage: Usage | None = None
        model: str | None = None
        meter = call.meter
        reason: str | None = None
        if meter is not None:
            reader = meter.reader
            usage, model = reader.usage, reader.model
            if aborted is None and reader.error is None and reader.complete:
                outcome = "ok"
            else:
                outcome = "aborted" if aborted else "upstream_error"
                reason = (aborted or reader.error or "stream ended early")[:200]
                usage = estimate_stream_usage(call, usage, len(flow.request.raw_content or b""))
        elif aborted is not None:
            outcome, reason = "aborted", aborted[:200]
        elif status >= 400:
            outcome, reason = "upstream_error", f"HTTP {status}"
        else:
            outcome = "ok"
            if call.route.billable and flow.response is not None:
                usage, model = providers.usage_from_body(call.route, parse_body(flow.response))
                if usage is None:
                    outcome, reason = "ok", "no usage in response"
        engine.settle(call, usage, status, outcome, reason, model)

    def _refuse(
        self, flow: http.HTTPFlow, call: Call, engine: Engine, refusal: Refusal
    ) -> None:
        status, body = providers.error_body(call.route.provider, refusal.status, refusal.message)
        headers = {
            "content-type": "application/json",
            "x-should-retry": "true" if refusal.retry_after_s else "false",
            "x-tollgate-refusal": refusal.reason,
        }
        if refusal.retry_after_s is not None:
            headers["retry-after"] = str(refusal.retry_after_s)
        flow.response = http.Response.make(status, body, headers)
        if not call.recorded:
            call.recorded = True
            engine.refused(call, refusal)


def parse_body(message: http.Message) -> dict[str, Any] | None:
    """The JSON object in a message body, or None (never raises)."""
    try:
        content = message.get_content(strict=False)
        if not content:
            return None
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def flow_status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else 502


def strip_gateway_headers(request: http.Request) -> None:
    """Gateway headers and proxy logins never reach the provider."""
    for name in list(request.headers.keys()):
        if name.lower().startswith(GATEWAY_HEADER_PREFIX):
            del request.headers[name]
    request.headers.pop("proxy-authorization", None)


def swap_credential(request: http.Request, real: str) -> None:
    """Put the provider key where the client put its Tollgate key."""
    headers = request.headers
    if "x-api-key" in headers:
        headers["x-api-key"] = real
    elif "authorization" in headers:
        headers["authorization"] = f"Bearer {real}"
    elif "x-goog-api-key" in headers:
        headers["x-goog-api-key"] = real
    elif "api-key" in headers:
        headers["api-key"] = real
    elif "key" in request.query:
        request.query["key"] = real

