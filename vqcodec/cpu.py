"""What this CPU's instruction set offers the codec, read once from /proc/cpuinfo.

Two choices hang on it: the networks run in bfloat16 where the CPU multiplies bf16 natively
(inference.native_bfloat16, training.loop; decoded pixels then differ by a level or two), and
the priors' integer products run as int8 x int8 -> int32 where the CPU has int8 dot-product
instructions (nn.prior.exact.Int8Affine; the same integers either way). Elsewhere torch
emulates both, 2-50x slower than float32.
"""
from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products (Cooper Lake, Sapphire Rapids and later)
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products (Cascade Lake, Alder Lake and later)


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none to read)."""
    return frozenset(word for line in _cpuinfo_lines() if line.startswith(("flags", "Features"))
                     for word in line.split(":", 1)[-1].split())


def cpu_model() -> str | None:
    """The CPU's name as /proc/cpuinfo gives it ("model name"), or None."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), None)


def has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    return not cpu_flags().isdisjoint(BF16_FLAGS)


def has_int8_dot_product() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX), which
    torch's int8 matrix product needs to be fast: without them it ran 30-50x slower than a
    float32 product of the same integers on a Skylake-SP (docs/EXPERIMENTS.md, session 23)."""
    return not cpu_flags().isdisjoint(INT8_DOT_FLAGS)
