"""Tests for the .vqz version-1 container (vqcodec/container.py)."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqcodec.container import (
    CODERS,
    DEFAULT_MAX_PIXELS,
    FORMAT_VERSION,
    MAGIC,
    MODES,
    Container,
    Header,
    VqzError,
    pack,
    unpack,
)

SHA = "0123456789abcdef" * 4
MODULE_PATH = Path(__file__).resolve().parents[1] / "vqcodec" / "container.py"


def make_header(**kw) -> Header:
    fields = dict(
        model_name="vqvae-f8",
        model_sha256=SHA,
        width=37,
        height=21,
        mode="RGB",
        quality=4,
        coder="zstd",
        grid_shapes=((3, 5), (6, 10)),
        index_crc32=0xDEADBEEF,
    )
    fields.update(kw)
    return Header(**fields)


def raw_file(
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
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
    """Build a file by hand, straight from the documented layout, with any
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


def with_crc(body: bytes) -> bytes:
    """Replace the last 4 bytes by the CRC-32 of the rest."""
    body = body[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


VALID = pack(make_header(), b"index-payload")


# --------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "mode, alpha",
    [("L", b""), ("LA", b"\x28\xb5/\xfd alpha"), ("RGB", b""), ("RGBA", b"a")],
)
@pytest.mark.parametrize("coder", sorted(CODERS))
def test_round_trip_modes(mode: str, alpha: bytes, coder: str) -> None:
    h = make_header(mode=mode, coder=coder)
    data = pack(h, b"\x00\x01payload", alpha)
    c = unpack(data)
    assert c == Container(h, b"\x00\x01payload", alpha)
    assert c.header.has_alpha == (mode in ("LA", "RGBA"))
    assert c.total_bytes == len(data)
    assert isinstance(c.index_payload, bytes) and isinstance(c.alpha_payload, bytes)


def test_round_trip_extremes() -> None:
    h = make_header(
        model_name="x" * 64,
        model_sha256="f" * 64,
        width=2**32 - 1,
        height=1,
        quality=255,
        grid_shapes=tuple((i % 7 + 1, 65535 if i == 0 else i + 1) for i in range(255)),
        index_crc32=2**32 - 1,
    )
    data = pack(h, b"")
    assert unpack(data, max_pixels=2**32).header == h
    assert len(data) == 69 + 64 + 4 * 255 + 4


def test_pack_matches_documented_layout() -> None:
    h = make_header(model_name="m", grid_shapes=[(3, 5)], index_crc32=7, mode="RGBA")
    h = dataclasses.replace(h, model_sha256=bytes(range(32)).hex())
    assert pack(h, b"idx", b"AL") == raw_file(mode=3, flags=1, alpha=b"AL")


def test_header_normalizes_grid_shapes_and_to_dict() -> None:
    h = make_header(grid_shapes=[[3, 5], [6, 10]])
    assert h.grid_shapes == ((3, 5), (6, 10))
    d = h.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["grid_shapes"] == [[3, 5], [6, 10]]
    assert set(d) == {f.name for f in dataclasses.fields(Header)}
    assert Header(**d) == h


def test_accepts_bytes_like() -> None:
    assert unpack(bytearray(VALID)) == unpack(memoryview(VALID)) == unpack(VALID)


def test_constants() -> None:
    assert MAGIC == b"\x89VQZ\r\n\x1a\n" and FORMAT_VERSION == 1
    assert DEFAULT_MAX_PIXELS == 1 << 28 == 16384 * 16384
    assert MODES == ("L", "LA", "RGB", "RGBA") and CODERS == {"zstd": 0, "prior": 1}


# ------------------------------------------------------------ corrupt files


def test_empty_file() -> None:
    with pytest.raises(VqzError, match="file is empty"):
        unpack(b"")


@pytest.mark.parametrize("data", [b"GIF89a" + bytes(100), b"\x89PNG\r\n\x1a\n" + bytes(100), b"\x89VQZ\n", b"x"])
def test_bad_magic(data: bytes) -> None:
    with pytest.raises(VqzError, match=r"not a \.vqz file \(bad magic bytes\)"):
        unpack(data)


def test_text_mode_damage_is_bad_magic() -> None:
    with pytest.raises(VqzError, match="bad magic"):
        unpack(VALID.replace(b"\r\n", b"\n"))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(version: int) -> None:
    data = raw_file(version=version)
    with pytest.raises(VqzError, match=f"unsupported .vqz format version {version}; this build reads only version 1"):
        unpack(data)
    with pytest.raises(VqzError, match=f"version {version}"):
        unpack(data[:9])  # known even from a stub


@pytest.mark.parametrize("cut", [9, 40, 72])
def test_too_short_for_header(cut: int) -> None:
    with pytest.raises(VqzError, match=f"truncated: {cut} bytes is too short to hold a .vqz header"):
        unpack(VALID[:cut])


@pytest.mark.parametrize("cut", [1, 4, 20, len(VALID) - 80])
def test_truncated(cut: int) -> None:
    n = len(VALID) - cut
    with pytest.raises(VqzError, match=f"truncated: header declares {len(VALID)} bytes but only {n} are present"):
        unpack(VALID[:n])


def test_every_prefix_raises_vqz_error() -> None:
    data = pack(make_header(mode="LA"), b"some index bytes", b"alpha")
    for n in range(len(data)):
        with pytest.raises(VqzError):
            unpack(data[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10])
def test_trailing_garbage(extra: bytes) -> None:
    with pytest.raises(VqzError, match=f"{len(extra)} bytes of trailing garbage .* offset {len(VALID)}"):
        unpack(VALID + extra)


@pytest.mark.parametrize("offset", [-10, -1, 12, 36, 70, 69 + 8 + 1])
def test_flipped_bit_fails_crc(offset: int) -> None:
    # offsets: payload, CRC itself, width, model digest, name, grid rows
    data = bytearray(VALID)
    data[offset] ^= 0x10
    stored, computed = struct.unpack("<I", VALID[-4:])[0], zlib.crc32(bytes(data[:-4]))
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
def test_field_checks(fields: dict, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        unpack(raw_file(**fields))


def test_hand_built_valid_file() -> None:
    c = unpack(raw_file(mode=3, flags=1, alpha=b"AL", name=b"model-1.0_x", grids=[(1, 1), (2, 3)]))
    assert c.header.mode == "RGBA" and c.header.model_name == "model-1.0_x"
    assert c.header.grid_shapes == ((1, 1), (2, 3))
    assert c.header.model_sha256 == bytes(range(32)).hex()
    assert (c.index_payload, c.alpha_payload) == (b"idx", b"AL")


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


def test_limit_boundary_and_grids() -> None:
    with pytest.raises(VqzError, match="image of 37 x 21 = 777 pixels exceeds the limit of 776 pixels"):
        unpack(raw_file(), max_pixels=776)
    data = raw_file(width=1, height=1, grids=[(1, 1), (300, 300)])
    with pytest.raises(VqzError, match="index grid 1 of 300 x 300 = 90000 entries exceeds the limit of 1000"):
        unpack(data, max_pixels=1000)
    assert unpack(data, max_pixels=90000).header.grid_shapes[1] == (300, 300)


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
    for fields in (dict(index_len=2**32 - 1), dict(alpha_len=2**32 - 1, mode=3, flags=1)):
        data = raw_file(**fields)
        assert len(data) < 100
        with pytest.raises(VqzError, match=r"truncated: header declares \d{10} bytes but only \d\d are present"):
            unpack(data)


# ----------------------------------------------------------- pack rejects


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(model_name=""), "bad model name"),
        (dict(model_name="x" * 65), "bad model name"),
        (dict(model_name="héllo"), "bad model name"),
        (dict(model_name="has space"), "bad model name"),
        (dict(model_name=b"bytes"), "bad model name"),
        (dict(model_sha256="ABC" + "0" * 61), "bad model_sha256"),
        (dict(model_sha256="0" * 63), "bad model_sha256"),
        (dict(width=0), "bad image width 0"),
        (dict(height=2**32), "bad image height"),
        (dict(width=3.0), "bad image width"),
        (dict(mode="P"), "bad mode 'P'"),
        (dict(mode=["RGB"]), "bad mode"),
        (dict(quality=0), "bad quality 0"),
        (dict(quality=256), "bad quality 256"),
        (dict(coder="brotli"), "bad coder 'brotli'"),
        (dict(grid_shapes=()), "bad grid count 0"),
        (dict(grid_shapes=((1, 1),) * 256), "bad grid count 256"),
        (dict(grid_shapes=((1, 0),)), "bad shape"),
        (dict(grid_shapes=((1, 65536),)), "bad shape"),
        (dict(grid_shapes=((1, 2, 3),)), "bad shape"),
        (dict(grid_shapes=(5,)), "grid_shapes must be a sequence|bad shape 5 of index grid 0"),
        (dict(index_crc32=-1), "bad index_crc32"),
        (dict(index_crc32=2**32), "bad index_crc32"),
    ],
)
def test_header_rejects_bad_values(fields: dict, message: str) -> None:
    with pytest.raises(VqzError, match=message):
        make_header(**fields)
    # pack re-validates even a header whose fields were forced afterwards
    h = make_header()
    for k, v in fields.items():
        object.__setattr__(h, k, v)
    with pytest.raises(VqzError, match=message):
        pack(h, b"x")


def test_pack_alpha_rules() -> None:
    with pytest.raises(VqzError, match="mode RGB has no alpha but alpha_payload is non-empty"):
        pack(make_header(mode="RGB"), b"x", b"a")
    with pytest.raises(VqzError, match="mode LA has alpha but alpha_payload is empty"):
        pack(make_header(mode="LA"), b"x")
    with pytest.raises(TypeError):
        pack(make_header().to_dict(), b"x")  # type: ignore[arg-type]


# ------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED = pack(make_header(mode="RGBA", grid_shapes=((2, 3), (4, 6), (8, 12))), b"payload bytes", b"alpha!")


def check_only_vqz_error(data: bytes) -> None:
    try:
        c = unpack(data)
    except VqzError:
        return
    # anything accepted is canonical: it packs back to exactly the same bytes
    assert pack(c.header, c.index_payload, c.alpha_payload) == data


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b"\x01" + b)))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_only_vqz_error(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 3),
    st.booleans(),
)
def test_fuzz_mutations(edits: list[tuple[int, int]], op: int, fix_crc: bool) -> None:
    data = bytearray(SEED)
    for pos, value in edits:
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
    check_only_vqz_error(with_crc(data) if fix_crc and len(data) >= 4 else data)


# --------------------------------------------------------------- isolation


def test_module_does_not_import_torch_or_numpy() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('vqz_container', {str(MODULE_PATH)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['vqz_container'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.unpack(mod.pack(mod.Header('m', '0' * 64, 1, 1, 'L', 1, 'zstd', ((1, 1),), 0), b'x'))\n"
        "bad = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
