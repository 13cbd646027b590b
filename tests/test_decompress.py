"""Content-Encoding decoding alone: round trips in any chunking, refusals, and bombs in bounded memory."""

from __future__ import annotations

import gzip
import io
import itertools
import random
import tracemalloc
import zlib

import pytest
import zstandard
from backports import zstd

from handler.base.errors import RunError
from handler.runs.decompress import PIECE_BYTES, IdentityDecoder, decoder_for

MiB = 1 << 20
GiB = 1 << 30
# Structured text (so it compresses well and 1-byte chunks stay cheap) around some incompressible
# bytes; 2.6 MB, so it decodes into many pieces.
BODY = (
    b'[{"name": "llm", "inputs": {"prompt": "hi"}},'
    + random.Random(7).randbytes(40_000)
    + b'{"name": "chain", "outputs": {"x": 1}}' * 70_000
    + b"]"
)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def decode_all(encoding: str | None, chunks, max_bytes: int = 1 << 40) -> list[bytes]:
    decoder = decoder_for(encoding, max_bytes)
    pieces = []
    for chunk in chunks:
        pieces += decoder.decode(chunk)
    return pieces + list(decoder.finish())


def decode_error(encoding: str, chunks, max_bytes: int = 1 << 40) -> RunError:
    with pytest.raises(RunError) as caught:
        decode_all(encoding, chunks, max_bytes)
    return caught.value


def zstd_streamed(data: bytes) -> bytes:
    """As the langsmith SDK compresses: one frame written through stream_writer, size unknown."""
    buffer = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(buffer, closefd=False) as writer:
        for piece in chunked(data, 100_000):
            writer.write(piece)
    return buffer.getvalue()


def zstd_compressobj(data: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join([compressor.compress(piece) for piece in chunked(data, 100_000)] + [compressor.flush()])


def zstd_sized(data: bytes) -> bytes:
    """One-shot compression writes the content size into the frame header."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def zeros_compressed(compressor, size: int) -> bytes:
    """``size`` zeros compressed a MiB at a time, so the bomb is never in memory decompressed."""
    zeros = bytes(MiB)
    return b"".join([compressor.compress(zeros) for _ in range(size // MiB)] + [compressor.flush()])


ENCODERS = {
    "gzip": gzip.compress,
    "gzip-members": lambda d: b"".join(gzip.compress(p) for p in chunked(d, 200_000)),
    "zstd-stream-writer": zstd_streamed,
    "zstd-compressobj": zstd_compressobj,
    "zstd-sized": zstd_sized,
    "zstd-frames": lambda d: b"".join(
        f(p) for f, p in zip(itertools.cycle([zstd_streamed, zstd_sized]), chunked(d, 200_000))
    ),
}


def coding(encoder: str) -> str:
    return encoder.split("-")[0]


def test_the_encoders_make_what_their_names_say():
    """Otherwise the round trips below would not cover what they claim to."""
    assert zstandard.frame_content_size(zstd_streamed(BODY)) == -1
    assert zstandard.frame_content_size(zstd_compressobj(BODY)) == -1
    assert zstandard.frame_content_size(zstd_sized(BODY)) == len(BODY)
    members = len(chunked(BODY, 200_000))
    assert ENCODERS["gzip-members"](BODY).count(b"\x1f\x8b\x08") == members == 14
    assert ENCODERS["zstd-frames"](BODY).count(zstandard.FRAME_HEADER) == members
    assert ENCODERS["zstd-frames"](BODY[:300_000]).count(zstandard.FRAME_HEADER) == 2


@pytest.mark.parametrize("size", [1, 1000, 64 * 1024, 10 * MiB])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_round_trip_in_any_chunking(encoder, size):
    compressed = ENCODERS[encoder](BODY)
    if size == 1:
        compressed = ENCODERS[encoder](BODY[:300_000])  # keeps the 1-byte feed fast
    pieces = decode_all(coding(encoder), chunked(compressed, size))
    assert b"".join(pieces) == (BODY if size != 1 else BODY[:300_000])
    assert max(map(len, pieces)) <= PIECE_BYTES


def test_a_large_chunk_comes_out_in_full_pieces():
    """One chunk that decodes to 2.6 MB comes out whole, in pieces."""
    for encoding, compressed in [("gzip", gzip.compress(BODY)), ("zstd", zstd_streamed(BODY))]:
        decoder = decoder_for(encoding, len(BODY))
        pieces = list(decoder.decode(compressed))
        assert b"".join(pieces) == BODY
        assert len(pieces) >= len(BODY) // PIECE_BYTES
        assert list(decoder.finish()) == []


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_each_chunk_yields_all_it_decodes_to(encoding):
    """Output the decompressor holds back after a capped call must come out now, not with the next chunk.

    Each 997-byte chunk of zeros decodes to several pieces; an unbounded decompressor fed the same
    chunks says how much each one decodes to.
    """
    if encoding == "gzip":
        compressed = zeros_compressed(zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), 64 * MiB)
        reference = zlib.decompressobj(16 + zlib.MAX_WBITS)
    else:
        compressed = zeros_compressed(zstandard.ZstdCompressor(level=3).compressobj(), 64 * MiB)
        reference = zstd.ZstdDecompressor()
    decoder = decoder_for(encoding, 64 * MiB)
    for chunk in chunked(compressed, 997):
        assert sum(map(len, decoder.decode(chunk))) == len(reference.decompress(chunk))
    assert list(decoder.finish()) == []


def test_gzip_output_held_back_when_the_chunk_is_used_up_comes_out_too():
    """zlib can use up its input and still hold output: a match cut off by the end of the piece.

    That takes a chunk whose last byte completes a match that straddles the end of the piece, which
    the chunkings above rarely hit; this finds such a chunk among the prefixes of a run of zeros.
    """
    body = bytes(8 * MiB)
    compressed = gzip.compress(body, 9)

    def holds_back(cut: int) -> bool:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        full = len(d.decompress(compressed[:cut], PIECE_BYTES)) == PIECE_BYTES
        return full and not d.unconsumed_tail and d.decompress(b"", PIECE_BYTES) != b""

    cut = next(cut for cut in range(len(compressed)) if holds_back(cut))
    decoder = decoder_for("gzip", len(body))
    first = b"".join(decoder.decode(compressed[:cut]))
    assert first == zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(compressed[:cut])
    assert first + b"".join(decoder.decode(compressed[cut:])) == body
    assert list(decoder.finish()) == []


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_identity_passes_chunks_through_without_a_limit(header):
    decoder = decoder_for(header, 10)
    assert isinstance(decoder, IdentityDecoder)
    chunk = b"x" * 1000
    (piece,) = decoder.decode(chunk)
    assert piece is chunk
    assert list(decoder.decode(b"")) == []
    assert list(decoder.finish()) == []


@pytest.mark.parametrize("header", ["GZIP", " gzip ", "x-gzip", "X-Gzip", "Zstd", " zstd\t"])
def test_the_header_is_case_insensitive_and_trimmed(header):
    compressed = zstd_streamed(BODY) if "zstd" in header.lower() else gzip.compress(BODY)
    assert b"".join(decode_all(header, [compressed])) == BODY


@pytest.mark.parametrize("header", ["br", "deflate", "compress", "gzip, zstd", "zstd,gzip", "gzip;q=1", "x"])
def test_unknown_encodings_are_415(header):
    with pytest.raises(RunError) as caught:
        decoder_for(header, 100)
    assert caught.value.status == 415
    assert "gzip" in caught.value.reason and "zstd" in caught.value.reason


def test_corrupt_gzip_is_400():
    compressed = bytearray(gzip.compress(BODY))
    compressed[-6] ^= 0xFF  # in the CRC-32: only the check at the end can catch it
    error = decode_error("gzip", [bytes(compressed)])
    assert (error.status, error.reason) == (
        400,
        "invalid gzip body: Error -3 while decompressing data: incorrect data check",
    )
    error = decode_error("gzip", [b"not gzip at all"])
    assert error.status == 400 and error.reason.startswith("invalid gzip body: ")


def test_corrupt_zstd_is_400():
    compressed = bytearray(zstd_sized(BODY))
    compressed[-1] ^= 0xFF  # in the content checksum
    error = decode_error("zstd", [bytes(compressed)])
    assert error.status == 400 and error.reason.startswith("invalid zstd body: ")
    assert "checksum" in error.reason
    error = decode_error("zstd", [b"not zstd at all"])
    assert error.status == 400 and error.reason.startswith("invalid zstd body: ")


@pytest.mark.parametrize("garbage", [b"x", b"garbage", b"\x00" * 20, gzip.compress(b"next")[:5]])
def test_bytes_after_a_gzip_member_must_be_a_whole_member(garbage):
    compressed = gzip.compress(BODY)
    assert b"".join(decode_all("gzip", [compressed + gzip.compress(b"next")])) == BODY + b"next"
    for chunks in ([compressed + garbage], chunked(compressed + garbage, 1000)):
        assert decode_error("gzip", chunks).status == 400


def test_bytes_after_a_zstd_frame_must_be_a_whole_frame():
    compressed = zstd_streamed(BODY)
    assert decode_error("zstd", [compressed + b"garbage"]).status == 400
    assert decode_error("zstd", [compressed + zstd_sized(b"next")[:6]]).status == 400


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_truncated_stream_is_400_at_finish(encoder):
    compressed = ENCODERS[encoder](BODY)
    for cut in (1, len(compressed) // 2, len(compressed) - 1):
        decoder = decoder_for(coding(encoder), 1 << 40)
        for chunk in chunked(compressed[:cut], 64 * 1024):
            list(decoder.decode(chunk))  # every prefix decodes without complaint...
        with pytest.raises(RunError) as caught:
            list(decoder.finish())  # ...until the body ends
        assert (caught.value.status, caught.value.reason) == (
            400,
            f"{coding(encoder)} body ends before the compressed stream does",
        )


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_an_empty_compressed_body_is_400(encoding):
    assert decode_error(encoding, []).status == 400


def test_a_zstd_window_over_8_mib_is_refused():
    """The decoder allocates the window a frame declares, so a large one is memory we won't give."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    compressed = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = compressed.compress(b"small") + compressed.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 16 * MiB
    error = decode_error("zstd", [frame])
    assert error.status == 400 and error.reason.startswith("invalid zstd body: ")
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=23)
    compressed = zstandard.ZstdCompressor(compression_params=params).compressobj()
    assert b"".join(decode_all("zstd", [compressed.compress(BODY) + compressed.flush()])) == BODY


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros: about 1 MB as gzip, 32 KB as zstd."""
    return {
        "gzip": zeros_compressed(zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), GiB),
        "zstd": zeros_compressed(zstandard.ZstdCompressor(level=3).compressobj(), GiB),
    }


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
@pytest.mark.parametrize("chunk_size", [64 * 1024, None])
def test_a_bomb_is_413_once_past_a_small_limit(bombs, encoding, chunk_size):
    max_bytes = 1_000_000
    bomb = bombs[encoding]
    chunks = chunked(bomb, chunk_size) if chunk_size else [bomb]
    decoder = decoder_for(encoding, max_bytes)
    decoded = 0
    with pytest.raises(RunError) as caught:
        for chunk in chunks:
            for piece in decoder.decode(chunk):
                decoded += len(piece)
    assert (caught.value.status, caught.value.reason) == (
        413,
        f"decompressed body is larger than {max_bytes} bytes",
    )
    assert max_bytes - PIECE_BYTES < decoded <= max_bytes


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_1_gib_bomb_is_decoded_a_piece_at_a_time(bombs, encoding):
    """Fed as one chunk, the whole bomb decodes with the largest piece, and the memory peak, bounded."""
    bomb = bombs[encoding]
    assert len(bomb) < 2 * MiB
    max_bytes = GiB - 1
    decoder = decoder_for(encoding, max_bytes)
    decoded = largest = pieces = 0
    tracemalloc.start()
    try:
        with pytest.raises(RunError) as caught:
            for piece in decoder.decode(bomb):
                decoded += len(piece)
                largest = max(largest, len(piece))
                pieces += 1
                del piece
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert max_bytes - PIECE_BYTES < decoded <= max_bytes  # all of it came out, up to the limit
    assert largest <= PIECE_BYTES
    assert pieces >= decoded // PIECE_BYTES
    # About 1 MB: a few pieces and the decompressor's state. Not the bomb, nor a copy of the 1 MB chunk.
    assert peak < 2 * MiB, peak
