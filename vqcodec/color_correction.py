"""A per-image colour correction: fitted by the encoder, carried in the file, applied by the
decoder after the model's pixels.

    decoded pixels x (H, W, 3) uint8
        │  y_c = x_c + floor((sum over c' of w[c, c'] * x_c' + b_c) / 2**SHIFT + 1/2)
        v        (clipped to 0 ... 255)
    corrected pixels y (H, W, 3) uint8

The encoder fits w and b by least squares against the original image (a Wiener filter with one
tap per channel: the adaptive loop filters of H.266/VVC are fitted and signalled per picture the
same way, Karczewicz et al., IEEE TCSVT 2021), rounds them to integers in units of 2**-SHIFT,
and keeps the correction only where it pays for its bytes (choose). At low rates the model's
colours come out dull, in a way each image's own statistics undo: +0.3 to +0.45 dB at 0.03-0.07
bpp on the held-out photos for 14 bytes (docs/EXPERIMENTS.md, session 17). A 3 x 3 neighbourhood
per channel added little more there for six times the bytes.

Integer weights on integer pixels, bounded so that every sum stays below 2**24 and float32
arithmetic is exact in any order: every decoder computes the same pixels. The arithmetic runs
in torch, whose threads the networks use too (numpy's BLAS would start a second pool that
competes with them for the cores). No file format here: to_bytes / from_bytes are the
correction's own bytes, which the container carries as one section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SHIFT = 8  # weights count 1/256: rounding them costs less than 0.01 dB
MAX_WEIGHT = 1 << 13  # |weight on a channel| < 32 (in units of 2**-SHIFT)
MAX_BIAS = 1 << 16  # |bias| < 256 levels: 255 x 3 x MAX_WEIGHT + MAX_BIAS < 2**24
WEIGHTS = 12  # per output channel: its weight on each input channel, then its bias
SLOPE_DB_PER_OCTAVE = 2.5  # choose: the correction must gain more than this PSNR per doubled file size


def _zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


@dataclass(frozen=True)
class ColorCorrection:
    """weights: for each output channel (R, G, B), its weights on R, G, B and its bias, in units
    of 2**-SHIFT (the change it makes: all zero is no change)."""

    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != WEIGHTS or any(abs(w) >= (MAX_BIAS if i % 4 == 3 else MAX_WEIGHT)
                                               for i, w in enumerate(self.weights)):
            raise ValueError(f"a colour correction is {WEIGHTS} integers: weights below {MAX_WEIGHT} and "
                             f"biases below {MAX_BIAS} in magnitude")

    def to_bytes(self) -> bytes:
        """Each weight as a zigzag LEB128 varint."""
        out = bytearray()
        for w in self.weights:
            z = _zigzag(w)
            while z >= 0x80:
                out.append(z & 0x7F | 0x80)
                z >>= 7
            out.append(z)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ColorCorrection:
        """Inverse of to_bytes; ValueError on anything else (a cut-short, overlong or
        non-canonical varint, bytes left over, a value out of range)."""
        weights, pos = [], 0
        for _ in range(WEIGHTS):
            z, bits = 0, 0
            while True:
                if pos >= len(data) or bits > 14:
                    raise ValueError("colour correction: a weight is cut short or too long")
                byte = data[pos]
                pos += 1
                z |= (byte & 0x7F) << bits
                bits += 7
                if not byte & 0x80:
                    break
            weights.append(z >> 1 if not z & 1 else -(z >> 1) - 1)
        if pos != len(data):
            raise ValueError(f"colour correction: {len(data) - pos} bytes after its weights")
        correction = cls(tuple(weights))
        if correction.to_bytes() != bytes(data):
            raise ValueError("colour correction: a varint with needless bytes")
        return correction

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The corrected image (H, W, 3) uint8 of pixels (H, W, 3) uint8."""
        x = torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, 3)).float()
        w = torch.tensor(self.weights, dtype=torch.float32).view(3, 4)
        change = torch.addmm(w[:, 3], x, w[:, :3].T).mul_(2.0 ** -SHIFT).add_(0.5).floor_()
        return x.add_(change).clamp_(0, 255).to(torch.uint8).numpy().reshape(pixels.shape)


def fit(decoded: np.ndarray, original: np.ndarray) -> ColorCorrection:
    """The least-squares correction taking decoded (H, W, 3) uint8 closest to original, rounded."""
    x = _flat(decoded)
    features = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    gram = features.T @ features
    gram += 1e-9 * torch.trace(gram) * torch.eye(4, dtype=torch.float64)  # a one-colour image: singular
    weights = torch.linalg.solve(gram, features.T @ (_flat(original) - x)).T * 2.0 ** SHIFT  # (3 outputs, 4)
    bound = torch.tensor([MAX_WEIGHT] * 3 + [MAX_BIAS], dtype=torch.float64) - 1
    scaled = torch.minimum(torch.maximum(weights.round(), -bound), bound)
    return ColorCorrection(tuple(int(w) for w in scaled.reshape(-1).tolist()))


def _flat(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H * W, 3) float64."""
    return torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, 3)).double()


def _squared_error(a: np.ndarray, b: np.ndarray) -> float:
    difference = (_flat(a) - _flat(b)).view(-1)
    return float(difference @ difference)  # integers: exact


def choose(decoded: np.ndarray, original: np.ndarray, file_bytes: int) -> ColorCorrection | None:
    """The fitted correction if it makes a better file than none, else None: of two files of b
    bytes and squared error e, the one with the smaller log2(b) + 10 log10(e) /
    SLOPE_DB_PER_OCTAVE is better (the PSNR each gains per doubled size along a typical
    rate-distortion slope). file_bytes: the file's size without the correction."""
    def cost(size: int, error: float) -> float:
        return math.log2(size) + 10 * math.log10(max(error, 1.0)) / SLOPE_DB_PER_OCTAVE

    correction = fit(decoded, original)
    section = len(correction.to_bytes())
    size = file_bytes + section + 1  # and its one-byte length field
    if cost(size, _squared_error(correction.apply(decoded), original)) < cost(file_bytes, _squared_error(decoded, original)):
        return correction
    return None
