"""Keep freed memory in the process, so that coding an image does not fault in fresh pages.

A prior's passes allocate and free tensors of a few MB each, hundreds of times per image.
glibc's malloc serves blocks above its mmap threshold (128 KiB, raised only as such blocks
are freed) straight from the kernel and hands them back when freed, so each one comes back
as fresh pages that fault in on first touch: 58,000 page faults and 0.14 s of system time in
one quality-13 Kodak encode measured here. Serving blocks up to 32 MiB from the heap and
keeping up to 1 GiB of freed heap brings that to about 9,000 (docs/EXPERIMENTS.md).
"""
from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap (glibc's largest allowed value)
TRIM_THRESHOLD = 1 << 30  # freed memory at the heap's top goes back to the kernel beyond this much
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above, for the whole process (the CLI calls this first; a
    program that codes many images may too). Returns whether it applied: False where the C
    library is not glibc (musl, macOS, Windows), which is then left alone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
