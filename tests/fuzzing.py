"""Mutation fuzzing of vqcodec.decode: shared by tests/test_fuzz.py (a short run) and
benchmarks/fuzz_decode.py (the long run).

Seeds are valid .vqz files: version 2 files made now (every installed model, both coders,
several sizes and modes, with ICC/EXIF/XMP metadata too) and the golden files (versions 1
and 2) that the installed models decode. Each input is one seed changed by one or more mutations (bit
flips, byte changes, truncation, insertion, deletion, splices of two seeds, appended bytes,
extreme header fields and varints); half of the inputs get their file check recomputed, so
the mutation reaches the header checks, the metadata section and the index decoders instead
of stopping at the checksum. Every input must decode or fail with VqzError, within a time limit.
"""
from __future__ import annotations

import binascii
import io
import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec import container, zoo

GOLDEN = Path(__file__).resolve().parent / "golden"
# version 1: width, height, mode, quality, coder, n_grids, lengths, name length, header length
HEADER_FIELDS_V1 = [(12, "<I"), (16, "<I"), (20, "B"), (21, "B"), (22, "B"), (23, "B"), (28, "<I"), (32, "<I"),
                    (68, "B"), (10, "<H")]
# version 2: format (mode, coder, metadata bit), quality, the layer count/first layer; the
# varints (width, height, lengths) from offset 15 on get extreme LEB128 values
HEADER_FIELDS_V2 = [5, 6, 17, 18]
EXTREMES = [0, 1, 2, 7, 8, 127, 128, 255, 256, 65535, 65536, 2 ** 20, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 35]


def _with_metadata(pixels: np.ndarray) -> bytes:
    """A JPEG of `pixels` with an ICC profile, EXIF (orientation 6) and XMP."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "fuzz"
    icc = b"\x00\x00\x02\x00" + bytes(32) + b"acsp" + bytes(472)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes(), icc_profile=icc, xmp=b"<x:xmpmeta/>")
    return buffer.getvalue()


def seed_files() -> list[bytes]:
    """Valid files: every installed model, both coders where the model has a prior, several
    sizes, modes and quality levels; files with metadata; the golden files."""
    rng = np.random.default_rng(0)
    seeds = []
    for info in vqcodec.list_models():
        for coder in info["coders"]:
            for (h, w, channels), quality in [((16, 16, 3), 1), ((9, 23, 4), max(info["quality_levels"])),
                                              ((8, 8, 1), info["default_quality"]), ((1, 1, 3), 1)]:
                shape = (h, w) if channels == 1 else (h, w, channels)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                seeds.append(vqcodec.encode(pixels, quality=quality, model=info["name"], coder=coder))
        source = _with_metadata(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
        seeds.append(vqcodec.encode(source, quality=1, model=info["name"]))
    for case in json.loads((GOLDEN / "manifest.json").read_text()):
        if zoo.find_by_hash(case["model_sha256"]):  # files of replaced models fail at once: no use
            seeds.append((GOLDEN / case["file"]).read_bytes())
    return seeds


def fix_crc(data: bytearray) -> bytearray:
    """Recompute the file's check: CRC-32 in version 1, CRC-16 in version 2."""
    if data.startswith(container.MAGIC_V1) and len(data) >= 4:
        data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    elif len(data) >= 2:
        data[-2:] = struct.pack("<H", binascii.crc_hqx(bytes(data[:-2]), 0))
    return data


def _leb128(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def mutate(seeds: list[bytes], rng: random.Random) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        kind = rng.randrange(8)
        if kind == 0 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # random byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:  # truncate
            del data[rng.randrange(len(data) + 1):]
        elif kind == 3:  # insert bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif kind == 4 and data:  # delete a run
            i = rng.randrange(len(data))
            del data[i:i + rng.randrange(1, 16)]
        elif kind == 5:  # splice with another seed
            other = rng.choice(seeds)
            data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
        elif kind == 6:  # append bytes
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif data.startswith(container.MAGIC_V1):  # extreme version-1 header field
            offset, fmt = rng.choice(HEADER_FIELDS_V1)
            size = struct.calcsize(fmt)
            if len(data) >= offset + size:
                value = rng.choice(EXTREMES) % (1 << (8 * size))
                data[offset:offset + size] = struct.pack(fmt, value)
        elif rng.random() < 0.5:  # extreme version-2 header byte
            offset = rng.choice(HEADER_FIELDS_V2)
            if len(data) > offset:
                data[offset] = rng.choice(EXTREMES) % 256
        else:  # an extreme varint over whatever bytes follow offset 15
            offset = rng.randrange(15, 30)
            value = _leb128(rng.choice(EXTREMES))
            data[offset:offset + len(value)] = value
    if rng.random() < 0.5:
        fix_crc(data)
    return bytes(data)


def decode_outcome(data: bytes) -> str:
    """'decoded' or 'VqzError'; anything else propagates (a finding)."""
    try:
        vqcodec.decode(data)
    except container.VqzError:
        return "VqzError"
    return "decoded"
