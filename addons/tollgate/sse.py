"""Incremental decoding of server-sent events (WHATWG HTML, "event stream" section).

Bytes go in as they arrive, split anywhere; whole events come out. No I/O, no logging.
https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str


class SSEDecoder:
    """Turns a byte stream into events; partial lines wait for the next `feed`."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode `chunk` and return the events it completed."""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        data = self._buffer + chunk if self._buffer else chunk
        events: list[Event] = []
        if b"\r" not in data:  # the usual case: lines end in LF alone
            lines = data.split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                self._line(line, events)
            return events
        start = 0
        size = len(data)
        while start < size:
            lf = data.find(b"\n", start)
            cr = data.find(b"\r", start, lf if lf >= 0 else size)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < size and data[nxt] == 0x0A:
                    nxt += 1
                elif nxt == size:
                    self._pending_cr = True
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(data[start:end], events)
            start = nxt
        self._buffer = data[start:]
        return events

    def flush(self) -> list[Event]:
        """End of stream: an unterminated last line counts, an unfinished event not."""
        events: list[Event] = []
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer = b""
        self._event, self._data = "", []
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if not raw:
            if self._data:
                events.append(Event(self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if raw.startswith(b"data:"):
            payload = raw[6:] if raw.startswith(b"data: ") else raw[5:]
            self._data.append(payload.decode("utf-8", "replace"))
            return
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
