"""Mutation fuzzing of vqcodec.decode: shared by tests/test_fuzz.py (a short run) and
benchmarks/fuzz_decode.py (the long run).

Seeds are valid .vqz files. Each input is one seed changed by one or more mutations (bit
flips, byte changes, truncation, insertion, deletion, splices of two seeds, appended bytes,
extreme header fields); half of the inputs get their file CRC recomputed, so the mutation
reaches the header checks and the index decoders instead of stopping at the checksum.
Every input must decode or fail with VqzError, within a time limit.
"""
from __future__ import annotations

import random
import struct
import zlib

import numpy as np

import vqcodec
from vqcodec import container

HEADER_FIELDS = [(12, "<I"), (16, "<I"), (20, "B"), (21, "B"), (22, "B"), (23, "B"), (28, "<I"), (32, "<I"),
                 (68, "B"), (10, "<H")]  # width, height, mode, quality, coder, n_grids, lengths, name length
EXTREMES = [0, 1, 2, 7, 8, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 32 - 1]


def seed_files() -> list[bytes]:
    """Valid files: every installed model, both coders where the model has a prior, several
    sizes, modes and quality levels."""
    rng = np.random.default_rng(0)
    seeds = []
    for info in vqcodec.list_models():
        for coder in info["coders"]:
            for (h, w, channels), quality in [((16, 16, 3), 1), ((9, 23, 4), max(info["quality_levels"])),
                                              ((8, 8, 1), info["default_quality"]), ((1, 1, 3), 1)]:
                shape = (h, w) if channels == 1 else (h, w, channels)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                seeds.append(vqcodec.encode(pixels, quality=quality, model=info["name"], coder=coder))
    return seeds


def fix_crc(data: bytearray) -> bytearray:
    if len(data) >= 4:
        data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    return data


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
        else:  # extreme header field
            offset, fmt = rng.choice(HEADER_FIELDS)
            size = struct.calcsize(fmt)
            if len(data) >= offset + size:
                value = rng.choice(EXTREMES) % (1 << (8 * size))
                data[offset:offset + size] = struct.pack(fmt, value)
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
