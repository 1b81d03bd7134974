"""The benchmark's load generator: HTTP/1.1 keep-alive clients on asyncio streams.

Stdlib only. Each phase runs a fixed number of connections in a closed loop (send,
read the whole answer, send again) until a call count or a time limit is reached,
and records each call's latency and time to first token. No retries: a failed call
is counted, and its connection is opened again.
"""

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

CALL_TIMEOUT_S = 30.0
MARKER_TAIL = 64


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of call: a body shared by all calls and headers besides the key."""

    name: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    first_token: bytes | None = None  # marks the first token in a streamed answer


@dataclass(slots=True)
class PhaseResult:
    """What one phase measured on one path."""

    calls: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0


def anthropic_workloads(
    events: int, delay_ms: int, large_bytes: int
) -> dict[str, Workload]:
    """Small, streamed (paced, and back to back) and large-context calls."""
    usage = ("x-fake-usage", "input=1200,output=80")
    common = (
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("user-agent", "claude-cli/2.0.0 (external, cli)"),
        ("x-tollgate-tags", "project:bench"),
    )
    small = message_body("Summarise the diff in one line.", stream=False)
    stream = message_body("Write a haiku about queues.", stream=True)
    paced = (("x-fake-events", str(events)), ("x-fake-delay-ms", str(delay_ms)))
    burst = (("x-fake-events", str(events)),)
    token = b"content_block_delta"
    return {
        "small": Workload("small", small, (*common, usage)),
        "stream": Workload("stream", stream, (*common, usage, *paced), token),
        "stream-burst": Workload(
            "stream-burst", stream, (*common, usage, *burst), token
        ),
        "large": Workload("large", large_context_body(large_bytes), (*common, usage)),
    }


def message_body(text: str, *, stream: bool) -> bytes:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }
    return json.dumps(body).encode()


def large_context_body(target_bytes: int) -> bytes:
    """An agent's long context: alternating turns of tool calls and file contents."""
    filler = os.urandom(target_bytes // 2).hex()
    messages: list[dict[str, object]] = []
    used = 0
    turn = 0
    while used < target_bytes - 2048:
        text = filler[used : used + 1536]
        used += len(text) + 120
        turn += 1
        if turn % 2:
            block = {
                "type": "tool_result",
                "tool_use_id": f"toolu_{turn:06d}",
                "content": [{"type": "text", "text": text}],
            }
            messages.append({"role": "user", "content": [block]})
        else:
            reply = [{"type": "text", "text": text}]
            messages.append({"role": "assistant", "content": reply})
    messages.append({"role": "user", "content": "Now fix the failing test."})
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": messages}
    return json.dumps(body).encode()


def request_heads(workload: Workload, keys: Sequence[str], port: int) -> list[bytes]:
    """One request head per key; the body is sent after it unchanged."""
    fixed = "".join(f"{name}: {value}\r\n" for name, value in workload.headers)
    return [
        (
            f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{fixed}"
            f"x-api-key: {key}\r\ncontent-length: {len(workload.body)}\r\n\r\n"
        ).encode()
        for key in keys
    ]


class ProtocolError(Exception):
    """The answer was not HTTP/1.1 as this client reads it."""


async def read_answer(
    reader: asyncio.StreamReader, marker: bytes | None, sent_ns: int
) -> tuple[int, int | None, bool]:
    """Read one whole answer; (status, first-token time in ns, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        first = await read_chunked(reader, marker, sent_ns)
        return int(parts[1]), first, keep
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(parts[1]), None, keep


async def read_chunked(
    reader: asyncio.StreamReader, marker: bytes | None, sent_ns: int
) -> int | None:
    """Consume a chunked body; the time its marker first showed, if asked for."""
    first: int | None = None
    tail = b""
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            return first
        data = await reader.readexactly(size + 2)
        if marker is not None and first is None:
            window = tail + data
            if marker in window:
                first = time.perf_counter_ns() - sent_ns
            tail = window[-MARKER_TAIL:]


class Phase:
    """A closed loop of `concurrency` connections against one port."""

    def __init__(
        self,
        port: int,
        workload: Workload,
        heads: Sequence[bytes],
        *,
        concurrency: int,
        max_calls: int,
        duration_s: float,
    ) -> None:
        self.port = port
        self.workload = workload
        self.heads = heads
        self.concurrency = concurrency
        self.max_calls = max_calls
        self.duration_s = duration_s
        self.result = PhaseResult()
        self._issued = 0
        self._deadline = 0.0

    async def run(self) -> PhaseResult:
        cpu = os.times()
        began = time.perf_counter()
        self._deadline = began + self.duration_s
        await asyncio.gather(*(self._client() for _ in range(self.concurrency)))
        self.result.elapsed_s = time.perf_counter() - began
        after = os.times()
        self.result.client_cpu_s = (after.user - cpu.user) + (after.system - cpu.system)
        return self.result

    def _next_head(self) -> bytes | None:
        if self._issued >= self.max_calls or time.perf_counter() >= self._deadline:
            return None
        head = self.heads[self._issued % len(self.heads)]
        self._issued += 1
        return head

    async def _client(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while (head := self._next_head()) is not None:
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port
                    )
                assert reader is not None
                if not await self._call(reader, writer, head):
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    async def _call(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        """One call; False when the connection cannot be used again."""
        result = self.result
        sent = time.perf_counter_ns()
        try:
            writer.write(head)
            writer.write(self.workload.body)
            async with asyncio.timeout(CALL_TIMEOUT_S):
                answer = read_answer(reader, self.workload.first_token, sent)
                status, first, keep = await answer
        except (
            OSError,
            ValueError,
            EOFError,
            ProtocolError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            result.errors += 1
            return False
        result.calls += 1
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status != 200:
            result.errors += 1
        result.latencies_ms.append((time.perf_counter_ns() - sent) / 1e6)
        if first is not None:
            result.ttfts_ms.append(first / 1e6)
        return keep


def run_phase(
    port: int,
    workload: Workload,
    heads: Sequence[bytes],
    *,
    concurrency: int,
    max_calls: int,
    duration_s: float,
) -> PhaseResult:
    """Run one bounded phase to completion in a fresh event loop."""
    phase = Phase(
        port,
        workload,
        heads,
        concurrency=concurrency,
        max_calls=max_calls,
        duration_s=duration_s,
    )
    return asyncio.run(phase.run())


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
