"""A minimal HTTP/2 client for tests: many concurrent streams on one TLS connection.

Built on the `h2` state machine that mitmproxy itself depends on; loopback only.
"""

import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False


def post_many(
    port: int,
    ca: Path,
    requests: list[tuple[str, dict[str, str], bytes]],
    timeout_s: float = 30,
) -> list[Answer]:
    """Send every (path, headers, body) at once as streams of one connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        if sock.selected_alpn_protocol() != "h2":
            raise RuntimeError(f"no HTTP/2: {sock.selected_alpn_protocol()!r}")
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        connection.initiate_connection()
        answers: dict[int, Answer] = {}
        for path, headers, body in requests:
            stream = connection.get_next_available_stream_id()
            head = [
                (":method", "POST"),
                (":path", path),
                (":scheme", "https"),
                (":authority", "localhost"),
                ("content-length", str(len(body))),
                *headers.items(),
            ]
            connection.send_headers(stream, head)
            connection.send_data(stream, body, end_stream=True)
            answers[stream] = Answer()
        sock.sendall(connection.data_to_send())
        deadline = time.monotonic() + timeout_s
        while not all(a.ended or a.reset for a in answers.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("streams did not finish")
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                _apply(connection, answers, event)
            sock.sendall(connection.data_to_send())
    return list(answers.values())


def _apply(
    connection: h2.connection.H2Connection, answers: dict[int, Answer], event: object
) -> None:
    if isinstance(event, h2.events.ResponseReceived):
        status = dict(event.headers).get(":status", "0")
        answers[event.stream_id].status = int(status)
    elif isinstance(event, h2.events.DataReceived):
        answers[event.stream_id].body += event.data
        connection.acknowledge_received_data(
            event.flow_controlled_length, event.stream_id
        )
    elif isinstance(event, h2.events.StreamEnded):
        answers[event.stream_id].ended = True
    elif isinstance(event, h2.events.StreamReset):
        answers[event.stream_id].reset = True
