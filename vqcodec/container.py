"""The ``.vqz`` container format, version 1.

A ``.vqz`` file wraps the entropy-coded codebook indices of one image (plus an
optional lossless alpha plane) with everything a decoder needs to check before
it does any work: which model made the indices, the image geometry, and a
CRC-32 over the whole file. This module only frames bytes; it knows nothing
about tensors, so it imports neither torch nor numpy. The full byte-by-byte
specification is ``docs/FORMAT.md``. All integers are little-endian::

    offset  size
         0     8  magic  89 56 51 5A 0D 0A 1A 0A  ("\\x89VQZ\\r\\n\\x1a\\n")
         8     1  version u8 (= 1)
         9     1  flags u8 (bit0: alpha payload present; bits 1-7 must be 0)
        10     2  header_length u16 (offset of the index payload)
        12     4  width u32          16     4  height u32
        20     1  mode u8            21     1  quality u8
        22     1  coder u8           23     1  n_grids u8
        24     4  index_crc32 u32    28     4  index_payload_length u32
        32     4  alpha_payload_length u32
        36    32  model_sha256 (raw digest bytes)
        68     1  model_name_length u8 (= N)
        69     N  model_name (ASCII)
      69+N  4*G   G = n_grids x (rows u16, cols u16)
    header_length  index payload  (index_payload_length bytes)
         ...       alpha payload  (alpha_payload_length bytes)
         ...     4  CRC-32 u32: zlib.crc32 of every byte before it

:func:`unpack` refuses anything malformed with :class:`VqzError`, checking
lengths against the data before slicing and the pixel count against a limit
(:data:`DEFAULT_MAX_PIXELS`, ``max_pixels=``, ``VQZ_MAX_PIXELS``) so that a
tiny hostile file cannot make a decoder allocate huge buffers.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODERS",
    "DEFAULT_MAX_PIXELS",
    "FORMAT_VERSION",
    "MAGIC",
    "MODES",
    "Container",
    "Header",
    "VqzError",
    "pack",
    "resolve_max_pixels",
    "unpack",
]

MAGIC = b"\x89VQZ\r\n\x1a\n"
"""8-byte signature, PNG-style: the high byte catches 7-bit transports, CR LF
and LF catch newline translation, ^Z stops ``type`` on DOS."""

FORMAT_VERSION = 1
"""The only container version this build reads and writes."""

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
"""Index-payload coder name -> one-byte id on disk. Ids are stable forever:
an id is never reused or reassigned; new coders get new ids."""

_MODE_IDS = {m: i for i, m in enumerate(MODES)}
_CODER_NAMES = {i: name for name, i in CODERS.items()}
_ALPHA_MODES = frozenset({"LA", "RGBA"})

_FIXED = struct.Struct("<8sBBHIIBBBBIII32sB")  # offsets 0..68, see above
FIXED_SIZE = _FIXED.size  # 69
_CRC_SIZE = 4
MIN_FILE_SIZE = FIXED_SIZE + _CRC_SIZE  # 73: fixed header + CRC, nothing else
_FLAG_ALPHA = 0x01

_U32_MAX = 2**32 - 1
_U16_MAX = 2**16 - 1
_MAX_NAME = 64
_MAX_GRIDS = 255
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class Header:
    """Everything a ``.vqz`` file says about its payloads. Construction
    validates every field (raising :class:`VqzError`), so a ``Header`` in hand
    can always be packed. ``grid_shapes`` may be given as any sequence of
    pairs; it is stored as a tuple of tuples."""

    model_name: str
    model_sha256: str
    width: int
    height: int
    mode: str
    quality: int
    coder: str
    grid_shapes: tuple[tuple[int, int], ...]
    index_crc32: int

    def __post_init__(self) -> None:
        try:
            shapes = tuple(tuple(s) for s in self.grid_shapes)
        except TypeError:
            raise VqzError(f"grid_shapes must be a sequence of (rows, cols) pairs, got {self.grid_shapes!r}") from None
        object.__setattr__(self, "grid_shapes", shapes)
        _check_header(self)

    @property
    def has_alpha(self) -> bool:
        """True for modes with an alpha channel (LA, RGBA)."""
        return self.mode in _ALPHA_MODES

    @property
    def header_length(self) -> int:
        """Bytes from the start of the file to the start of the index payload."""
        return FIXED_SIZE + len(self.model_name) + 4 * len(self.grid_shapes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (grid_shapes as lists of lists)."""
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


def _check_header(h: Header) -> None:
    """Raise VqzError unless every field of ``h`` is representable and valid."""
    name = h.model_name
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME or not all("!" <= c <= "~" for c in name):
        raise VqzError(
            f"bad model name {name!r}: must be 1..{_MAX_NAME} printable ASCII "
            "characters (0x21-0x7E, no spaces)"
        )
    if not isinstance(h.model_sha256, str) or not _SHA256_RE.fullmatch(h.model_sha256):
        raise VqzError(f"bad model_sha256 {h.model_sha256!r}: must be 64 lowercase hex characters")
    for field in ("width", "height"):
        v = getattr(h, field)
        if not _is_int(v) or not 1 <= v <= _U32_MAX:
            raise VqzError(f"bad image {field} {v!r}: must be 1..{_U32_MAX}")
    if not isinstance(h.mode, str) or h.mode not in MODES:
        raise VqzError(f"bad mode {h.mode!r}: must be one of {', '.join(MODES)}")
    if not _is_int(h.quality) or not 1 <= h.quality <= 255:
        raise VqzError(f"bad quality {h.quality!r}: must be 1..255")
    if not isinstance(h.coder, str) or h.coder not in CODERS:
        raise VqzError(f"bad coder {h.coder!r}: must be one of {', '.join(CODERS)}")
    if not 1 <= len(h.grid_shapes) <= _MAX_GRIDS:
        raise VqzError(f"bad grid count {len(h.grid_shapes)}: must be 1..{_MAX_GRIDS}")
    for i, shape in enumerate(h.grid_shapes):
        if not isinstance(shape, tuple) or len(shape) != 2 or not all(_is_int(d) and 1 <= d <= _U16_MAX for d in shape):
            raise VqzError(f"bad shape {shape!r} of index grid {i}: must be (rows, cols), each 1..{_U16_MAX}")
    if not _is_int(h.index_crc32) or not 0 <= h.index_crc32 <= _U32_MAX:
        raise VqzError(f"bad index_crc32 {h.index_crc32!r}: must be 0..{_U32_MAX}")


@dataclass(frozen=True)
class Container:
    """A parsed ``.vqz`` file: its header and its two (still coded) payloads."""

    header: Header
    index_payload: bytes
    alpha_payload: bytes

    @property
    def total_bytes(self) -> int:
        """Size of the whole file, CRC included."""
        return self.header.header_length + len(self.index_payload) + len(self.alpha_payload) + _CRC_SIZE


def pack(header: Header, index_payload: bytes, alpha_payload: bytes = b"") -> bytes:
    """Serialize a header and its payloads into a ``.vqz`` file.

    Raises :class:`VqzError` (a ``ValueError``) if the header is invalid, a
    payload is too large for a u32 length, or ``alpha_payload`` is empty for a
    mode with alpha / non-empty for a mode without.
    """
    if not isinstance(header, Header):
        raise TypeError(f"header must be a Header, got {type(header).__name__}")
    _check_header(header)
    index_payload, alpha_payload = bytes(index_payload), bytes(alpha_payload)
    if header.has_alpha and not alpha_payload:
        raise VqzError(f"mode {header.mode} has alpha but alpha_payload is empty")
    if not header.has_alpha and alpha_payload:
        raise VqzError(f"mode {header.mode} has no alpha but alpha_payload is non-empty")
    for what, payload in (("index", index_payload), ("alpha", alpha_payload)):
        if len(payload) > _U32_MAX:
            raise VqzError(f"{what} payload of {len(payload)} bytes exceeds the u32 limit of {_U32_MAX}")
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        _FLAG_ALPHA if alpha_payload else 0,
        header.header_length,
        header.width,
        header.height,
        _MODE_IDS[header.mode],
        header.quality,
        CODERS[header.coder],
        len(header.grid_shapes),
        header.index_crc32,
        len(index_payload),
        len(alpha_payload),
        bytes.fromhex(header.model_sha256),
        len(header.model_name),
    )
    grids = b"".join(struct.pack("<HH", r, c) for r, c in header.grid_shapes)
    body = b"".join((fixed, header.model_name.encode("ascii"), grids, index_payload, alpha_payload))
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes, *, max_pixels: int | None = None) -> Container:
    """Parse and fully validate a ``.vqz`` file.

    ``data`` may be any bytes-like object. ``max_pixels`` bounds width*height
    and every grid's rows*cols (default: see :func:`resolve_max_pixels`).
    Every problem with the data raises :class:`VqzError`; the checks run in
    the order given in ``docs/FORMAT.md``.
    """
    limit = resolve_max_pixels(max_pixels)
    buf = memoryview(data).cast("B")
    n = len(buf)

    # 1. Signature, version, minimal size (each on whatever bytes exist).
    if n == 0:
        raise VqzError("not a .vqz file: the file is empty")
    if buf[: len(MAGIC)] != MAGIC[: min(n, len(MAGIC))]:
        raise VqzError("not a .vqz file (bad magic bytes)")
    if n > len(MAGIC) and buf[len(MAGIC)] != FORMAT_VERSION:
        raise VqzError(
            f"unsupported .vqz format version {buf[len(MAGIC)]}; "
            f"this build reads only version {FORMAT_VERSION}"
        )
    if n < MIN_FILE_SIZE:
        raise VqzError(
            f"file is truncated: {n} bytes is too short to hold a .vqz header "
            f"(at least {MIN_FILE_SIZE} bytes)"
        )
    (_, _, flags, header_length, width, height, mode_id, quality, coder_id,
     n_grids, index_crc32, index_len, alpha_len, digest, name_len) = _FIXED.unpack_from(buf)

    # 2. Declared length vs actual length, before any slicing.
    index_start = FIXED_SIZE + name_len + 4 * n_grids
    expected = index_start + index_len + alpha_len + _CRC_SIZE
    if n < expected:
        raise VqzError(f"file is truncated: header declares {expected} bytes but only {n} are present")
    if n > expected:
        raise VqzError(f"{n - expected} bytes of trailing garbage after the declared end of file at offset {expected}")

    # 3. Integrity.
    stored = struct.unpack_from("<I", buf, n - _CRC_SIZE)[0]
    computed = zlib.crc32(buf[: n - _CRC_SIZE])
    if stored != computed:
        raise VqzError(f"file is corrupt: CRC-32 mismatch, stored {stored:08x}, computed {computed:08x}")

    # 4. Field checks.
    if header_length != index_start:
        raise VqzError(f"inconsistent header length: field says {header_length}, layout gives {index_start}")
    if flags & ~_FLAG_ALPHA:
        raise VqzError(f"reserved flag bits are set (flags = 0x{flags:02x}); this build knows only bit 0")
    if mode_id >= len(MODES):
        raise VqzError(f"unknown mode id {mode_id} (known: {dict(enumerate(MODES))})")
    if coder_id not in _CODER_NAMES:
        raise VqzError(f"unknown coder id {coder_id} (known: {_CODER_NAMES})")
    name_bytes = bytes(buf[FIXED_SIZE : FIXED_SIZE + name_len])
    if not 1 <= name_len <= _MAX_NAME or not all(0x21 <= b <= 0x7E for b in name_bytes):
        raise VqzError(f"bad model name {name_bytes!r}: must be 1..{_MAX_NAME} printable ASCII bytes")
    if width == 0 or height == 0:
        raise VqzError(f"bad image size {width} x {height}: width and height must be at least 1")
    if width * height > limit:
        raise VqzError(
            f"image of {width} x {height} = {width * height} pixels exceeds the limit of "
            f"{limit} pixels; raise it with max_pixels= or {MAX_PIXELS_ENV}"
        )
    if quality == 0:
        raise VqzError("bad quality 0: must be 1..255")
    if n_grids == 0:
        raise VqzError("bad grid count 0: a file holds at least one index grid")
    shapes = tuple(struct.iter_unpack("<HH", buf[FIXED_SIZE + name_len : index_start]))
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
    if bool(flags & _FLAG_ALPHA) != (alpha_len > 0):
        raise VqzError(f"alpha flag ({flags & _FLAG_ALPHA}) disagrees with alpha payload length {alpha_len}")
    if has_alpha != (alpha_len > 0):
        raise VqzError(
            f"mode {mode} {'requires' if has_alpha else 'forbids'} an alpha payload, "
            f"but its length is {alpha_len}"
        )

    header = Header(
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
    )
