"""Rate control: the quality level per image that meets a size or a quality target
(what cwebp's -size and -psnr do).

    --target-bpp X   the highest level whose file is at most X bits per pixel
    --target-psnr Y  the lowest level whose decoded image is at least Y dB (RGB PSNR over
                     the visible pixels, as `vqcodec bench` measures it)

Guaranteed: the file returned meets the target whenever `met` is True, because its size or
PSNR was measured on that very file, not predicted. Searched: a binary search over the levels,
which finds the best level when size and PSNR grow with the level. On average they do for every
bundled model, but not always image by image: on Kodak, photo2's size drops in 1 and its PSNR in
1 of 288 steps from one level to the next, both at levels 4 -> 5, where a second stage comes in at
an 11x smaller multiple of its lambda. There the level returned still meets the target, but a
better one may be missed. When no level meets it, the
nearest level is returned with met False: the lowest for a size target, the highest for a
quality target. Each probe is a full encode (and, for PSNR, a decode): about log2(levels) + 1
of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Choice:
    level: int
    value: float  # the measured bpp or PSNR of that level
    met: bool
    probes: int


def _search(levels: list[int], measure: Callable[[int], float], acceptable: Callable[[float], bool],
            prefer_high: bool) -> Choice:
    """The highest (prefer_high) or lowest acceptable level, assuming acceptability is monotone
    in the level: a prefix of the levels for size targets, a suffix for quality targets."""
    seen: dict[int, float] = {}

    def value(i: int) -> float:
        if i not in seen:
            seen[i] = measure(levels[i])
        return seen[i]

    lo, hi, best = 0, len(levels) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if acceptable(value(mid)):
            best = mid
            lo, hi = (mid + 1, hi) if prefer_high else (lo, mid - 1)
        else:
            lo, hi = (lo, mid - 1) if prefer_high else (mid + 1, hi)
    if best is None:
        nearest = 0 if prefer_high else len(levels) - 1
        return Choice(levels[nearest], value(nearest), False, len(seen))
    return Choice(levels[best], value(best), True, len(seen))


def for_target_bpp(levels: list[int], bpp_of: Callable[[int], float], target: float) -> Choice:
    """The highest level whose measured bpp is <= target."""
    return _search(sorted(levels), bpp_of, lambda bpp: bpp <= target, prefer_high=True)


def for_target_psnr(levels: list[int], psnr_of: Callable[[int], float], target: float) -> Choice:
    """The lowest level whose measured PSNR is >= target."""
    return _search(sorted(levels), psnr_of, lambda psnr: psnr >= target, prefer_high=False)
