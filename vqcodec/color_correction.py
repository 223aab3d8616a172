"""A per-image colour correction: fitted by the encoder, carried in the file, applied by the
decoder after the model's pixels.

    decoded pixels x (H, W, 3) uint8, u = x - 128 per channel
        │  y_c = x_c + floor(sum over the monomials m of u up to degree D (1 or 2) of
        │                    w[c, m] * m(u) / 128**(deg m - 1) / 2**SHIFT  +  1/2)
        v        (clipped to 0 ... 255; the degree-0 monomial is 1: its weight is an offset)
    corrected pixels y (H, W, 3) uint8

A polynomial colour transform, as camera pipelines fit to colour charts: degree 1 is a 3x3
matrix plus offsets, degree 2 adds the squares and products of the channels (a tone curve
per channel and their interplay). The encoder fits w by least squares against the original
image (a Wiener filter on colours: the adaptive loop filters of H.266/VVC are fitted and
signalled per picture the same way, Karczewicz et al., IEEE TCSVT 2021), rounds it to integers
in units of 2**-SHIFT, and keeps whichever degree makes the better file, or none (choose).
At low rates the model's colours and tones come out dull in a way each image's own statistics
undo (docs/EXPERIMENTS.md, session 17).

Integer weights on integer monomials, every term scaled to degree 2 and summed in float64 (each
sum an integer below 2**38): every decoder computes the same pixels. The arithmetic runs in
torch, whose threads the networks use too (numpy's BLAS would start a second pool that
competes with them for the cores). to_bytes / from_bytes are the correction's own bytes
(the varints are the container's), which the container carries as one section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import container

DEGREES = (1, 2)  # the polynomial degrees a correction may have
SHIFT = 10  # weights count 2**-10 (of a term scaled to +-128): rounding them costs < 0.01 dB
MAX_WEIGHT = 1 << 20  # |weight| below this: every sum stays below 2**38, exact in float64
SLOPE_DB_PER_OCTAVE = 2.5  # choose: a correction must gain more than this PSNR per doubled file size
CHUNK_PIXELS = 1 << 16  # pixels whose monomials exist at once
_PAIRS = ([0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2])  # the degree-2 monomials: RR, RG, RB, GG, GB, BB


def weight_count(degree: int) -> int:
    """Weights of a correction of `degree`: per output channel, one per monomial of degree at
    most `degree` in 3 variables (1, u_R, u_G, u_B, then RR, RG, RB, GG, GB, BB)."""
    return 3 * (4 if degree == 1 else 10)


def _integer_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(n, monomials) float64 integers: 128 x each monomial of u = x - 128 (x (n, 3) float64,
    integers) divided by 128**(its degree - 1): 16384, 128 u_c, then u_c u_d (at most 2**14)."""
    u = x - 128
    parts = [torch.full((len(x), 1), 16384.0, dtype=torch.float64), u * 128]
    if degree == 2:
        parts.append(u[:, _PAIRS[0]] * u[:, _PAIRS[1]])
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class ColorCorrection:
    """degree: 1 or 2; weights: for each output channel (R, G, B), one per monomial (in the
    order of weight_count's docstring), in units of 2**-SHIFT."""

    degree: int
    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.degree not in DEGREES:
            raise ValueError(f"a colour correction has degree 1 or 2, got {self.degree}")
        if len(self.weights) != weight_count(self.degree) or any(abs(w) >= MAX_WEIGHT for w in self.weights):
            raise ValueError(f"a degree-{self.degree} colour correction is {weight_count(self.degree)} integers "
                             f"below {MAX_WEIGHT} in magnitude")

    def to_bytes(self) -> bytes:
        """The degree (one byte), then each weight as a zigzag varint (container.signed_varints)."""
        return bytes([self.degree]) + container.signed_varints(self.weights)

    @classmethod
    def from_bytes(cls, data: bytes) -> ColorCorrection:
        """Inverse of to_bytes; ValueError on anything else (an unknown degree, weights that do
        not fill the rest exactly, an over-long varint, a value out of range)."""
        if not data or data[0] not in DEGREES:
            raise ValueError(f"unknown degree {data[0] if data else None}")
        return cls(data[0], tuple(container.read_signed_varints(data[1:], weight_count(data[0]))))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The corrected image (H, W, 3) uint8 of pixels (H, W, 3) uint8: every sum below is an
        integer under 2**38 (features at most 2**14, weights under 2**20), exact in float64."""
        flat = _rows(pixels)
        weights = torch.tensor(self.weights, dtype=torch.float64).view(3, -1)
        out = torch.empty_like(flat)
        for start in range(0, len(flat), CHUNK_PIXELS):
            x = flat[start:start + CHUNK_PIXELS].double()
            total = _integer_features(x, self.degree) @ weights.T  # 128 x 2**SHIFT x the change
            change = torch.floor(total.mul_(2.0 ** -(SHIFT + 7)).add_(0.5))
            out[start:start + CHUNK_PIXELS] = x.add_(change).clamp_(0, 255).to(torch.uint8)
        return out.numpy().reshape(pixels.shape)


def fit(decoded: np.ndarray, original: np.ndarray, degree: int) -> ColorCorrection:
    """The least-squares correction of `degree` taking decoded (H, W, 3) uint8 closest to
    original, rounded to its integer weights."""
    rows_x, rows_t = _rows(decoded), _rows(original)
    size = weight_count(degree) // 3
    gram = torch.zeros(size, size, dtype=torch.float64)
    cross = torch.zeros(size, 3, dtype=torch.float64)
    for start in range(0, len(rows_x), CHUNK_PIXELS):
        x = rows_x[start:start + CHUNK_PIXELS].double()
        features = _integer_features(x, degree) / 128  # the monomials as the weights count them
        gram += features.T @ features
        cross += features.T @ (rows_t[start:start + CHUNK_PIXELS].double() - x)
    gram += 1e-9 * torch.trace(gram) * torch.eye(size, dtype=torch.float64)  # one-colour images: singular
    weights = (torch.linalg.solve(gram, cross).T * 2.0 ** SHIFT).round().clamp(1 - MAX_WEIGHT, MAX_WEIGHT - 1)
    return ColorCorrection(degree, tuple(int(w) for w in weights.reshape(-1).tolist()))


def _rows(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H * W, 3) uint8 tensor, on the array's memory where it is writable
    (the float64 work goes chunk by chunk: a 24-megapixel image in float64 would be 0.6 GB)."""
    array = np.ascontiguousarray(pixels).reshape(-1, 3)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _squared_error(a: np.ndarray, b: np.ndarray) -> float:
    rows_a, rows_b = _rows(a), _rows(b)
    total = 0.0
    for start in range(0, len(rows_a), CHUNK_PIXELS):
        difference = (rows_a[start:start + CHUNK_PIXELS].double() - rows_b[start:start + CHUNK_PIXELS]).view(-1)
        total += float(difference @ difference)  # integers: exact
    return total


def choose(decoded: np.ndarray, original: np.ndarray, file_bytes: int) -> ColorCorrection | None:
    """The fitted correction (of either degree) that makes the best file, or None if neither
    beats the file without: of two files of b bytes and squared error e, the one with the
    smaller log2(b) + 10 log10(e) / SLOPE_DB_PER_OCTAVE is better (the PSNR each gains per
    doubled size along a typical rate-distortion slope). file_bytes: the file's size without one."""
    def cost(size: int, error: float) -> float:
        return math.log2(size) + 10 * math.log10(max(error, 1.0)) / SLOPE_DB_PER_OCTAVE

    best, best_cost = None, cost(file_bytes, _squared_error(decoded, original))
    for degree in DEGREES:
        correction = fit(decoded, original, degree)
        section = len(correction.to_bytes())
        size = file_bytes + section + (section.bit_length() + 6) // 7  # and its length field
        candidate = cost(size, _squared_error(correction.apply(decoded), original))
        if candidate < best_cost:
            best, best_cost = correction, candidate
    return best
