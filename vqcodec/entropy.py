"""Entropy coding of index grids: integers in, bytes out. No torch here.

Coder "zstd" (id 0 in the container): the grids, in order, each row-major, as
unsigned 16-bit integers split into two byte planes (all low bytes, then all high
bytes: with K <= 256 the high plane is all zeros and costs zstd almost nothing),
compressed as one zstandard frame.
The index checksum (CRC-32 of that same uncompressed byte string) is stored in
the container, so a decoder that derives other indices fails loudly.
"""
from __future__ import annotations

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
