"""SSEDecoder: the same events however the bytes are cut."""

from pathlib import Path

import pytest

from tollgate.sse import Event, SSEDecoder

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = [
    "anthropic-messages-stream-basic.sse",
    "anthropic-messages-stream-websearch.sse",
    "openai-chat-stream-include-usage.sse",
    "openai-responses-stream-text.sse",
    "gemini-streamgeneratecontent-basic.sse",
]


def decode(*pieces: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.flush()


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_yields_same_events_when_cut_at_every_offset(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    whole = decode(raw)
    assert whole
    for cut in range(len(raw) + 1):
        assert decode(raw[:cut], raw[cut:]) == whole, cut


def test_decoder_yields_same_events_when_fed_byte_by_byte() -> None:
    raw = (FIXTURES / "anthropic-messages-stream-cache.sse").read_bytes()
    assert decode(*[raw[i : i + 1] for i in range(len(raw))]) == decode(raw)


def test_decoder_reads_fields_when_lines_end_in_cr_lf_or_cr() -> None:
    raw = b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata:3\n: comment\n\n"
    assert decode(raw) == [Event("a", "1"), Event("b", "2"), Event("message", "3")]


def test_decoder_joins_data_lines_when_event_has_several() -> None:
    assert decode(b"data: x\ndata: y\n\n") == [Event("message", "x\ny")]


def test_decoder_drops_unfinished_event_when_stream_ends_without_blank_line() -> None:
    assert decode(b"data: done\n\ndata: partial") == [Event("message", "done")]


def test_decoder_keeps_cr_split_from_lf_when_cut_between_them() -> None:
    assert decode(b"data: 1\r", b"\n\r\n") == [Event("message", "1")]


def test_decoder_replaces_bad_utf8_when_bytes_are_invalid() -> None:
    assert decode(b"data: \xff\n\n") == [Event("message", "\ufffd")]
