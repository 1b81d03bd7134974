"""Upstream and client faults end to end: every call recorded, every reservation freed.

Bob's budget has room for one reservation at a time (each call asks for 60000
output tokens), so a reservation a fault forgot would refuse his next call; the
`tollgate_budget_reserved_usd` gauge must also read 0 after each fault.
"""

import http.client
import json
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faultkit import wait_for

from harness import FakeProvider, Gateway, free_port, wait_rows

from .h2client import post_many
from .hardening import BODY, KEYS, call, gauge, scrape, start

pytestmark = pytest.mark.e2e

BIG = {**BODY, "max_tokens": 60000}  # reserves about $0.90 of bob's $1.50
USERS = {"bob": "{max_budget: 1.5}"}


@pytest.fixture(scope="module")
def guarded(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, int]]:
    gateway, metrics = start(tmp_path_factory.mktemp("traffic"), fake, USERS)
    yield gateway, metrics
    gateway.close()


def tagged(tag: str, **headers: str) -> dict[str, str]:
    return {"x-tollgate-tags": tag, **headers}


def row_of(gateway: Gateway, tag: str) -> dict[str, Any]:
    rows = wait_rows(gateway.db, 1, f"list_contains(tags, '{tag}')")
    assert len(rows) == 1, gateway.log_text()[-2000:]
    return rows[0]


def raw_stream_request(headers: dict[str, str]) -> bytes:
    """Bob's big streamed call as raw HTTP/1.1, for clients that misbehave."""
    body = json.dumps({**BIG, "stream": True}).encode()
    sent = {
        "host": "x",
        "x-api-key": KEYS["bob"],
        "content-type": "application/json",
        "content-length": str(len(body)),
        **headers,
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in sent.items())
    return f"POST /v1/messages HTTP/1.1\r\n{head}\r\n".encode() + body


def assert_released(gateway: Gateway, metrics: int) -> None:
    """No reservation left behind, and bob's next big call is admitted."""
    assert wait_for(
        lambda: gauge(scrape(metrics), "tollgate_budget_reserved_usd", "user:bob") == 0
    )
    assert call(gateway.port, body=BIG)[0] == 200


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, "api_error"), (503, "api_error"), (529, "overloaded_error")],
    ids=["500", "503", "529"],
)
def test_provider_error_passed_on_and_recorded_when_upstream_fails(
    guarded: tuple[Gateway, int], status: int, kind: str
) -> None:
    gateway, metrics = guarded
    tag = f"t:{status}"
    got, _, body = call(
        gateway.port, body=BIG, headers=tagged(tag, **{"x-fake-status": str(status)})
    )
    assert (got, json.loads(body)["error"]["type"]) == (status, kind)
    row = row_of(gateway, tag)
    assert (row["status"], row["outcome"], row["cost_usd"]) == (
        status,
        "upstream_error",
        0,
    )
    assert_released(gateway, metrics)


def test_cut_stream_reaches_client_and_input_recorded_when_upstream_resets(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, metrics = guarded
    headers = tagged(
        "t:cut", **{"x-fake-cut-after": "3", "x-fake-usage": "input=900,output=50"}
    )
    try:
        status, _, body = call(
            gateway.port, body={**BIG, "stream": True}, headers=headers
        )
        assert status == 200 and b"message_stop" not in body
    except (http.client.HTTPException, OSError):
        pass  # the cut may also reach the client as a broken chunked body
    row = row_of(gateway, "t:cut")
    assert row["outcome"] in ("aborted", "upstream_error")
    assert (row["input_tokens"], row["usage_estimated"]) == (900, True)
    assert_released(gateway, metrics)


def test_stalled_call_recorded_as_aborted_when_client_gives_up(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, metrics = guarded
    with pytest.raises(TimeoutError):
        call(
            gateway.port,
            body=BIG,
            timeout=0.5,
            headers=tagged("t:stall", **{"x-fake-stall-ms": "3000"}),
        )
    row = row_of(gateway, "t:stall")
    # The provider had the request: its input is charged, estimated from the body.
    input_tokens = math.ceil(len(json.dumps(BIG)) / 4)
    assert (row["outcome"], row["usage_estimated"], row["input_tokens"]) == (
        "aborted",
        True,
        input_tokens,
    )
    assert row["cost_usd"] == Decimal(3) * input_tokens / 10**6  # Sonnet: $3/M in
    assert_released(gateway, metrics)


def test_stalled_call_succeeds_when_client_waits(guarded: tuple[Gateway, int]) -> None:
    gateway, metrics = guarded
    status, _, _ = call(
        gateway.port, body=BIG, headers=tagged("t:wait", **{"x-fake-stall-ms": "400"})
    )
    assert status == 200 and row_of(gateway, "t:wait")["outcome"] == "ok"
    assert_released(gateway, metrics)


def test_disconnected_stream_recorded_when_client_leaves_mid_stream(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, metrics = guarded
    headers = {
        "x-tollgate-tags": "t:leave",
        "x-fake-events": "50",
        "x-fake-delay-ms": "30",
    }
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(raw_stream_request(headers))
        received = b""
        while received.count(b"content_block_delta") < 3:
            received += sock.recv(65536)
    row = row_of(gateway, "t:leave")
    assert (row["outcome"], row["usage_estimated"]) == ("aborted", True)
    assert_released(gateway, metrics)


def test_whole_stream_recorded_when_client_reads_slowly(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, metrics = guarded
    headers = {
        "x-tollgate-tags": "t:slow",
        "x-fake-events": "400",
        "x-fake-usage": "input=10,output=400",
        "connection": "close",
    }
    received = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(raw_stream_request(headers))
        while piece := sock.recv(512):
            received += piece
            time.sleep(0.002)
    assert received.count(b"event: content_block_delta") == 400
    assert b"message_stop" in received
    row = row_of(gateway, "t:slow")
    assert (row["outcome"], row["output_tokens"], row["usage_estimated"]) == (
        "ok",
        400,
        False,
    )
    assert_released(gateway, metrics)


def test_every_stream_recorded_when_http2_client_multiplexes(
    guarded: tuple[Gateway, int],
) -> None:
    gateway, metrics = guarded
    body = json.dumps({**BODY, "stream": True}).encode()
    requests = [
        (
            "/v1/messages",
            {
                "x-api-key": KEYS["carol"],
                "content-type": "application/json",
                "x-tollgate-tags": f"t:h2:{i}",
                "x-fake-events": "10",
                "x-fake-delay-ms": "20",
            },
            body,
        )
        for i in range(24)
    ]
    answers = post_many(gateway.port, gateway.ca, requests)
    assert [a.status for a in answers] == [200] * 24
    assert all(a.ended and b"message_stop" in a.body for a in answers)
    rows = wait_rows(gateway.db, 24, "user_id = 'carol'")
    assert sorted(t for r in rows for t in r["tags"]) == sorted(
        f"t:h2:{i}" for i in range(24)
    )
    assert all(r["outcome"] == "ok" for r in rows)
    assert_released(gateway, metrics)


def test_connection_refused_recorded_and_released_when_provider_is_down(
    tmp_path: Path,
) -> None:
    dead = free_port()  # nothing listens there
    upstream = SimpleNamespace(url=f"http://127.0.0.1:{dead}", port=dead)
    gateway, metrics = start(tmp_path, upstream, USERS)
    try:
        answers = [call(gateway.port, body=BIG)[0] for _ in range(3)]
        rows = wait_rows(gateway.db, 3)
        reserved = gauge(scrape(metrics), "tollgate_budget_reserved_usd", "user:bob")
    finally:
        gateway.close()
    assert answers == [502, 502, 502]  # each admitted: nothing stayed reserved
    assert [r["outcome"] for r in rows] == ["aborted"] * 3
    assert reserved == 0


MALFORMED = {
    "junk": (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":'
        b'"claude-sonnet-4-5","usage":{"input_tokens":"12","output_tokens":-5}}}\n\n'
        b"data: {not json\n\n"
        b"\xff\xfe\x00\x01binary\r\r\n\n"
        b'event: message_delta\ndata: {"type":"message_delta","usage":'
        b'{"output_tokens":1e400}}\n\n'
        b"data: " + b"A" * 200_000 + b"\n\n"
    ),
    "no-usage": (
        b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta",'
        b'"delta":{"type":"text_delta","text":"' + b"word " * 400 + b'"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    ),
    "torn": b'event: message_start\ndata: {"type":"message_start","mess',
}


class ScriptedUpstream(socketserver.ThreadingTCPServer):
    """Answers every request with the SSE bytes its `x-script` header names."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptHandler)
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


class ScriptHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        headers: dict[str, str] = {}
        self.rfile.readline()
        while (line := self.rfile.readline().strip()) != b"":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        self.rfile.read(int(headers.get("content-length", "0")))
        script = MALFORMED[headers.get("x-script", "junk")]
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"connection: close\r\n\r\n" + script
        )


@pytest.mark.parametrize("script", sorted(MALFORMED))
def test_malformed_stream_passed_on_unchanged_and_recorded_when_upstream_garbles(
    tmp_path: Path, script: str
) -> None:
    upstream = ScriptedUpstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    gateway, metrics = start(tmp_path, upstream, USERS)
    try:
        status, _, body = call(
            gateway.port, body={**BIG, "stream": True}, headers={"x-script": script}
        )
        [row] = wait_rows(gateway.db, 1)
        reserved = gauge(scrape(metrics), "tollgate_budget_reserved_usd", "user:bob")
    finally:
        gateway.close()
        upstream.shutdown()
        upstream.server_close()
    assert (status, body) == (200, MALFORMED[script])
    assert reserved == 0 and row["cost_usd"] > 0
    assert row["usage_estimated"] is True
    assert row["outcome"] == ("ok" if script == "no-usage" else "upstream_error")
