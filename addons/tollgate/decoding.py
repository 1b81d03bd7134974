"""Incremental decompression of a response body that arrives in pieces."""

import zlib
from collections.abc import Callable

Decoder = Callable[[bytes], bytes]


def make_decoder(content_encoding: str | None) -> Decoder | None:
    """A function from compressed pieces to plain bytes; None for identity.

    Raises ValueError for an encoding it cannot decode.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if encoding == "deflate":
        return _Deflate().decode
    if encoding == "br":
        import brotli

        return brotli.Decompressor().process  # type: ignore[no-any-return]
    if encoding == "zstd":
        import zstandard

        decoder = zstandard.ZstdDecompressor().decompressobj()
        return decoder.decompress  # type: ignore[no-any-return, unused-ignore]
    raise ValueError(f"unsupported content-encoding {encoding!r}")


class _Deflate:
    """HTTP `deflate` is meant to be zlib-wrapped, but raw deflate is common too."""

    def __init__(self) -> None:
        self._inner: zlib._Decompress | None = None

    def decode(self, data: bytes) -> bytes:
        if self._inner is None:
            raw = not (data[:1] == b"\x78")
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return self._inner.decompress(data)
