"""Tests for the .vqz container (vqcodec/container.py): version 2, written and read, and
version 1, still read."""

from __future__ import annotations

import binascii
import dataclasses
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqcodec.container import (
    CODERS,
    DEFAULT_MAX_PIXELS,
    FORMAT_VERSION,
    MAGIC,
    MAGIC_V1,
    MAX_METADATA_BYTES,
    METADATA_KINDS,
    MODES,
    READ_VERSIONS,
    Header,
    HeaderV1,
    Layer,
    VqzError,
    check_metadata,
    pack,
    unpack,
)

PREFIX = "0123456789abcdef"
MODULE_PATH = Path(__file__).resolve().parents[1] / "vqcodec" / "container.py"


def make_header(**kw) -> Header:
    fields = dict(
        model_prefix=PREFIX,
        width=37,
        height=21,
        mode="RGB",
        quality=4,
        coder="zstd",
        layers=((8, 2), (4, 1)),
        index_crc32=0xDEADBEEF,
    )
    fields.update(kw)
    return Header(**fields)


def leb(value: int) -> bytes:
    """Unsigned LEB128, written here independently of the module."""
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def raw_file(
    *,
    magic: bytes = MAGIC,
    version: int = 2,
    mode: int = 2,
    coder: int = 0,
    metadata_bit: bool | None = None,
    reserved: int = 0,
    quality: int = 4,
    prefix: bytes = bytes(range(8)),
    width: bytes | int = 37,
    height: bytes | int = 21,
    layers: list[int] = [0x31],  # noqa: B006 - never mutated; stride 8, 1 stage
    layer_count: int | None = None,
    index_crc32: int = 7,
    index: bytes = b"idx",
    alpha: bytes = b"",
    metadata: bytes = b"",
    index_len: bytes | None = None,
    alpha_len: bytes | None = None,
    metadata_len: bytes | None = None,
    correction: bytes = b"",
    correction_len: bytes | None = None,
    check: bool = True,
) -> bytes:
    """Build a version-2 file (version 3 with a colour correction) by hand, straight from the
    documented layout, with any field values (valid or not; varints given as bytes are written
    as they are) and a correct check unless check=False."""
    def varint(v):
        return v if isinstance(v, bytes) else leb(v)

    has_metadata = bool(metadata) if metadata_bit is None else metadata_bit
    body = (
        magic
        + bytes([version, mode | coder << 3 | (0x40 if has_metadata else 0) | reserved, quality])
        + prefix
        + varint(width)
        + varint(height)
        + bytes([len(layers) if layer_count is None else layer_count])
        + bytes(layers)
        + struct.pack("<I", index_crc32)
        + (leb(len(index)) if index_len is None else index_len)
        + ((leb(len(alpha)) if alpha_len is None else alpha_len) if mode in (1, 3) else b"")
        + ((leb(len(metadata)) if metadata_len is None else metadata_len) if has_metadata else b"")
        + ((leb(len(correction)) if correction_len is None else correction_len) if version == 3 and reserved & 0x80 else b"")
        + index
        + alpha
        + metadata
        + correction
    )
    return body + struct.pack("<H", binascii.crc_hqx(body, 0) if check else 0)


def metadata_section(content: bytes, declared: int | None = None, frame: bytes | None = None) -> bytes:
    """A metadata section by hand: declared size, then one zstd frame of `content`."""
    if frame is None:
        frame = zstandard.ZstdCompressor().compress(content)
    return leb(len(content) if declared is None else declared) + frame


def with_check(body: bytes) -> bytes:
    """Replace the last 2 bytes by the CRC-16 of the rest."""
    body = body[:-2]
    return body + struct.pack("<H", binascii.crc_hqx(body, 0))


VALID = pack(make_header(), b"index-payload")
ICC, EXIF, XMP = b"\x00\x00\x02\x4cprofile" * 10, b"II*\x00\x08\x00\x00\x00" + bytes(20), b"<x:xmpmeta/>"


# --------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "mode, alpha",
    [("L", b""), ("LA", b"\x28\xb5/\xfd alpha"), ("RGB", b""), ("RGBA", b"a")],
)
@pytest.mark.parametrize("coder", sorted(CODERS))
@pytest.mark.parametrize("metadata", [{}, {"icc": ICC}, {"icc": ICC, "exif": EXIF, "xmp": XMP}, {"xmp": XMP}])
def test_round_trip_modes(mode: str, alpha: bytes, coder: str, metadata: dict) -> None:
    h = make_header(mode=mode, coder=coder)
    data = pack(h, b"\x00\x01payload", alpha, metadata)
    c = unpack(data)
    assert (c.header, c.index_payload, c.alpha_payload, c.metadata) == (h, b"\x00\x01payload", alpha, metadata)
    assert list(c.metadata) == [k for k in METADATA_KINDS if k in metadata]  # in kind order
    assert c.header.has_alpha == (mode in ("LA", "RGBA"))
    assert c.total_bytes == len(data)
    assert c.header_bytes + len(c.index_payload) + len(alpha) + c.metadata_bytes + 2 == len(data)
    assert isinstance(c.index_payload, bytes) and isinstance(c.alpha_payload, bytes)


def test_round_trip_extremes() -> None:
    h = make_header(
        model_prefix="f" * 16,
        width=2**32 - 1,
        height=1,
        quality=255,
        layers=tuple((1 << (15 - i), 15 - i % 15) for i in range(16)),  # coarse to fine
        index_crc32=2**32 - 1,
    )
    data = pack(h, b"")
    assert unpack(data, max_pixels=2**32).header == h
    assert len(data) == 15 + 5 + 1 + 1 + 16 + 4 + 1 + 2


def test_pack_matches_documented_layout() -> None:
    h = make_header(model_prefix=bytes(range(8)).hex(), layers=[(8, 2), (4, 1)], index_crc32=7, mode="RGBA",
                    coder="prior", quality=5)
    assert pack(h, b"idx", b"AL") == raw_file(mode=3, coder=1, quality=5, layers=[0x32, 0x21], alpha=b"AL")
    section = pack(make_header(), b"", b"", {"icc": b"P", "xmp": b"X"})
    content = b"\x01\x01P\x03\x01X"  # kind id, length, bytes; kinds in order
    parsed = unpack(section)
    assert parsed.metadata == {"icc": b"P", "xmp": b"X"}
    frame = section[parsed.header_bytes + 1 : -2]
    assert section[parsed.header_bytes] == len(content)
    assert zstandard.ZstdDecompressor().decompress(frame) == content
    assert zstandard.get_frame_parameters(frame).has_checksum  # the writer sets zstd's checksum


def test_plain_header_is_at_most_32_bytes() -> None:
    """Fixed overhead of a file without alpha or metadata: everything but the index payload."""
    cases = [  # (width, height, layers, index payload bytes)
        (768, 512, ((8, 4),), 13_000),  # Kodak at quality 4
        (768, 512, ((8, 4), (4, 4)), 92_000),  # Kodak at quality 8
        (16383, 16383, ((16, 3), (8, 3), (4, 3)), 2**21 - 1),  # three layers, 2 MiB payload
        (1, 1, ((8, 1),), 3),
    ]
    for width, height, layers, size in cases:
        data = pack(make_header(width=width, height=height, layers=layers), bytes(size))
        assert len(data) - size <= 32, (width, height, layers, len(data) - size)
    assert len(pack(make_header(width=768, height=512, layers=((8, 4),)), bytes(13_000))) - 13_000 == 29


def test_header_normalizes_layers_and_to_dict() -> None:
    h = make_header(layers=[[8, 2], Layer(4, 1)])
    assert h.layers == (Layer(8, 2), Layer(4, 1))
    d = h.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["layers"] == [{"stride": 8, "stages": 2}, {"stride": 4, "stages": 1}]
    assert set(d) == {f.name for f in dataclasses.fields(Header)}
    assert Header(**d) == h
    assert not h.has_alpha


def test_accepts_bytes_like() -> None:
    assert unpack(bytearray(VALID)) == unpack(memoryview(VALID)) == unpack(VALID)


def test_constants() -> None:
    assert MAGIC == b"\x89VQZ" and FORMAT_VERSION == 3 and READ_VERSIONS == (1, 2, 3)
    assert MAGIC_V1 == b"\x89VQZ\r\n\x1a\n" and MAGIC_V1.startswith(MAGIC)
    assert DEFAULT_MAX_PIXELS == 1 << 28 == 16384 * 16384
    assert MODES == ("L", "LA", "RGB", "RGBA") and CODERS == {"zstd": 0, "prior": 1}
    assert METADATA_KINDS == {"icc": 1, "exif": 2, "xmp": 3} and MAX_METADATA_BYTES == 1 << 20


# ------------------------------------------------------------ corrupt files


def test_empty_file() -> None:
    with pytest.raises(VqzError, match="file is empty"):
        unpack(b"")


@pytest.mark.parametrize("data", [b"GIF89a" + bytes(100), b"\x89PNG\r\n\x1a\n" + bytes(100), b"\x89VQ\n", b"x",
                                  MAGIC + b"\x00" + bytes(40), MAGIC + b"\x01" + bytes(40)])
def test_bad_magic(data: bytes) -> None:
    with pytest.raises(VqzError, match=r"not a \.vqz file \(bad magic bytes\)"):
        unpack(data)


def test_text_mode_damage_is_bad_magic() -> None:
    v1 = raw_file_v1()
    for damaged in (v1.replace(b"\r\n", b"\n"), v1.replace(b"\n", b"\r\n"), v1.replace(b"\x1a", b"")):
        with pytest.raises(VqzError, match="bad magic"):
            unpack(damaged)


@pytest.mark.parametrize("version", [4, 13 + 1, 255])
def test_unknown_version(version: int) -> None:
    data = raw_file(version=version)
    message = f"unsupported .vqz format version {version}; this build reads versions 1, 2 and 3"
    with pytest.raises(VqzError, match=message):
        unpack(data)
    with pytest.raises(VqzError, match=message):
        unpack(data[:5])  # known even from a stub


@pytest.mark.parametrize("cut", [5, 10, 25])
def test_too_short_for_header(cut: int) -> None:
    with pytest.raises(VqzError, match=f"truncated: {cut} bytes is too short to hold a .vqz header"):
        unpack(VALID[:cut])


def test_header_running_past_the_data_is_truncation() -> None:
    data = raw_file(layer_count=200, layers=[0x31] * 5)
    with pytest.raises(VqzError, match=f"truncated: its {len(data)} bytes end inside the .vqz header"):
        unpack(data)


@pytest.mark.parametrize("cut", [1, 2, 5, len(VALID) - 26])
def test_truncated(cut: int) -> None:
    n = len(VALID) - cut
    with pytest.raises(VqzError, match=f"truncated: .*{len(VALID)} bytes but only {n} are present|truncated: its {n}"):
        unpack(VALID[:n])


def test_every_prefix_raises_vqz_error() -> None:
    data = pack(make_header(mode="LA"), b"some index bytes", b"alpha", {"icc": ICC, "xmp": XMP})
    for n in range(len(data)):
        with pytest.raises(VqzError):
            unpack(data[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10])
def test_trailing_garbage(extra: bytes) -> None:
    with pytest.raises(VqzError, match=f"{len(extra)} bytes of trailing garbage .* offset {len(VALID)}"):
        unpack(VALID + extra)


@pytest.mark.parametrize("offset", [-10, -1, 6, 8, 15, 18, 21])
def test_flipped_bit_fails_the_check(offset: int) -> None:
    # offsets: payload, the check itself, quality, model prefix, width, a layer, index_crc32
    data = bytearray(VALID)
    data[offset] ^= 0x04
    if offset == 15:  # width 37 -> 33: still one byte, so the layout holds
        assert data[15] == 33
    stored, computed = struct.unpack("<H", bytes(data[-2:]))[0], binascii.crc_hqx(bytes(data[:-2]), 0)
    with pytest.raises(VqzError, match=f"file is corrupt: CRC-16 mismatch, stored {stored:04x}, computed {computed:04x}"):
        unpack(bytes(data))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(reserved=0x80), r"reserved format bit 7 is set \(format = 0x82\)"),
        (dict(mode=4), "unknown mode id 4"),
        (dict(mode=7), "unknown mode id 7"),
        (dict(coder=2), "unknown coder id 2"),
        (dict(coder=7), "unknown coder id 7"),
        (dict(quality=0), "bad quality 0"),
        (dict(width=0), "bad image size 0 x 21"),
        (dict(height=0), "bad image size 37 x 0"),
        (dict(layers=[]), "bad layer count 0"),
        (dict(layers=[0x30]), "bad stage count 0 of the stride-8 layer"),
        (dict(layers=[0x21, 0x32]), "exceeds the one before"),
        (dict(mode=1, alpha_len=b"\x00"), "mode LA requires an alpha payload, but its length is 0"),
        (dict(metadata_bit=True, metadata_len=b"\x00"), "the metadata bit is set, but the metadata section length is 0"),
        (dict(width=b"\xa5\x00"), "bad width: over-long varint"),
        (dict(height=b"\x80\x80\x80\x80\x80\x01"), "bad height: varint longer than 5 bytes"),
        (dict(width=leb(2**32)), f"bad width {2**32}: exceeds"),
        (dict(index_len=b"\x83\x00"), "bad index payload length: over-long varint"),
    ],
)
def test_field_checks(fields: dict, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        unpack(raw_file(**fields))


def test_hand_built_valid_file() -> None:
    c = unpack(raw_file(mode=3, coder=1, alpha=b"AL", layers=[0x24, 0x13], width=300, height=2))
    assert c.header == Header(model_prefix=bytes(range(8)).hex(), width=300, height=2, mode="RGBA", quality=4,
                              coder="prior", layers=((4, 4), (2, 3)), index_crc32=7)
    assert (c.index_payload, c.alpha_payload, c.metadata) == (b"idx", b"AL", {})


# ------------------------------------------------------------------ metadata


def test_metadata_limit_is_checked_before_packing() -> None:
    check_metadata({"exif": bytes(MAX_METADATA_BYTES - 5)})  # kind, 3-byte length: 1 byte to spare
    too_big = {"icc": bytes(MAX_METADATA_BYTES // 2), "xmp": bytes(MAX_METADATA_BYTES // 2)}
    with pytest.raises(VqzError, match=r"metadata of 1048584 bytes \(icc 524288, xmp 524288\) exceeds the .vqz "
                                       "limit of 1048576 bytes"):
        check_metadata(too_big)
    with pytest.raises(VqzError, match="exceeds the .vqz limit"):
        pack(make_header(), b"x", b"", too_big)
    for bad, message in (({"iptc": b"x"}, "unknown metadata kind 'iptc'"), ({"icc": b""}, "must be non-empty bytes"),
                         ({"xmp": "text"}, "must be non-empty bytes")):
        with pytest.raises(VqzError, match=message):
            pack(make_header(), b"x", b"", bad)


def test_oversize_metadata_is_refused_before_decompressing() -> None:
    # a tiny frame that would expand to 64 MiB, declared as 2 MiB: refused by its declared size
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    assert len(bomb) < 10_000
    data = raw_file(metadata=metadata_section(b"", declared=2 << 20, frame=bomb))
    with pytest.raises(VqzError, match="metadata of 2097152 bytes exceeds the .vqz limit of 1048576 bytes"):
        unpack(data)
    # declared within the limit, but the frame holds more: refused without decompressing it all
    data = raw_file(metadata=metadata_section(b"", declared=100, frame=bomb))
    with pytest.raises(VqzError, match="corrupt metadata section: its frame holds 67108864 bytes, the section says 100"):
        unpack(data)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    data = raw_file(metadata=metadata_section(b"", declared=100, frame=streamed))
    with pytest.raises(VqzError, match="corrupt metadata section"):
        unpack(data)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x04\x01x", "unknown metadata kind id 4"),
        (b"\x00\x01x", "unknown metadata kind id 0"),
        (b"\x03\x01x\x01\x01y", "out of order: kind id 1 after 3"),
        (b"\x01\x01x\x01\x01y", "out of order: kind id 1 after 1"),
        (b"\x02\x00", "empty exif metadata entry"),
        (b"\x01\x05abc", "an entry runs past the end"),
        (b"\x01\x81\x00" + b"x", "bad icc length: over-long varint"),
    ],
)
def test_malformed_metadata_content(content: bytes, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        unpack(raw_file(metadata=metadata_section(content)))


def test_malformed_metadata_section() -> None:
    for section, message in ((b"\x00" + zstandard.ZstdCompressor().compress(b""), "bad metadata size 0"),
                             (b"\x05not a frame", "corrupt metadata section"),
                             (metadata_section(b"\x01\x01x")[:-3], "corrupt metadata section"),
                             (metadata_section(b"\x01\x01x") + b"\x00", "corrupt metadata section"),
                             (b"\x85", "ends inside its size field")):
        with pytest.raises(VqzError, match=message):
            unpack(raw_file(metadata=section))


def test_metadata_frame_checksum_is_verified() -> None:
    data = bytearray(pack(make_header(), b"x", b"", {"xmp": XMP * 20}))
    data[-4] ^= 0x01  # the last byte of zstd's content checksum
    with pytest.raises(VqzError, match="corrupt metadata section"):
        unpack(with_check(bytes(data)))


# ------------------------------------------------------------- pixel limit

HUGE = raw_file(width=10**6, height=10**6)


def test_huge_image_refused() -> None:
    with pytest.raises(
        VqzError,
        match=r"image of 1000000 x 1000000 = 1000000000000 pixels exceeds the limit of 268435456 pixels; "
        r"raise it with max_pixels= or VQZ_MAX_PIXELS",
    ):
        unpack(HUGE)


def test_limit_override_argument() -> None:
    assert unpack(HUGE, max_pixels=10**12).header.width == 10**6
    assert unpack(raw_file(), max_pixels=777).header.height == 21
    with pytest.raises(VqzError, match="image of 37 x 21 = 777 pixels exceeds the limit of 776 pixels"):
        unpack(raw_file(), max_pixels=776)


def test_limit_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQZ_MAX_PIXELS", str(10**12))
    assert unpack(HUGE).header.height == 10**6
    monkeypatch.setenv("VQZ_MAX_PIXELS", "100")
    with pytest.raises(VqzError, match="exceeds the limit of 100 pixels"):
        unpack(VALID)
    assert unpack(VALID, max_pixels=1000).header.width == 37  # argument wins
    monkeypatch.setenv("VQZ_MAX_PIXELS", "")
    assert unpack(VALID).header.width == 37  # empty = unset


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1e9", "3.5"])
def test_invalid_env_limit(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VQZ_MAX_PIXELS", value)
    with pytest.raises(ValueError, match="VQZ_MAX_PIXELS must be a positive integer") as info:
        unpack(VALID)
    assert not isinstance(info.value, VqzError)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "100"])
def test_invalid_limit_argument(value: object) -> None:
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        unpack(VALID, max_pixels=value)  # type: ignore[arg-type]


def test_claimed_4gb_payload_fails_fast() -> None:
    for fields in (dict(index_len=leb(2**32 - 1)), dict(alpha_len=leb(2**32 - 1), mode=3),
                   dict(metadata_len=leb(2**32 - 1), metadata_bit=True)):
        data = raw_file(**fields)
        assert len(data) < 100
        with pytest.raises(VqzError, match=r"truncated: header declares \d{10} bytes but only \d\d are present"):
            unpack(data)


# ----------------------------------------------------------- pack rejects


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(model_prefix=""), "bad model_prefix"),
        (dict(model_prefix="0" * 64), "bad model_prefix"),
        (dict(model_prefix="ABCDEF0123456789"), "bad model_prefix"),
        (dict(model_prefix=b"01234567"), "bad model_prefix"),
        (dict(width=0), "bad image width 0"),
        (dict(height=2**32), "bad image height"),
        (dict(width=3.0), "bad image width"),
        (dict(mode="P"), "bad mode 'P'"),
        (dict(mode=["RGB"]), "bad mode"),
        (dict(quality=0), "bad quality 0"),
        (dict(quality=256), "bad quality 256"),
        (dict(coder="brotli"), "bad coder 'brotli'"),
        (dict(layers=()), "bad layer count 0"),
        (dict(layers=((4, 1), (8, 2))), "exceeds the one before"),
        (dict(layers=((8, 0),)), "bad stage count 0"),
        (dict(layers=((8, 16),)), "bad stage count 16"),
        (dict(layers=((6, 1),)), "bad layer stride 6"),
        (dict(layers=((1 << 16, 1),)), "bad layer stride"),
        (dict(layers=((8, 1, 3),)), "layers must be a sequence|bad"),
        (dict(layers=(5,)), "layers must be a sequence"),
        (dict(index_crc32=-1), "bad index_crc32"),
        (dict(index_crc32=2**32), "bad index_crc32"),
    ],
)
def test_header_rejects_bad_values(fields: dict, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        make_header(**fields)
    if "layers" in fields:
        return  # layers are checked as they are built
    # pack re-validates even a header whose fields were forced afterwards
    h = make_header()
    for k, v in fields.items():
        object.__setattr__(h, k, v)
    with pytest.raises(VqzError, match=message):
        pack(h, b"x")


def test_pack_alpha_rules_and_versions() -> None:
    with pytest.raises(VqzError, match="mode RGB has no alpha but alpha_payload is non-empty"):
        pack(make_header(mode="RGB"), b"x", b"a")
    with pytest.raises(VqzError, match="mode LA has alpha but alpha_payload is empty"):
        pack(make_header(mode="LA"), b"x")
    with pytest.raises(TypeError):
        pack(make_header().to_dict(), b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="version 2"):
        pack(unpack(raw_file_v1()).header, b"x")  # type: ignore[arg-type]


# ------------------------------------------------------------------ version 1


def raw_file_v1(
    *,
    magic: bytes = MAGIC_V1,
    version: int = 1,
    flags: int = 0,
    header_length: int | None = None,
    width: int = 37,
    height: int = 21,
    mode: int = 2,
    quality: int = 4,
    coder: int = 0,
    grids: list[tuple[int, int]] = [(3, 5)],  # noqa: B006 - never mutated
    n_grids: int | None = None,
    index_crc32: int = 7,
    index: bytes = b"idx",
    alpha: bytes = b"",
    index_len: int | None = None,
    alpha_len: int | None = None,
    digest: bytes = bytes(range(32)),
    name: bytes = b"m",
    crc: bool = True,
) -> bytes:
    """Build a version-1 file by hand, straight from its documented layout, with any
    field values (valid or not) and a correct CRC unless crc=False."""
    n_grids = len(grids) if n_grids is None else n_grids
    if header_length is None:
        header_length = 69 + len(name) + 4 * len(grids)
    body = (
        magic
        + struct.pack("<BBH", version, flags, header_length)
        + struct.pack("<II", width, height)
        + struct.pack("<BBBB", mode, quality, coder, n_grids)
        + struct.pack("<III", index_crc32,
                      len(index) if index_len is None else index_len,
                      len(alpha) if alpha_len is None else alpha_len)
        + digest
        + bytes([len(name)])
        + name
        + b"".join(struct.pack("<HH", r, c) for r, c in grids)
        + index
        + alpha
    )
    return body + struct.pack("<I", zlib.crc32(body) if crc else 0)


VALID_V1 = raw_file_v1(index=b"index-payload", grids=[(3, 5), (6, 10)])


def test_v1_hand_built_valid_file() -> None:
    c = unpack(raw_file_v1(mode=3, flags=1, alpha=b"AL", name=b"model-1.0_x", grids=[(1, 1), (2, 3)]))
    assert isinstance(c.header, HeaderV1) and c.header.version == 1
    assert c.header.mode == "RGBA" and c.header.model_name == "model-1.0_x"
    assert c.header.grid_shapes == ((1, 1), (2, 3))
    assert c.header.model_sha256 == bytes(range(32)).hex()
    assert (c.index_payload, c.alpha_payload, c.metadata) == (b"idx", b"AL", {})
    assert c.header_bytes == 69 + 11 + 8 and c.total_bytes == c.header_bytes + 5 + 4
    d = c.header.to_dict()
    assert json.loads(json.dumps(d)) == d and d["grid_shapes"] == [[1, 1], [2, 3]]


@pytest.mark.parametrize("version", [0, 2, 255])
def test_v1_unknown_version(version: int) -> None:
    data = raw_file_v1(version=version)
    with pytest.raises(VqzError, match=f"unsupported .vqz format version {version} .*reads versions 1, 2 and 3"):
        unpack(data)
    with pytest.raises(VqzError, match=f"version {version}"):
        unpack(data[:9])


@pytest.mark.parametrize("cut", [9, 40, 72])
def test_v1_too_short_for_header(cut: int) -> None:
    with pytest.raises(VqzError, match=f"truncated: {cut} bytes is too short to hold a .vqz header"):
        unpack(VALID_V1[:cut])


@pytest.mark.parametrize("cut", [1, 4, 20, len(VALID_V1) - 90])
def test_v1_truncated(cut: int) -> None:
    n = len(VALID_V1) - cut
    with pytest.raises(VqzError, match=f"truncated: header declares {len(VALID_V1)} bytes but only {n} are present"):
        unpack(VALID_V1[:n])


def test_v1_every_prefix_and_trailing_garbage() -> None:
    for n in range(len(VALID_V1)):
        with pytest.raises(VqzError):
            unpack(VALID_V1[:n])
    with pytest.raises(VqzError, match=f"1 bytes of trailing garbage .* offset {len(VALID_V1)}"):
        unpack(VALID_V1 + b"\x00")


@pytest.mark.parametrize("offset", [-10, -1, 12, 36, 70, 69 + 8 + 1])
def test_v1_flipped_bit_fails_crc(offset: int) -> None:
    # offsets: payload, CRC itself, width, model digest, name, grid rows
    data = bytearray(VALID_V1)
    data[offset] ^= 0x10
    stored, computed = struct.unpack("<I", VALID_V1[-4:])[0], zlib.crc32(bytes(data[:-4]))
    if offset == -1:
        stored = struct.unpack("<I", bytes(data[-4:]))[0]
    with pytest.raises(VqzError, match=f"file is corrupt: CRC-32 mismatch, stored {stored:08x}, computed {computed:08x}"):
        unpack(bytes(data))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(header_length=200), "inconsistent header length: field says 200, layout gives 74"),
        (dict(flags=0x02), r"reserved flag bits are set \(flags = 0x02\)"),
        (dict(flags=0x80, alpha=b"a", mode=3), "reserved flag bits"),
        (dict(mode=4), "unknown mode id 4"),
        (dict(coder=2), "unknown coder id 2"),
        (dict(name=b""), "bad model name b''"),
        (dict(name=b"a b"), "bad model name"),
        (dict(name=b"caf\xe9"), "bad model name"),
        (dict(name=b"n" * 65), "bad model name"),
        (dict(width=0), "bad image size 0 x 21"),
        (dict(height=0), "bad image size 37 x 0"),
        (dict(quality=0), "bad quality 0"),
        (dict(grids=[]), "bad grid count 0"),
        (dict(grids=[(3, 5), (0, 4)]), "bad shape 0 x 4 of index grid 1"),
        (dict(grids=[(3, 0)]), "bad shape 3 x 0 of index grid 0"),
        (dict(flags=1), "alpha flag .* disagrees with alpha payload length 0"),
        (dict(alpha=b"a"), "alpha flag .* disagrees with alpha payload length 1"),
        (dict(flags=1, alpha=b"a"), "mode RGB forbids an alpha payload, but its length is 1"),
        (dict(mode=1), "mode LA requires an alpha payload, but its length is 0"),
    ],
)
def test_v1_field_checks(fields: dict, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        unpack(raw_file_v1(**fields))


def test_v1_pixel_limits() -> None:
    with pytest.raises(VqzError, match="image of 1000000 x 1000000 = 1000000000000 pixels exceeds the limit"):
        unpack(raw_file_v1(width=10**6, height=10**6))
    data = raw_file_v1(width=1, height=1, grids=[(1, 1), (300, 300)])
    with pytest.raises(VqzError, match="index grid 1 of 300 x 300 = 90000 entries exceeds the limit of 1000"):
        unpack(data, max_pixels=1000)
    assert unpack(data, max_pixels=90000).header.grid_shapes[1] == (300, 300)
    for fields in (dict(index_len=2**32 - 1), dict(alpha_len=2**32 - 1, mode=3, flags=1)):
        with pytest.raises(VqzError, match=r"truncated: header declares \d{10} bytes but only \d\d are present"):
            unpack(raw_file_v1(**fields))


# ------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [
    pack(make_header(mode="RGBA", layers=((8, 3), (4, 2))), b"payload bytes", b"alpha!"),
    pack(make_header(), b"payload", b"", {"icc": ICC, "exif": EXIF, "xmp": XMP}),
    raw_file_v1(mode=3, flags=1, grids=[(2, 3), (4, 6), (8, 12)], index=b"payload bytes", alpha=b"alpha!"),
]


def check_only_vqz_error(data: bytes) -> None:
    try:
        c = unpack(data)
    except VqzError:
        return
    if isinstance(c.header, Header):
        # anything accepted is canonical: it packs back to exactly the same bytes
        assert pack(c.header, c.index_payload, c.alpha_payload, c.metadata) == data


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b"\x02" + b),
                 st.binary(max_size=300).map(lambda b: MAGIC_V1 + b"\x01" + b)))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_only_vqz_error(data)


@FUZZ
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 3),
    st.booleans(),
)
def test_fuzz_mutations(seed: int, edits: list[tuple[int, int]], op: int, fix_check: bool) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in edits:
        if not data:
            break
        if op == 0:
            data[pos % len(data)] = value
        elif op == 1:
            data[pos % len(data)] ^= 1 << (value % 8)
        elif op == 2:
            p = pos % len(data)
            del data[p : p + value % 5 + 1]
        else:
            data[pos % len(data) : pos % len(data)] = bytes([value])
    data = bytes(data)
    if fix_check and data.startswith(MAGIC_V1) and len(data) >= 4:
        data = data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))
    elif fix_check and len(data) >= 2:
        data = with_check(data)
    check_only_vqz_error(data)


# --------------------------------------------------------------- isolation


@pytest.mark.slow
def test_module_does_not_import_torch_or_numpy() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('vqz_container', {str(MODULE_PATH)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['vqz_container'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "h = mod.Header('0' * 16, 1, 1, 'L', 1, 'zstd', ((8, 1),), 0)\n"
        "assert mod.unpack(mod.pack(h, b'x', b'', {'xmp': b'<x/>'})).metadata == {'xmp': b'<x/>'}\n"
        "bad = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------ version 3: a colour correction


def test_a_colour_correction_makes_a_version_3_file_of_the_documented_layout() -> None:
    h = make_header(model_prefix=bytes(range(8)).hex(), mode="RGBA", coder="prior", quality=5, layers=[(8, 2)],
                    index_crc32=7)
    data = pack(h, b"idx", b"AL", correction=b"CC")
    assert data == raw_file(version=3, mode=3, coder=1, quality=5, layers=[0x32], alpha=b"AL", reserved=0x80,
                            correction=b"CC")
    parsed = unpack(data)
    assert parsed.version == 3 and parsed.correction == b"CC" and parsed.header == h
    assert parsed.index_payload == b"idx" and parsed.alpha_payload == b"AL"
    plain = unpack(pack(h, b"idx", b"AL"))  # no correction: version 2, readable by version-2 readers
    assert plain.version == 2 and plain.correction == b"" and pack(h, b"idx", b"AL")[4] == 2


def test_a_correction_follows_the_metadata_section() -> None:
    h = make_header()
    parsed = unpack(pack(h, b"idx", metadata={"icc": b"profile"}, correction=b"\x01\x02\x03"))
    assert parsed.metadata == {"icc": b"profile"} and parsed.correction == b"\x01\x02\x03"


@pytest.mark.parametrize("fields, message", [
    (dict(version=2, reserved=0x80), "reserved format bit 7 is set"),
    (dict(version=3), "version-3 file has a colour correction, but format bit 7 is not set"),
    (dict(version=3, reserved=0x80, correction=b""), "colour correction bit is set, but its section length is 0"),
    (dict(version=3, reserved=0x80, correction=b"CC", correction_len=leb(3)), "truncated"),
    (dict(version=3, reserved=0x80, correction=b"CC", correction_len=leb(1)), "trailing garbage"),
])
def test_bad_colour_correction_fields_are_refused(fields, message) -> None:
    with pytest.raises(VqzError, match=message):
        unpack(raw_file(**fields))
