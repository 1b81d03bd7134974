"""The stream callable: reads usage from every piece and hands the bytes on at once.

Bytes are returned unchanged in the same call, so nothing is held back. The one
exception is an OpenAI chat stream whose usage chunk the gateway asked for on the
client's behalf: there each event is released as soon as its last byte arrives and
the usage chunk is dropped. `on_complete` runs when the stream's final event has
been read and before its bytes go on, so the call is journaled before the client
can see it finish.
"""

import logging
import re
import time
from collections.abc import Callable

from .decoding import Decoder, make_decoder
from .providers.base import StreamReader
from .providers.gemini import JsonArraySplitter
from .providers.openai import is_usage_chunk
from .sse import Event, SSEDecoder

logger = logging.getLogger(__name__)
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class StreamMeter:
    """Feeds a StreamReader from raw response pieces as they pass through."""

    def __init__(
        self,
        reader: StreamReader,
        *,
        content_encoding: str | None,
        json_array: bool = False,
        drop_usage_chunk: bool = False,
    ) -> None:
        self.reader = reader
        self.bytes_seen = 0
        self.first_byte_at: float | None = None
        self.ended = False
        self.broken: str | None = None
        self._sse = SSEDecoder()
        self._array = JsonArraySplitter() if json_array else None
        self._decode: Decoder | None = None
        try:
            self._decode = make_decoder(content_encoding)
        except (ValueError, ImportError) as e:
            self.broken = str(e)
        self._drop = drop_usage_chunk and self._decode is None
        self._held = b""
        self.on_complete: Callable[[], None] | None = None

    def __call__(self, data: bytes) -> bytes:
        if self.first_byte_at is None and data:
            self.first_byte_at = time.time()
        self.bytes_seen += len(data)
        if not data:
            self.ended = True
        if self.broken is None:
            try:
                self._read(data)
            except Exception as e:  # a bad stream must never break the proxy
                self.broken = f"{type(e).__name__}: {e}"[:200]
                logger.warning("stream usage unreadable: %s", self.broken)
        if self.on_complete is not None and self.reader.complete:
            done, self.on_complete = self.on_complete, None
            try:
                done()
            except Exception:  # settling is the gateway's; the bytes still go on
                logger.exception("stream completion hook failed")
        if self._drop:
            return self._release(data)
        return data

    def _read(self, data: bytes) -> None:
        plain = data
        if self._decode is not None:
            plain = self._decode(data) if data else b""
        if self._array is not None:
            for text in self._array.feed(plain):
                self.reader.on_event(Event("message", text))
            return
        events = self._sse.feed(plain) if plain else []
        if not data:
            events += self._sse.flush()
        for event in events:
            self.reader.on_event(event)

    def _release(self, data: bytes) -> bytes:
        """Pass whole events on, minus the usage chunk the client did not ask for."""
        buffer = self._held + data
        if not data:
            self._held = b""
            return buffer
        out = []
        start = 0
        while True:
            found = _EVENT_END.search(buffer, start)
            if found is None:
                break
            event = buffer[start : found.end()]
            if not is_usage_chunk(event.decode("utf-8", "replace")):
                out.append(event)
            start = found.end()
        self._held = buffer[start:]
        return b"".join(out)
