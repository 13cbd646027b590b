"""Undo a request body's Content-Encoding as it streams in, holding at most one piece of the output.

A compressed body can expand without limit: 1 GiB of zeros gzips to 1 MB and zstds to 32 KB. So
every decompressor call is capped at PIECE_BYTES of output, and the decoded total is checked against
``max_bytes`` piece by piece: a bomb is refused once it passes the limit, having never been more than
one piece in memory.

zstd is decoded with ``backports.zstd`` (the stdlib ``compression.zstd`` of Python 3.14), whose
``decompress()`` takes a ``max_length``. python-zstandard has no bounded push API: its
``decompressobj().decompress()`` returns everything its input expands to in one bytes object.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from backports import zstd

from handler.base.errors import RunError

PIECE_BYTES = 256 * 1024
# zlib does not keep input it could not use yet: it hands it back as a copy (unconsumed_tail) on every
# call. Feeding it at most this much at a time keeps that copying linear in the size of the chunk.
_GZIP_FEED_BYTES = 64 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# The decoder allocates the window a frame asks for. RFC 9659 caps it at 8 MB for the zstd content
# coding; without a cap a frame could make us allocate up to 128 MiB (or 2 GiB with windowLogMax 31).
_ZSTD_OPTIONS = {zstd.DecompressionParameter.window_log_max: 23}
SUPPORTED = "gzip, zstd or identity"


class Decoder:
    """Feed it the body's chunks in order; it yields the decoded body in pieces of at most PIECE_BYTES.

    Call ``finish()`` (and exhaust it) once the body has ended: it raises if the body was cut short.
    """

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def finish(self) -> Iterator[bytes]:
        raise NotImplementedError


class IdentityDecoder(Decoder):
    """The body as sent, chunk for chunk: the caller limits a raw body's size itself."""

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        if chunk:
            yield chunk

    def finish(self) -> Iterator[bytes]:
        yield from ()


class _Decompressor(Decoder):
    """What gzip and zstd share: the output limit, the error messages and the end-of-body check."""

    name = ""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._total = 0
        self._d = self._new()

    def _new(self):
        raise NotImplementedError

    def _counted(self, piece: bytes) -> Iterator[bytes]:
        if piece:
            self._total += len(piece)
            if self._total > self.max_bytes:
                raise RunError(413, f"decompressed body is larger than {self.max_bytes} bytes")
            yield piece

    def _invalid(self, error: Exception) -> RunError:
        return RunError(400, f"invalid {self.name} body: {error}")

    def finish(self) -> Iterator[bytes]:
        # decode() returns only once the decompressor wants input, so no output is left here. An
        # empty body is not a compressed stream either.
        if not self._d.eof:
            raise RunError(400, f"{self.name} body ends before the compressed stream does")
        yield from ()


class GzipDecoder(_Decompressor):
    """Concatenated members are one body, as gzip(1) has it; anything else after a member is an error."""

    name = "gzip"

    def _new(self):
        return zlib.decompressobj(_GZIP_WBITS)

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        data = memoryview(chunk)
        full = False  # the last call filled its piece, so zlib may hold more output
        while True:
            if self._d.eof:
                if not data:
                    return
                self._d = self._new()  # bytes after a member must start another one
            elif not data and not full:
                return
            feed = data[:_GZIP_FEED_BYTES]
            try:
                piece = self._d.decompress(feed, PIECE_BYTES)
            except zlib.error as e:
                raise self._invalid(e) from None
            # Whatever zlib did not use is a suffix of what it was fed.
            left = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
            data = data[len(feed) - len(left) :]
            full = len(piece) == PIECE_BYTES
            yield from self._counted(piece)


class ZstdDecoder(_Decompressor):
    """Concatenated frames are one body; skippable frames decode to nothing."""

    name = "zstd"

    def _new(self):
        return zstd.ZstdDecompressor(options=_ZSTD_OPTIONS)

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        data = chunk  # bytes the current decompressor has not been given
        while True:
            if self._d.eof:
                if not data:
                    return
                self._d = self._new()  # bytes after a frame must start another one
            elif not data and self._d.needs_input:
                return
            try:
                piece = self._d.decompress(data, PIECE_BYTES)
            except zstd.ZstdError as e:
                raise self._invalid(e) from None
            # The decompressor keeps input it has not used yet, and gives back what follows a frame.
            data = self._d.unused_data if self._d.eof else b""
            yield from self._counted(piece)


def decoder_for(content_encoding: str | None, max_bytes: int) -> Decoder:
    """The decoder for a Content-Encoding header; ``max_bytes`` limits the decompressed body."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return IdentityDecoder()
    if coding in ("gzip", "x-gzip"):
        return GzipDecoder(max_bytes)
    if coding == "zstd":
        return ZstdDecoder(max_bytes)
    raise RunError(415, f"unsupported Content-Encoding {content_encoding[:100]!r}: use {SUPPORTED}")
