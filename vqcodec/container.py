"""The ``.vqz`` container format: versions 3 and 2 (written and read) and 1 (read only).

A ``.vqz`` file wraps the entropy-coded codebook indices of one image (plus an optional
lossless alpha plane and, from version 2, the image's ICC profile, EXIF and XMP) with
everything a decoder checks before it does any work: which model made the indices, the image
geometry, the structure of the coded indices (layers and stages), and a check over the whole
file. This module only frames bytes; it knows nothing about tensors, so it imports neither
torch nor numpy (zstandard only when a file has a metadata section). The byte-by-byte
specification is ``docs/FORMAT.md``. Version 2, integers little-endian, ``v`` = unsigned
LEB128 (minimal, at most 5 bytes); version 3 is the same with a colour-correction section
(format bit 7, reserved in version 2), and is written only for files that have one::

    offset  size
         0     4  magic 89 56 51 5A ("\\x89VQZ"), the same in every version
         4     1  version u8 (= 2 or 3; a version-1 file has 0D here, its magic being 8 bytes)
         5     1  format u8: bits 0-2 mode id, bits 3-5 coder id, bit 6 metadata present,
                  bit 7 colour correction present (version 3 only, and always there)
         6     1  quality u8 (informational)
         7     8  model: the first 8 bytes of the SHA-256 of the model's weights file
        15     v  width          v  height
               1  layer count n; then n bytes, one per layer: log2(stride) << 4 | stages
               4  index_crc32 u32 (CRC-32 of the decoded indices)
               v  index payload length
               v  alpha payload length      (modes LA and RGBA only)
               v  metadata section length   (format bit 6 only)
               v  colour correction length  (format bit 7 only)
                  index payload, alpha payload, metadata section, colour correction
     end-2     2  check u16: CRC-16/XMODEM of every byte before it

:func:`unpack` refuses anything malformed with :class:`VqzError`, checking lengths against
the data before slicing, the pixel count against a limit (:data:`DEFAULT_MAX_PIXELS`,
``max_pixels=``, ``VQZ_MAX_PIXELS``) and the metadata size against
:data:`MAX_METADATA_BYTES` before decompressing it, so that a tiny hostile file cannot make a
decoder allocate huge buffers. :func:`pack` writes version 2, or version 3 for a file with a
colour correction.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CODERS",
    "DEFAULT_MAX_PIXELS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_METADATA_BYTES",
    "METADATA_KINDS",
    "MODEL_PREFIX_BYTES",
    "MODES",
    "READ_VERSIONS",
    "Container",
    "Header",
    "HeaderV1",
    "Layer",
    "VqzError",
    "check_metadata",
    "model_prefix",
    "pack",
    "read_signed_varints",
    "resolve_max_pixels",
    "signed_varints",
    "unpack",
]

MAGIC = b"\x89VQZ"
"""4-byte signature of every version: the high byte catches 7-bit transports and keeps the
file from passing for text. Version 2 puts the version number right after it."""

MAGIC_V1 = b"\x89VQZ\r\n\x1a\n"
"""Version 1's 8-byte signature (PNG-style: CR LF / LF catch newline translation, ^Z stops
``type`` on DOS); its version byte follows at offset 8."""

FORMAT_VERSION = 3
"""The newest container version this build writes: version 3 for a file with a colour
correction, version 2 (which readers of version 2 still read) for every other file."""

READ_VERSIONS = (1, 2, 3)
"""The container versions this build reads."""

DEFAULT_MAX_PIXELS = 1 << 28
"""Largest width*height (and largest index grid rows*cols) :func:`unpack`
accepts by default: 268,435,456 pixels, e.g. 16384 x 16384. Override per call
with ``max_pixels=`` or globally with the environment variable
``VQZ_MAX_PIXELS`` (read at call time)."""

MAX_PIXELS_ENV = "VQZ_MAX_PIXELS"

MODES: tuple[str, ...] = ("L", "LA", "RGB", "RGBA")
"""Pillow image modes; a mode's id on disk is its index here (L=0, LA=1,
RGB=2, RGBA=3). Ids never change meaning; new modes may only be appended."""

CODERS: dict[str, int] = {"zstd": 0, "prior": 1}
"""Index-payload coder name -> id on disk. Ids are stable forever:
an id is never reused or reassigned; new coders get new ids."""

METADATA_KINDS: dict[str, int] = {"icc": 1, "exif": 2, "xmp": 3}
"""Metadata entry kind -> id on disk (version 2): the ICC colour profile, EXIF (TIFF
structure, without the "Exif\\0\\0" prefix of JPEG's APP1) and XMP (an XMP packet, UTF-8).
Ids are stable forever."""

MAX_METADATA_BYTES = 1 << 20
"""Largest decompressed metadata content (every entry with its kind and length) a file may
hold: 1 MiB. Checked before anything is decompressed or allocated; writers refuse more."""

MODEL_PREFIX_BYTES = 8
"""Version 2 names the model by this many leading bytes of its weights file's SHA-256."""

METADATA_ZSTD_LEVEL = 19

_MODE_IDS = {m: i for i, m in enumerate(MODES)}
_CODER_NAMES = {i: name for name, i in CODERS.items()}
_KIND_NAMES = {i: name for name, i in METADATA_KINDS.items()}
_ALPHA_MODES = frozenset({"LA", "RGBA"})

_U32_MAX = 2**32 - 1
_U16_MAX = 2**16 - 1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PREFIX_RE = re.compile(rf"[0-9a-f]{{{2 * MODEL_PREFIX_BYTES}}}")

# version 2
_FIXED = struct.Struct("<4sBBB8s")  # magic, version, format, quality, model prefix
_CHECK_SIZE = 2
_FORMAT_MODE = 0x07
_FORMAT_CODER_SHIFT = 3
_FORMAT_CODER = 0x38
_FORMAT_METADATA = 0x40
_FORMAT_CORRECTION = 0x80  # version 3; reserved in version 2
MAX_STAGES = 15  # a layer byte's low nibble
MAX_STRIDE_LOG2 = 15  # its high nibble
_VARINT_MAX_BYTES = 5
# fixed part, width, height, layer count, one layer, index_crc32, index length, check
MIN_FILE_SIZE = _FIXED.size + 1 + 1 + 1 + 1 + 4 + 1 + _CHECK_SIZE  # 26
# byte 4 values that are never versions: 0 and 1 (a version-1 file has 0D there) and 0A, 1A
# (a version-1 magic after newline translation); reported as bad magic
_NOT_VERSIONS = frozenset({0, 1, 0x0A, 0x1A})

# version 1
_FIXED_V1 = struct.Struct("<8sBBHIIBBBBIII32sB")  # offsets 0..68, see docs/FORMAT.md
FIXED_SIZE_V1 = _FIXED_V1.size  # 69
_CRC_SIZE_V1 = 4
MIN_FILE_SIZE_V1 = FIXED_SIZE_V1 + _CRC_SIZE_V1  # 73
_FLAG_ALPHA_V1 = 0x01
_MAX_NAME_V1 = 64


class VqzError(ValueError):
    """A ``.vqz`` file (or a header to be written) is malformed, corrupt or
    unsupported."""


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else the environment
    variable ``VQZ_MAX_PIXELS`` if set and non-empty, else
    :data:`DEFAULT_MAX_PIXELS`. Raises ``ValueError`` for a non-positive or
    non-integer value."""
    if max_pixels is not None:
        if not _is_int(max_pixels) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        return max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"environment variable {MAX_PIXELS_ENV} must be a positive integer "
            f"number of pixels, got {raw!r}"
        )
    return value


def model_prefix(sha256: str) -> str:
    """The model name a version-2 file stores: the first 8 bytes of the SHA-256 (64 hex
    digits) of the model's weights file, as 16 hex digits."""
    return sha256[: 2 * MODEL_PREFIX_BYTES]


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise VqzError(
            f"image of {width} x {height} = {width * height} pixels exceeds the limit of "
            f"{limit} pixels; raise it with max_pixels= or {MAX_PIXELS_ENV}"
        )


# ----------------------------------------------------------------------- version 2


@dataclass(frozen=True)
class Layer:
    """One layer of coded indices: every position of its grids stands for ``stride`` x
    ``stride`` pixels, and ``stages`` residual stages of it are coded (grids of
    ``padded height / stride`` x ``padded width / stride``, the padding being the model's)."""

    stride: int
    stages: int

    def __post_init__(self) -> None:
        if not _is_int(self.stride) or self.stride < 1 or self.stride & (self.stride - 1) \
                or self.stride > 1 << MAX_STRIDE_LOG2:
            raise VqzError(f"bad layer stride {self.stride!r}: must be a power of two, 1..{1 << MAX_STRIDE_LOG2}")
        if not _is_int(self.stages) or not 1 <= self.stages <= MAX_STAGES:
            raise VqzError(f"bad stage count {self.stages!r} of the stride-{self.stride} layer: must be 1..{MAX_STAGES}")

    def to_dict(self) -> dict[str, int]:
        return {"stride": self.stride, "stages": self.stages}


@dataclass(frozen=True)
class Header:
    """What a version-2 file says about its payloads. Construction validates every field
    (raising :class:`VqzError`), so a ``Header`` in hand can always be packed. ``layers`` may
    be given as :class:`Layer` objects, (stride, stages) pairs or {"stride", "stages"} dicts,
    in coding order."""

    model_prefix: str
    width: int
    height: int
    mode: str
    quality: int
    coder: str
    layers: tuple[Layer, ...]
    index_crc32: int

    def __post_init__(self) -> None:
        try:
            layers = tuple(x if isinstance(x, Layer) else Layer(**x) if isinstance(x, Mapping) else Layer(*x)
                           for x in self.layers)
        except TypeError:
            raise VqzError(f"layers must be a sequence of (stride, stages) pairs, got {self.layers!r}") from None
        object.__setattr__(self, "layers", layers)
        _check_header(self)

    @property
    def has_alpha(self) -> bool:
        """True for modes with an alpha channel (LA, RGBA)."""
        return self.mode in _ALPHA_MODES

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (layers as a list of {stride, stages})."""
        return {
            "model_prefix": self.model_prefix,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "quality": self.quality,
            "coder": self.coder,
            "layers": [layer.to_dict() for layer in self.layers],
            "index_crc32": self.index_crc32,
        }


def _check_header(h: Header) -> None:
    """Raise VqzError unless every field of the version-2 header ``h`` is representable."""
    if not isinstance(h.model_prefix, str) or not _PREFIX_RE.fullmatch(h.model_prefix):
        raise VqzError(f"bad model_prefix {h.model_prefix!r}: must be {2 * MODEL_PREFIX_BYTES} lowercase hex "
                       "digits (the start of the model's sha256)")
    for name in ("width", "height"):
        v = getattr(h, name)
        if not _is_int(v) or not 1 <= v <= _U32_MAX:
            raise VqzError(f"bad image {name} {v!r}: must be 1..{_U32_MAX}")
    if not isinstance(h.mode, str) or h.mode not in MODES:
        raise VqzError(f"bad mode {h.mode!r}: must be one of {', '.join(MODES)}")
    if not _is_int(h.quality) or not 1 <= h.quality <= 255:
        raise VqzError(f"bad quality {h.quality!r}: must be 1..255")
    if not isinstance(h.coder, str) or h.coder not in CODERS:
        raise VqzError(f"bad coder {h.coder!r}: must be one of {', '.join(CODERS)}")
    if not h.layers:
        raise VqzError("bad layer count 0: a file holds at least one layer")
    strides = [layer.stride for layer in h.layers]
    if any(fine > coarse for coarse, fine in zip(strides, strides[1:])):
        raise VqzError(f"bad layers {strides}: a layer's stride exceeds the one before (layers go coarse to fine)")
    if not _is_int(h.index_crc32) or not 0 <= h.index_crc32 <= _U32_MAX:
        raise VqzError(f"bad index_crc32 {h.index_crc32!r}: must be 0..{_U32_MAX}")


@dataclass(frozen=True)
class HeaderV1:
    """What a version-1 file says (read only: this build writes version 2). ``grid_shapes``
    holds the (rows, cols) of every index grid; which layer each belongs to follows from the
    shapes and the model (docs/FORMAT.md, version 1)."""

    model_name: str
    model_sha256: str
    width: int
    height: int
    mode: str
    quality: int
    coder: str
    grid_shapes: tuple[tuple[int, int], ...]
    index_crc32: int

    version = 1

    @property
    def has_alpha(self) -> bool:
        return self.mode in _ALPHA_MODES

    @property
    def header_length(self) -> int:
        """Bytes from the start of the file to the start of the index payload."""
        return FIXED_SIZE_V1 + len(self.model_name) + 4 * len(self.grid_shapes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "quality": self.quality,
            "coder": self.coder,
            "grid_shapes": [list(s) for s in self.grid_shapes],
            "index_crc32": self.index_crc32,
        }


@dataclass(frozen=True)
class Container:
    """A parsed ``.vqz`` file: its version, header, two (still coded) payloads, metadata
    (kind -> bytes, in kind order; always empty in version 1), colour-correction section
    (its bytes, see vqcodec.color_correction; empty before version 3), and the sizes of its
    header, of its (compressed) metadata section and of the whole file."""

    header: Header | HeaderV1
    index_payload: bytes
    alpha_payload: bytes
    metadata: dict[str, bytes] = field(default_factory=dict)
    header_bytes: int = 0
    metadata_bytes: int = 0
    total_bytes: int = 0
    correction: bytes = b""
    version: int = 2


def _varint(value: int) -> bytes:
    """``value`` as minimal unsigned LEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def signed_varints(values) -> bytes:
    """Integers as zigzag varints (v >= 0 stored as 2v, v < 0 as -2v - 1, then minimal LEB128):
    the weights of a version-3 colour-correction section."""
    return b"".join(_varint(2 * v if v >= 0 else -2 * v - 1) for v in values)


def read_signed_varints(data: bytes, count: int) -> list[int]:
    """Inverse of signed_varints for exactly `count` integers that fill `data`; VqzError for
    anything else (cut short, over-long, bytes left over)."""
    reader = _Reader(memoryview(data))
    try:
        zigzags = [reader.varint("weight") for _ in range(count)]
    except _OutOfData:
        raise VqzError(f"{count} weights do not fit in {len(data)} bytes") from None
    if reader.pos != len(data):
        raise VqzError(f"{len(data) - reader.pos} bytes after its {count} weights")
    return [z >> 1 if not z & 1 else -(z >> 1) - 1 for z in zigzags]


class _OutOfData(Exception):
    """The header runs past the end of the data."""


class _Reader:
    """Reads header fields in order from a memoryview."""

    def __init__(self, buf: memoryview, pos: int = 0):
        self.buf, self.pos = buf, pos

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _OutOfData
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise _OutOfData
        self.pos += 1
        return self.buf[self.pos - 1]

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_VARINT_MAX_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise VqzError(f"bad {what}: over-long varint (a final zero group)")
                if value > _U32_MAX:
                    raise VqzError(f"bad {what} {value}: exceeds {_U32_MAX}")
                return value
        raise VqzError(f"bad {what}: varint longer than {_VARINT_MAX_BYTES} bytes")


def _metadata_content(metadata: Mapping[str, bytes]) -> bytes:
    """The decompressed metadata content: (kind id u8, length varint, bytes) per entry,
    in kind order. Raises VqzError for an unknown kind, a non-bytes or empty value, or
    content over MAX_METADATA_BYTES."""
    parts, sizes = [], []
    for kind in metadata:
        if kind not in METADATA_KINDS:
            raise VqzError(f"unknown metadata kind {kind!r}: must be one of {', '.join(METADATA_KINDS)}")
    for kind, kind_id in METADATA_KINDS.items():
        value = metadata.get(kind)
        if value is None:
            continue
        if not isinstance(value, (bytes, bytearray, memoryview)) or not len(value):
            raise VqzError(f"metadata {kind} must be non-empty bytes")
        parts.append(bytes([kind_id]) + _varint(len(value)) + bytes(value))
        sizes.append(f"{kind} {len(value)}")
    content = b"".join(parts)
    if len(content) > MAX_METADATA_BYTES:
        raise VqzError(f"metadata of {len(content)} bytes ({', '.join(sizes)}) exceeds the .vqz limit of "
                       f"{MAX_METADATA_BYTES} bytes")
    return content


def check_metadata(metadata: Mapping[str, bytes]) -> None:
    """Raise :class:`VqzError` unless :func:`pack` can store ``metadata`` (kind -> bytes):
    known kinds, non-empty values, at most :data:`MAX_METADATA_BYTES` in all."""
    _metadata_content(metadata)


def _metadata_section(metadata: Mapping[str, bytes]) -> bytes:
    content = _metadata_content(metadata)
    if not content:
        return b""
    import zstandard

    frame = zstandard.ZstdCompressor(level=METADATA_ZSTD_LEVEL, write_checksum=True).compress(content)
    return _varint(len(content)) + frame


def _parse_metadata(section: bytes) -> dict[str, bytes]:
    """Inverse of _metadata_section; the declared size is checked before decompressing."""
    reader = _Reader(memoryview(section))
    try:
        size = reader.varint("metadata size")
    except _OutOfData:
        raise VqzError("corrupt metadata section: it ends inside its size field") from None
    if size == 0:
        raise VqzError("bad metadata size 0: a metadata section holds at least one entry")
    if size > MAX_METADATA_BYTES:
        raise VqzError(f"metadata of {size} bytes exceeds the .vqz limit of {MAX_METADATA_BYTES} bytes")
    import zstandard

    frame = section[reader.pos :]
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as error:
        raise VqzError(f"corrupt metadata section: {error}") from None
    if declared not in (-1, size):
        raise VqzError(f"corrupt metadata section: its frame holds {declared} bytes, the section says {size}")
    try:
        content = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise VqzError(f"corrupt metadata section: {error}") from None
    if len(content) != size:
        raise VqzError(f"corrupt metadata section: {len(content)} bytes decompressed, the section says {size}")
    entries: dict[str, bytes] = {}
    reader, last = _Reader(memoryview(content)), 0
    try:
        while reader.pos < len(content):
            kind_id = reader.u8()
            if kind_id not in _KIND_NAMES:
                raise VqzError(f"unknown metadata kind id {kind_id} (known: {_KIND_NAMES})")
            if kind_id <= last:
                raise VqzError(f"metadata entries out of order: kind id {kind_id} after {last}")
            length = reader.varint(f"{_KIND_NAMES[kind_id]} length")
            if length == 0:
                raise VqzError(f"empty {_KIND_NAMES[kind_id]} metadata entry")
            entries[_KIND_NAMES[kind_id]] = reader.bytes(length)
            last = kind_id
    except _OutOfData:
        raise VqzError("corrupt metadata section: an entry runs past the end of its content") from None
    return entries


def pack(header: Header, index_payload: bytes, alpha_payload: bytes = b"",
         metadata: Mapping[str, bytes] | None = None, correction: bytes = b"") -> bytes:
    """Serialize a header, its payloads, metadata (kind -> bytes, see
    :data:`METADATA_KINDS`) and colour-correction section (bytes, empty for none) into a
    ``.vqz`` file: version 3 with a correction, else version 2.

    Raises :class:`VqzError` (a ``ValueError``) if the header is invalid, a payload is too
    large, ``alpha_payload`` is empty for a mode with alpha / non-empty for a mode without,
    or the metadata is malformed or over :data:`MAX_METADATA_BYTES`.
    """
    if not isinstance(header, Header):
        raise TypeError(f"header must be a (version 2) Header, got {type(header).__name__}")
    _check_header(header)
    index_payload, alpha_payload = bytes(index_payload), bytes(alpha_payload)
    if header.has_alpha and not alpha_payload:
        raise VqzError(f"mode {header.mode} has alpha but alpha_payload is empty")
    if not header.has_alpha and alpha_payload:
        raise VqzError(f"mode {header.mode} has no alpha but alpha_payload is non-empty")
    section, correction = _metadata_section(metadata or {}), bytes(correction)
    for what, payload in (("index", index_payload), ("alpha", alpha_payload), ("metadata", section),
                          ("colour correction", correction)):
        if len(payload) > _U32_MAX:
            raise VqzError(f"{what} payload of {len(payload)} bytes exceeds the limit of {_U32_MAX}")
    fmt = (_MODE_IDS[header.mode] | CODERS[header.coder] << _FORMAT_CODER_SHIFT
           | (_FORMAT_METADATA if section else 0) | (_FORMAT_CORRECTION if correction else 0))
    parts = [
        _FIXED.pack(MAGIC, 3 if correction else 2, fmt, header.quality, bytes.fromhex(header.model_prefix)),
        _varint(header.width),
        _varint(header.height),
        bytes([len(header.layers)]),
        bytes((layer.stride.bit_length() - 1) << 4 | layer.stages for layer in header.layers),
        struct.pack("<I", header.index_crc32),
        _varint(len(index_payload)),
        _varint(len(alpha_payload)) if header.has_alpha else b"",
        _varint(len(section)) if section else b"",
        _varint(len(correction)) if correction else b"",
        index_payload,
        alpha_payload,
        section,
        correction,
    ]
    body = b"".join(parts)
    return body + struct.pack("<H", binascii.crc_hqx(body, 0))


def unpack(data: bytes, *, max_pixels: int | None = None) -> Container:
    """Parse and fully validate a ``.vqz`` file of any version this build reads.

    ``data`` may be any bytes-like object. ``max_pixels`` bounds width*height
    (default: see :func:`resolve_max_pixels`). Every problem with the data raises
    :class:`VqzError`; the checks run in the order given in ``docs/FORMAT.md``.
    """
    limit = resolve_max_pixels(max_pixels)
    buf = memoryview(data).cast("B")
    n = len(buf)

    # 1. Signature and version, on whatever bytes exist.
    if n == 0:
        raise VqzError("not a .vqz file: the file is empty")
    if buf[: len(MAGIC)] != MAGIC[: min(n, len(MAGIC))]:
        raise VqzError("not a .vqz file (bad magic bytes)")
    if n > len(MAGIC):
        tag = buf[len(MAGIC)]
        if tag == MAGIC_V1[len(MAGIC)]:
            return _unpack_v1(buf, limit)
        if tag in _NOT_VERSIONS:
            raise VqzError("not a .vqz file (bad magic bytes)")
        if tag not in READ_VERSIONS:
            raise VqzError(f"unsupported .vqz format version {tag}; this build reads versions "
                           f"{_version_list()}")
    if n < MIN_FILE_SIZE:
        raise VqzError(f"file is truncated: {n} bytes is too short to hold a .vqz header "
                       f"(at least {MIN_FILE_SIZE} bytes)")

    # 2. The header, field by field (every read checked against the data).
    reader = _Reader(buf)
    try:
        _, version, fmt, quality, prefix = _FIXED.unpack(reader.bytes(_FIXED.size))
        width = reader.varint("width")
        height = reader.varint("height")
        layer_bytes = reader.bytes(reader.u8())
        index_crc32 = struct.unpack("<I", reader.bytes(4))[0]
        index_len = reader.varint("index payload length")
        mode_id = fmt & _FORMAT_MODE
        alpha_len = reader.varint("alpha payload length") if mode_id < len(MODES) and \
            MODES[mode_id] in _ALPHA_MODES else 0
        metadata_len = reader.varint("metadata length") if fmt & _FORMAT_METADATA else 0
        correction_len = reader.varint("colour correction length") if version == 3 and fmt & _FORMAT_CORRECTION else 0
    except _OutOfData:
        raise VqzError(f"file is truncated: its {n} bytes end inside the .vqz header") from None
    header_bytes = reader.pos

    # 3. Declared length vs actual length, before any slicing.
    expected = header_bytes + index_len + alpha_len + metadata_len + correction_len + _CHECK_SIZE
    if n < expected:
        raise VqzError(f"file is truncated: header declares {expected} bytes but only {n} are present")
    if n > expected:
        raise VqzError(f"{n - expected} bytes of trailing garbage after the declared end of file at offset {expected}")

    # 4. Integrity.
    stored = struct.unpack_from("<H", buf, n - _CHECK_SIZE)[0]
    computed = binascii.crc_hqx(buf[: n - _CHECK_SIZE], 0)
    if stored != computed:
        raise VqzError(f"file is corrupt: CRC-16 mismatch, stored {stored:04x}, computed {computed:04x}")

    # 5. Field checks.
    if version == 2 and fmt & _FORMAT_CORRECTION:
        raise VqzError(f"reserved format bit 7 is set (format = 0x{fmt:02x})")
    if version == 3 and not fmt & _FORMAT_CORRECTION:
        raise VqzError("a version-3 file has a colour correction, but format bit 7 is not set")
    if mode_id >= len(MODES):
        raise VqzError(f"unknown mode id {mode_id} (known: {dict(enumerate(MODES))})")
    coder_id = (fmt & _FORMAT_CODER) >> _FORMAT_CODER_SHIFT
    if coder_id not in _CODER_NAMES:
        raise VqzError(f"unknown coder id {coder_id} (known: {_CODER_NAMES})")
    if quality == 0:
        raise VqzError("bad quality 0: must be 1..255")
    if width == 0 or height == 0:
        raise VqzError(f"bad image size {width} x {height}: width and height must be at least 1")
    _check_pixels(width, height, limit)
    if not layer_bytes:
        raise VqzError("bad layer count 0: a file holds at least one layer")
    mode = MODES[mode_id]
    if mode in _ALPHA_MODES and alpha_len == 0:
        raise VqzError(f"mode {mode} requires an alpha payload, but its length is 0")
    if fmt & _FORMAT_METADATA and metadata_len == 0:
        raise VqzError("the metadata bit is set, but the metadata section length is 0")
    if fmt & _FORMAT_CORRECTION and correction_len == 0:
        raise VqzError("the colour correction bit is set, but its section length is 0")
    header = Header(model_prefix=prefix.hex(), width=width, height=height, mode=mode, quality=quality,
                    coder=_CODER_NAMES[coder_id], layers=[(1 << (b >> 4), b & 0x0F) for b in layer_bytes],
                    index_crc32=index_crc32)

    index_start = header_bytes
    alpha_start = index_start + index_len
    metadata_start = alpha_start + alpha_len
    correction_start = metadata_start + metadata_len
    metadata = _parse_metadata(bytes(buf[metadata_start:correction_start])) if metadata_len else {}
    return Container(
        header=header,
        index_payload=bytes(buf[index_start:alpha_start]),
        alpha_payload=bytes(buf[alpha_start:metadata_start]),
        metadata=metadata,
        header_bytes=header_bytes,
        metadata_bytes=metadata_len,
        total_bytes=n,
        correction=bytes(buf[correction_start : correction_start + correction_len]),
        version=version,
    )


def _version_list() -> str:
    """'1, 2 and 3'"""
    names = [str(v) for v in READ_VERSIONS]
    return ", ".join(names[:-1]) + " and " + names[-1]


# ----------------------------------------------------------------------- version 1


def _unpack_v1(buf: memoryview, limit: int) -> Container:
    """Parse a version-1 file (docs/FORMAT.md, "Version 1"), with the checks in its order."""
    n = len(buf)
    if buf[: len(MAGIC_V1)] != MAGIC_V1[: min(n, len(MAGIC_V1))]:
        raise VqzError("not a .vqz file (bad magic bytes)")
    if n > len(MAGIC_V1) and buf[len(MAGIC_V1)] != 1:
        raise VqzError(
            f"unsupported .vqz format version {buf[len(MAGIC_V1)]} (in a version-1 layout); "
            f"this build reads versions {_version_list()}"
        )
    if n < MIN_FILE_SIZE_V1:
        raise VqzError(
            f"file is truncated: {n} bytes is too short to hold a .vqz header "
            f"(at least {MIN_FILE_SIZE_V1} bytes)"
        )
    (_, _, flags, header_length, width, height, mode_id, quality, coder_id,
     n_grids, index_crc32, index_len, alpha_len, digest, name_len) = _FIXED_V1.unpack_from(buf)

    # Declared length vs actual length, before any slicing.
    index_start = FIXED_SIZE_V1 + name_len + 4 * n_grids
    expected = index_start + index_len + alpha_len + _CRC_SIZE_V1
    if n < expected:
        raise VqzError(f"file is truncated: header declares {expected} bytes but only {n} are present")
    if n > expected:
        raise VqzError(f"{n - expected} bytes of trailing garbage after the declared end of file at offset {expected}")

    # Integrity.
    stored = struct.unpack_from("<I", buf, n - _CRC_SIZE_V1)[0]
    computed = zlib.crc32(buf[: n - _CRC_SIZE_V1])
    if stored != computed:
        raise VqzError(f"file is corrupt: CRC-32 mismatch, stored {stored:08x}, computed {computed:08x}")

    # Field checks.
    if header_length != index_start:
        raise VqzError(f"inconsistent header length: field says {header_length}, layout gives {index_start}")
    if flags & ~_FLAG_ALPHA_V1:
        raise VqzError(f"reserved flag bits are set (flags = 0x{flags:02x}); this build knows only bit 0")
    if mode_id >= len(MODES):
        raise VqzError(f"unknown mode id {mode_id} (known: {dict(enumerate(MODES))})")
    if coder_id not in _CODER_NAMES:
        raise VqzError(f"unknown coder id {coder_id} (known: {_CODER_NAMES})")
    name_bytes = bytes(buf[FIXED_SIZE_V1 : FIXED_SIZE_V1 + name_len])
    if not 1 <= name_len <= _MAX_NAME_V1 or not all(0x21 <= b <= 0x7E for b in name_bytes):
        raise VqzError(f"bad model name {name_bytes!r}: must be 1..{_MAX_NAME_V1} printable ASCII bytes")
    if width == 0 or height == 0:
        raise VqzError(f"bad image size {width} x {height}: width and height must be at least 1")
    _check_pixels(width, height, limit)
    if quality == 0:
        raise VqzError("bad quality 0: must be 1..255")
    if n_grids == 0:
        raise VqzError("bad grid count 0: a file holds at least one index grid")
    shapes = tuple(struct.iter_unpack("<HH", buf[FIXED_SIZE_V1 + name_len : index_start]))
    for i, (rows, cols) in enumerate(shapes):
        if rows == 0 or cols == 0:
            raise VqzError(f"bad shape {rows} x {cols} of index grid {i}: rows and cols must be at least 1")
        if rows * cols > limit:
            raise VqzError(
                f"index grid {i} of {rows} x {cols} = {rows * cols} entries exceeds the limit of "
                f"{limit} pixels; raise it with max_pixels= or {MAX_PIXELS_ENV}"
            )
    mode = MODES[mode_id]
    has_alpha = mode in _ALPHA_MODES
    if bool(flags & _FLAG_ALPHA_V1) != (alpha_len > 0):
        raise VqzError(f"alpha flag ({flags & _FLAG_ALPHA_V1}) disagrees with alpha payload length {alpha_len}")
    if has_alpha != (alpha_len > 0):
        raise VqzError(
            f"mode {mode} {'requires' if has_alpha else 'forbids'} an alpha payload, "
            f"but its length is {alpha_len}"
        )

    header = HeaderV1(
        model_name=name_bytes.decode("ascii"),
        model_sha256=digest.hex(),
        width=width,
        height=height,
        mode=mode,
        quality=quality,
        coder=_CODER_NAMES[coder_id],
        grid_shapes=shapes,
        index_crc32=index_crc32,
    )
    alpha_start = index_start + index_len
    return Container(
        header=header,
        index_payload=bytes(buf[index_start:alpha_start]),
        alpha_payload=bytes(buf[alpha_start : alpha_start + alpha_len]),
        header_bytes=index_start,
        total_bytes=n,
        version=1,
    )
