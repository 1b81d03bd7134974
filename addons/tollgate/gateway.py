"""The mitmproxy addon: the only module that touches flows, hooks and options.

Each hook hands the flow's facts to the pure modules (providers, admission, meter,
pricing, ledger) and applies their answers to the flow. At shutdown it lets the
calls in flight finish (up to `budget_drain_s`) before the ledger is closed.
"""

import asyncio
import contextlib
import gc
import json
import logging
import time
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import Client

from . import providers
from .admission import Refusal
from .agents import detect_agent, detect_session
from .calls import Call, clean_tags, estimate_stream_usage
from .engine import Engine
from .errors import TollgateError
from .flows import (
    canonical_path,
    carries_virtual_key,
    destination_host,
    drop_virtual_query_values,
    flow_status,
    header_map,
    move_query_key,
    parse_body,
    path_models,
    read_request_json,
    scrub_virtual_keys,
    strip_gateway_headers,
    swap_credential,
    trusted_destination,
    untrusted_refusal,
)
from .identity import VIRTUAL_PREFIX, identify, presented_secret, proxy_secret
from .meter import StreamMeter
from .requestcheck import (
    bad_output_limit,
    body_problem,
    output_choices,
    unmetered_reason,
    widest_output_limit,
)
from .usage import Usage

logger = logging.getLogger(__name__)

CALL = "tollgate.call"
TRUSTED = "tollgate.trusted_destination"
DESTINATION = "tollgate.destination"
UNMETERED = "tollgate.unmetered"
ODD_PATH = "tollgate.odd_path"
# Providers whose last stream event is final: settle on it, before it goes out.
FINAL_EVENT_PROVIDERS = ("anthropic", "openai")


class BudgetGuard:
    """Meters every LLM call and refuses those a policy says no to."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._proxy_tokens: dict[str, str] = {}
        self._inflight: dict[str, http.HTTPFlow] = {}
        self._stopping = False
        self._unmetered_logged: set[str] = set()

    def load(self, loader: Loader) -> None:
        addons = ctx.master.addons
        errorcheck = addons.get("errorcheck")  # type: ignore[no-untyped-call]
        if errorcheck is not None:
            # mitmproxy exits on any ERROR logged before it runs. Tollgate raises
            # for what must stop it (a bad policy); its ERROR lines about a ledger
            # or metrics port that is down at start report a degraded service.
            errorcheck.logger.addFilter(lambda r: not r.name.startswith("tollgate"))
        loader.add_option(
            "budget_policy",
            str,
            "",
            "Policy YAML with budgets, model allow-lists, rate limits and keys, e.g."
            " policies/example.yaml. Empty: the built-in policy that meters every"
            " call and refuses none.",
        )
        loader.add_option(
            "budget_db",
            str,
            "spend.duckdb",
            "DuckDB file of the spend ledger; a journal file sits beside it.",
        )
        loader.add_option(
            "budget_prices",
            str,
            "",
            "Price table YAML (USD per million tokens). Empty: the shipped"
            " policies/prices.yaml.",
        )
        loader.add_option(
            "budget_now",
            str,
            "",
            "Start the budget clock at this ISO 8601 time instead of now, e.g."
            " 2026-01-31T23:59:00+00:00 (for rehearsing window resets).",
        )
        loader.add_option(
            "budget_metrics_port",
            int,
            9464,
            "Port of the Prometheus /metrics endpoint; 0 turns it off.",
        )
        loader.add_option(
            "budget_metrics_host",
            str,
            "127.0.0.1",
            "Address the /metrics endpoint binds to.",
        )
        loader.add_option(
            "budget_drain_s",
            int,
            30,
            "Seconds a stopping gateway (SIGTERM, SIGINT) waits for calls in flight"
            " to finish before it records them as aborted and exits.",
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
            error = exceptions.OptionsError(str(e))  # type: ignore[no-untyped-call]
            raise error from e

    def running(self) -> None:
        if self.engine is not None:
            self.engine.start_background()
        # What exists at start (policy, prices, mitmproxy) lives as long as the
        # process: keep it out of the collector's passes, which then stay short.
        gc.freeze()

    async def done(self) -> None:
        engine = self.engine
        if engine is None:
            return
        self._stopping = True
        await self._drain(engine, ctx.options.budget_drain_s)
        engine.close()
        self.engine = None
        logger.info(
            "tollgate: stopped; %d rows written to %s this run, %d left in its journal",
            engine.ledger.rows_written,
            engine.ledger.path,
            engine.ledger.backlog,
        )

    async def _drain(self, engine: Engine, limit_s: float) -> None:
        """Let calls in flight finish; record those still running at the deadline."""
        if self._inflight:
            logger.info(
                "tollgate: stopping; waiting up to %s s for %d calls in flight",
                limit_s,
                len(self._inflight),
            )
        deadline = time.monotonic() + limit_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._inflight:
            logger.warning(
                "tollgate: %d calls still running at shutdown are recorded"
                " as aborted with what was seen",
                len(self._inflight),
            )
        for flow in list(self._inflight.values()):
            self._finish(flow, aborted="gateway stopped")
        self._inflight.clear()

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
        try:
            self._open_call(flow, engine)
        except Exception:  # an unclassified provider call must not pass unmetered
            logger.exception(
                "tollgate: reading request headers failed for flow %s", flow.id
            )
            flow.response = http.Response.make(
                500, b"Tollgate: internal error", {"content-type": "text/plain"}
            )

    def _open_call(self, flow: http.HTTPFlow, engine: Engine) -> None:
        request = flow.request
        host = destination_host(request)
        route = providers.classify(host, request.path, engine.policy.hosts)
        canonical = providers.classify(
            host, canonical_path(request.path), engine.policy.hosts
        )
        if canonical is not None and (
            route is None
            or (route.provider, route.endpoint)
            != (canonical.provider, canonical.endpoint)
        ):
            # /V1/Messages, /v1%2Fmessages, /v1/x/../messages: a server may read
            # them as the endpoint, so they are metered (or refused) as it.
            flow.metadata[ODD_PATH] = True
            route = replace(canonical, path_model=None)
        if route is not None and route.provider == "gemini":
            move_query_key(request)
        drop_virtual_query_values(request)  # out of the URL before anything logs it
        headers = header_map(request)
        if route is None:
            secret = presented_secret(headers)
            if secret is None or not secret.startswith(VIRTUAL_PREFIX):
                if carries_virtual_key(request):
                    scrub_virtual_keys(request)  # some other header held one
                return
            route = providers.passthrough_route(headers)
        # Decided before any other addon may re-route the request.
        flow.metadata[TRUSTED] = trusted_destination(
            flow, engine.policy.hosts, route.provider
        )
        flow.metadata[DESTINATION] = request.host
        started_s = request.timestamp_start or time.time()
        flow.metadata[CALL] = Call(
            route=route,
            started=engine.wall_time(started_s),
            started_s=started_s,
            agent=detect_agent(headers),
        )
        self._inflight[flow.id] = flow
        if route.billable:
            request.headers["accept-encoding"] = "identity"

    def request(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        engine = self.engine
        if call is None or engine is None or flow.response is not None:
            return
        began = time.perf_counter()
        try:
            if self._stopping:
                refusal = Refusal(
                    503,
                    "stopping",
                    "Tollgate: the gateway is stopping; retry in a moment",
                    retry_after_s=1,
                )
                self._refuse(flow, call, engine, refusal)
            elif flow.metadata.get(ODD_PATH) and engine.limits_apply():
                refusal = Refusal(
                    400,
                    "body",
                    "Tollgate: the path is not in its plain form (case, %-escapes,"
                    " dot segments); send the provider's own spelling",
                )
                self._refuse(flow, call, engine, refusal)
            elif call.route.endpoint in ("other", "batches"):
                self._pass_other(flow, call, engine)
            else:
                self._admit(flow, call, engine)
        except Exception:
            logger.exception("tollgate: admission failed for flow %s", flow.id)
            refusal = Refusal(500, "internal", "Tollgate: internal error")
            self._refuse(flow, call, engine, refusal)
        call.overhead_s += time.perf_counter() - began

    def _pass_other(self, flow: http.HTTPFlow, call: Call, engine: Engine) -> None:
        """Provider traffic outside the metered endpoints: free calls pass (with a
        Tollgate key swapped); calls that would spend unseen are refused where
        limits apply, and recorded as not metered where none do."""
        request = flow.request
        upgrade = request.headers.get("upgrade", "").lower().split(",")
        websocket = "websocket" in (u.strip() for u in upgrade)
        path = canonical_path(request.path)
        unmetered = unmetered_reason(request.method, path, websocket)
        if unmetered is not None and engine.limits_apply():
            refusal = Refusal(400, "unmetered", f"Tollgate: {unmetered}")
            self._refuse(flow, call, engine, refusal)
            return
        if unmetered is not None:
            flow.metadata[UNMETERED] = True
            self._warn_unmetered(request.method, call.route.endpoint, unmetered)
        else:
            call.recorded = True  # free: no ledger row
        strip_gateway_headers(request)
        headers = header_map(request)
        secret = presented_secret(headers)
        if secret is None or not secret.startswith(VIRTUAL_PREFIX):
            scrub_virtual_keys(request)
            return
        principal = identify(engine.policy, secret, None)
        real = engine.policy.provider_keys.get(call.route.provider)
        if principal.refusal is not None:
            self._refuse(
                flow,
                call,
                engine,
                Refusal(401, "auth", f"Tollgate: {principal.refusal}"),
            )
        elif real is None:
            self._refuse(flow, call, engine, engine.missing_provider_key(call))
        elif not flow.metadata.get(TRUSTED):
            self._refuse(
                flow, call, engine, untrusted_refusal(flow.metadata[DESTINATION])
            )
        else:
            swap_credential(request, headers, secret, real, call.route.provider)
            scrub_virtual_keys(request)

    def _warn_unmetered(self, method: str, endpoint: str, why: str) -> None:
        key = f"{method} {why}"
        if key in self._unmetered_logged or len(self._unmetered_logged) >= 100:
            return
        self._unmetered_logged.add(key)
        logger.warning(
            "tollgate: %s; it passed because no limit applies and is"
            " recorded with reason 'not metered'",
            why,
        )

    def _admit(self, flow: http.HTTPFlow, call: Call, engine: Engine) -> None:
        request = flow.request
        headers = header_map(request)
        proxy_token = self._proxy_tokens.get(flow.client_conn.id)
        if proxy_token is None and "proxyauth" in flow.metadata:
            proxy_token = str(flow.metadata["proxyauth"][1])
        secret = presented_secret(headers)
        principal = identify(engine.policy, secret, proxy_token)
        call.principal = principal  # a refusal names the caller, whatever its cause
        header_tags = headers.get("x-tollgate-tags", "").split(",")
        call.tags = clean_tags(header_tags)
        body_bytes = len(request.raw_content or b"")
        if "content-encoding" in headers:  # reserve for what the provider unpacks
            with contextlib.suppress(ValueError):
                body_bytes = len(request.get_content(strict=False) or b"")
        body: dict[str, Any] | None = None
        repeated: list[str] = []
        if call.route.billable or call.route.endpoint == "count_tokens":
            body, repeated = read_request_json(request)
            if body is None and body_bytes:
                refusal = engine.unreadable_body(call)
                if refusal is not None:
                    self._refuse(flow, call, engine, refusal)
                    return
        if body is not None and engine.limits_apply():
            problem = body_problem(
                body, repeated, path_models(call, engine)
            ) or bad_output_limit(call.route.provider, body)
            if problem is not None:
                refusal = Refusal(400, "body", f"Tollgate: {problem}")
                self._refuse(flow, call, engine, refusal)
                return
        if body is not None:
            call.facts = providers.read_request(call.route, body)
            call.facts.max_output_tokens = widest_output_limit(
                call.route.provider, body, call.facts.max_output_tokens
            )
            call.facts.choices = output_choices(body)
        elif call.route.path_model:
            call.facts.model = call.route.path_model
        call.tags = clean_tags(call.facts.tags + header_tags)
        call.session = detect_session(headers, call.facts.session)
        refusal = engine.admit(call, principal, body_bytes)
        if refusal is not None:
            self._refuse(flow, call, engine, refusal)
            return

        strip_gateway_headers(request)
        if principal.swap_key and secret is not None:
            real = engine.policy.provider_keys.get(call.route.provider)
            if real is None:
                self._refuse(flow, call, engine, engine.missing_provider_key(call))
                return
            if not flow.metadata.get(TRUSTED):
                self._refuse(
                    flow, call, engine, untrusted_refusal(flow.metadata[DESTINATION])
                )
                return
            swap_credential(request, headers, secret, real, call.route.provider)
        scrub_virtual_keys(request)
        if body is not None and call.facts.changed:
            request.content = json.dumps(body).encode()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._meter(flow)
        except Exception:  # unmetered bytes still flow; the call settles from its body
            logger.exception("tollgate: metering setup failed for flow %s", flow.id)

    def _meter(self, flow: http.HTTPFlow) -> None:
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
        if call.route.provider in FINAL_EVENT_PROVIDERS:
            call.meter.on_complete = lambda: self._finish(flow, aborted=None)
        response.stream = call.meter

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, aborted=None)
        self._inflight.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        message = flow.error.msg if flow.error else "connection error"
        self._finish(flow, aborted=message)
        self._inflight.pop(flow.id, None)

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
            body_bytes = len(flow.request.raw_content or b"")
            # A billable stream that reports no tokens at all reported nothing.
            known = usage if usage is not None and usage.total_tokens else None
            if aborted is None and reader.error is None and reader.complete:
                outcome = "ok"
                if known is None:  # a finished stream without usage still cost
                    reason = "no usage in stream"
                    usage = estimate_stream_usage(call, None, body_bytes)
            else:
                outcome = "aborted" if aborted else "upstream_error"
                reason = (aborted or reader.error or "stream ended early")[:200]
                usage = estimate_stream_usage(call, known, body_bytes)
        elif aborted is not None:
            outcome, reason = "aborted", aborted[:200]
            server = flow.server_conn
            if call.route.billable and server.timestamp_tcp_setup is not None:
                # it reached the provider, which bills the input it read
                body_bytes = len(flow.request.raw_content or b"")
                usage = estimate_stream_usage(call, None, body_bytes)
        elif status >= 400:
            outcome, reason = "upstream_error", f"HTTP {status}"
        elif flow.metadata.get(UNMETERED):
            outcome, reason = "ok", "not metered"
        else:
            outcome = "ok"
            if call.route.billable and flow.response is not None:
                usage, model = providers.usage_from_body(
                    call.route, parse_body(flow.response)
                )
                if usage is None:
                    outcome, reason = "ok", "no usage in response"
        engine.settle(call, usage, status, outcome, reason, model)

    def _refuse(
        self, flow: http.HTTPFlow, call: Call, engine: Engine, refusal: Refusal
    ) -> None:
        status, body = providers.error_body(
            call.route.provider, refusal.status, refusal.message
        )
        headers = {
            "content-type": "application/json",
            "x-should-retry": "true" if refusal.retry_after_s else "false",
            "x-tollgate-refusal": refusal.reason,
        }
        if refusal.retry_after_s is not None:
            headers["retry-after"] = str(refusal.retry_after_s)
        flow.response = http.Response.make(status, body, headers)
        flow.response.reason = reason_phrase(status)
        if not call.recorded:
            call.recorded = True
            engine.refused(call, refusal)


def reason_phrase(status: int) -> str:
    """The standard reason phrase (mitmproxy's table lacks some, e.g. 429)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
