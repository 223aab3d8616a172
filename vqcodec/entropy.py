"""Entropy coding of index grids: integers in, bytes out. No torch here.

Coder "zstd" (id 0 in the container): the grids, in order, each row-major, as
unsigned 16-bit integers split into two byte planes (all low bytes, then all high
bytes: with K <= 256 the high plane is all zeros and costs zstd almost nothing),
compressed as one zstandard frame.
The index checksum (CRC-32 of that same uncompressed byte string) is stored in
the container, so a decoder that derives other indices fails loudly.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import zstandard

ZSTD_LEVEL = 19


def serialize_indices(grids: list[np.ndarray]) -> bytes:
    """The canonical byte string of the grids: uint16 little-endian, row-major, in order."""
    return b"".join(np.ascontiguousarray(g, dtype="<u2").tobytes() for g in grids)


def index_checksum(grids: list[np.ndarray]) -> int:
    """CRC-32 of serialize_indices(grids)."""
    return zlib.crc32(serialize_indices(grids))


def zstd_encode(grids: list[np.ndarray]) -> bytes:
    flat = np.concatenate([np.ravel(g) for g in grids]).astype(np.uint16)
    planes = (flat & 0xFF).astype(np.uint8).tobytes() + (flat >> 8).astype(np.uint8).tobytes()
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(planes)


def zstd_decode(payload: bytes, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of zstd_encode; never decompresses more than the shapes allow.
    Raises ValueError on corrupt data or a size that does not match the shapes."""
    expected = 2 * sum(rows * cols for rows, cols in shapes)
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=expected)
    except zstandard.ZstdError as error:
        raise ValueError(f"index payload is not a valid zstd frame ({error})") from None
    if len(raw) != expected:
        raise ValueError(f"index payload holds {len(raw)} bytes, the grid shapes need {expected}")
    count = expected // 2
    planes = np.frombuffer(raw, dtype=np.uint8)
    flat = planes[:count].astype(np.int64) | (planes[count:].astype(np.int64) << 8)
    grids, offset = [], 0
    for rows, cols in shapes:
        grids.append(flat[offset:offset + rows * cols].reshape(rows, cols).astype(np.int64))
        offset += rows * cols
    return grids


# Coder "prior" (id 1): range coding (constriction's queue.RangeEncoder, 32-bit words,
# 24-bit precision) of every index in the prior's pass order, each with its own
# categorical distribution given as integer frequencies. constriction's lazy categorical
# model turns frequencies f_0..f_{K-1} into a CDF with float32 arithmetic on exact
# integers (see docs/FORMAT.md), so encoder and decoder derive the same CDF.
#
# The payload's last word may be cut short (docs/FORMAT.md, "From frequencies to the range
# coder"); the encoder keeps the fewest bytes that still decode, which it checks by decoding.

TRIM_CHECK_SYMBOLS = 1 << 14  # the encoder checks (and so trims) payloads of at most this many symbols
PRECISION_BITS = 24  # the coder's probability precision: every symbol owns an interval of [0, 2**24)


def _categorical():
    import constriction

    return constriction.stream.model.Categorical(lazy=True, perfect=False)


def _as_probabilities(frequencies: np.ndarray) -> np.ndarray:
    """Integer frequencies (n, K), each in [1, 2**15], as exact float32 values. The range is the
    caller's to keep (the priors' frequency tables are checked when they load): a check here
    would read every entry twice more than the coder itself does."""
    probabilities = np.ascontiguousarray(frequencies, dtype=np.float32)
    if probabilities.ndim != 2:
        raise ValueError("frequencies must be an (n, K) array")
    return probabilities


def _words(payload: bytes) -> np.ndarray:
    """The coder's 32-bit words of a payload, a cut-short final word completed with 0xFF."""
    cut = len(payload) % 4
    if cut:
        payload = payload[:len(payload) - cut] + b"\xff" * (4 - cut) + payload[len(payload) - cut:]
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


class RangeEncoder:
    """Range-codes passes as they come: add(symbols (n,), frequencies (n, K)), or the same
    symbols as add_intervals(left, right), then payload()."""

    def __init__(self):
        import constriction

        self._encoder = constriction.stream.queue.RangeEncoder()
        self._model = _categorical()
        self._passes: list[tuple[np.ndarray, np.ndarray]] | None = []  # kept for the final word's trim
        self._symbols = 0

    def add(self, symbols: np.ndarray, frequencies: np.ndarray) -> None:
        if len(symbols):
            symbols, probabilities = np.array(symbols, dtype=np.int32), _as_probabilities(frequencies)
            if self._passes is not None and np.shares_memory(probabilities, frequencies):
                probabilities = probabilities.copy()  # kept: the caller may reuse its arrays
            self._code(symbols, probabilities)

    def add_intervals(self, left: np.ndarray, right: np.ndarray) -> None:
        """Codes symbols given by their intervals [left, right) of 2**24 (n,), which the lazy
        categorical model derives from each symbol's frequencies (docs/FORMAT.md): the same
        words as add(symbols, frequencies), without the coder's pass over every frequency
        of every symbol. Each interval goes to the coder as a symbol of a 3-symbol model whose
        frequencies (a, b, c) sum to 2**24 - 3, so that its scale is exactly 1 and its CDF
        0, a + 1, a + b + 2, 2**24: symbol 1 with (left - 1, right - left - 1, .), or where
        left is 0, symbol 0 with (right - 1, 0, .), or where right is 2**24, symbol 2 with
        (left - 2, 0, .)."""
        left, right = np.asarray(left, dtype=np.int32), np.asarray(right, dtype=np.int32)
        if not len(left):
            return
        first, last = (left == 0).view(np.int8), (right == 1 << PRECISION_BITS).view(np.int8)
        table = np.empty((len(left), 3), dtype=np.int32)
        np.subtract(left - 1 - last, first * (left - right), out=table[:, 0])
        np.multiply(right - left - 1, 1 - first - last, out=table[:, 1])
        np.subtract((1 << PRECISION_BITS) - 3 - table[:, 0], table[:, 1], out=table[:, 2])
        if int(table.min()) < 0:
            raise ValueError("symbol intervals must lie in [0, 2**24) and be non-empty")
        self._code((1 - first + last).astype(np.int32), table.astype(np.float32))  # integers below 2**24: exact

    def _code(self, symbols: np.ndarray, probabilities: np.ndarray) -> None:
        self._encoder.encode(symbols, self._model, probabilities)
        self._symbols += len(symbols)
        if self._passes is not None and self._symbols <= TRIM_CHECK_SYMBOLS:
            self._passes.append((symbols, probabilities))
        else:
            self._passes = None

    def payload(self) -> bytes:
        """The payload bytes: the coder's 32-bit words, little-endian, the last one cut short
        to the fewest most significant bytes that still decode right (when checked)."""
        whole = self._encoder.get_compressed().astype("<u4").tobytes()
        if self._passes is None or not whole:
            return whole
        for kept in (1, 2, 3):
            shorter = whole[:-4] + whole[-kept:]
            if self._decodes(shorter):
                return shorter
        return whole

    def _decodes(self, payload: bytes) -> bool:
        import constriction

        decoder = constriction.stream.queue.RangeDecoder(_words(payload))
        try:
            return all(np.array_equal(decoder.decode(self._model, p), s) for s, p in self._passes)
        except Exception:  # constriction signals a stream that runs dry with AssertionError
            return False


def range_encode(passes: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """[(symbols (n,), frequencies (n, K))] in order -> payload bytes (little-endian u32 words,
    the last one possibly cut short)."""
    encoder = RangeEncoder()
    for symbols, frequencies in passes:
        encoder.add(symbols, frequencies)
    return encoder.payload()


def check_range_payload(payload_bytes: int, symbols: int, alphabet: int) -> None:
    """Refuse a payload too short to hold `symbols` range-coded symbols, before any work.

    No frequency exceeds 2**15 and every one is at least 1, so no symbol is more likely than
    2**15 / (2**15 + alphabet - 1) and each costs at least -log2 of that; a tiny file that
    claims a huge grid fails here instead of after minutes of decoding."""
    min_bits = -math.log2((1 << 15) / ((1 << 15) + alphabet - 1) + 2.0 ** -24)
    if payload_bytes * 8 < symbols * min_bits - 256:
        raise ValueError(f"{payload_bytes} bytes cannot hold {symbols} coded indices")


class RangeDecoder:
    """Decodes a range_encode payload one pass at a time: call it with each pass's frequencies."""

    def __init__(self, payload: bytes):
        import constriction

        self._decoder = constriction.stream.queue.RangeDecoder(_words(payload))
        self._model = _categorical()

    def __call__(self, frequencies: np.ndarray) -> np.ndarray:
        probabilities = _as_probabilities(frequencies)
        try:
            return self._decoder.decode(self._model, probabilities)
        except Exception as error:  # constriction signals invalid data with AssertionError
            raise ValueError(f"range-coded payload is corrupt ({error})") from None
