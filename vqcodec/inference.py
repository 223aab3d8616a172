"""How the codec runs its networks: tiling, the bfloat16 / float32 choice, and uint8 pixels
(numpy, H x W x 3) <-> tensors. The networks in nn/ are tensor in, tensor out; this is the one
place that decides how they run on an image. codec.py uses it.

    policy = Policy.default()     # once per encode or decode: VQCODEC_FLOAT32 and the CPU
    z = encode_latents(vqvae, pixels, policy)                   # latents, for the residual VQ
    z = refine_latents(vqvae, pixels, z, stages, steps, policy) # optional: fitted to this image
    base = decode_pixels(vqvae, indices, policy)                # uint8 pixels
    detail = encode_detail(layer, pixels, base, stages, policy) # enhancement layer's indices
    pixels = decode_detail(layer, detail, base, policy)
    grids = encode_hierarchy(model, pixels, stages, lam, policy)  # hierarchical model's indices
    pixels = decode_hierarchy(model, grids, policy)

Images larger than a tile are run tile by tile (`tiled`), each tile with a margin of context
that is computed and dropped, so memory stays bounded whatever the image size; the margin
reaches beyond the networks' receptive fields, so tiles leave no visible seams.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cpu import has_native_bf16
from .nn import refine

TILE_PIXELS = 1024  # tile side in pixels (128 grid positions at stride 8, 256 at stride 4)
TILE_MARGIN = 8  # grid positions of context around each tile (64 pixels at stride 8, 32 at stride 4)


@dataclass(frozen=True)
class Policy:
    """bfloat16: run the networks in bfloat16 where they allow it (their last layers and
    distances stay float32); tile_pixels, margin: tile side in pixels, context in grid positions."""

    bfloat16: bool = False
    tile_pixels: int = TILE_PIXELS
    margin: int = TILE_MARGIN

    @classmethod
    def default(cls) -> Policy:
        """This machine's policy: bfloat16 where native_bfloat16()."""
        return cls(bfloat16=native_bfloat16())


def native_bfloat16() -> bool:
    """Whether encoding and decoding run the networks in bfloat16: only on CPUs with bf16
    dot-product instructions (AVX512-BF16 or AMX), where that halves their time at no measured
    cost in PSNR (docs/EXPERIMENTS.md); elsewhere bf16 is emulated and slower than float32.
    VQCODEC_FLOAT32=1 turns it off. Decoding derives the same indices either way; decoded
    pixels differ from the float32 path by a level or two (the encoder may pick other indices)."""
    if os.environ.get("VQCODEC_FLOAT32", "") not in ("", "0"):
        return False
    return has_native_bf16()


def tiles(rows: int, cols: int, tile: int, margin: int) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice],
                                                                           tuple[int, int]]]:
    """(core slice, padded slice, core offset inside the padded one) per tile, in grid positions."""
    for top in range(0, rows, tile):
        for left in range(0, cols, tile):
            core = (slice(top, min(rows, top + tile)), slice(left, min(cols, left + tile)))
            t0, l0 = max(0, top - margin), max(0, left - margin)
            padded = (slice(t0, min(rows, top + tile + margin)), slice(l0, min(cols, left + tile + margin)))
            yield core, padded, (top - t0, left - l0)


def tiled(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], rows: int, cols: int, tile: int,
          margin: int, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """fn(*inputs) over a grid of rows x cols positions, tile by tile: each input (B, C, H, W)
    has a whole number of elements per position along H and W (pixels per position: the
    stride; 1 for index grids), and so has fn's output; each tile sees `margin` positions of
    context on every side, which are dropped from its output."""
    out = None
    for (cr, cc), (pr, pc), (dr, dc) in tiles(rows, cols, tile, margin):
        part = fn(*(x[..., _scaled(pr, x.shape[-2] // rows), _scaled(pc, x.shape[-1] // cols)] for x in inputs))
        scale = part.shape[-2] // (pr.stop - pr.start)
        if out is None:
            out = torch.empty(*part.shape[:-2], rows * scale, cols * scale, dtype=part.dtype)
            out = out.contiguous(memory_format=memory_format)
        core = (slice(dr, dr + cr.stop - cr.start), slice(dc, dc + cc.stop - cc.start))
        out[..., _scaled(cr, scale), _scaled(cc, scale)] = part[..., _scaled(core[0], scale), _scaled(core[1], scale)]
    return out


def _scaled(positions: slice, scale: int) -> slice:
    return slice(positions.start * scale, positions.stop * scale)


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (1, 3, H, W), a view, only ever read (so a read-only array,
    such as np.asarray of a PIL image, needs no copy)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(pixels)).permute(2, 0, 1).unsqueeze(0)


def _float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [0, 1], channels-last."""
    return pixels.float().div(255).contiguous(memory_format=torch.channels_last)


def _uint8(images: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] -> uint8, rounded."""
    return images.mul(255).round().to(torch.uint8)


def _pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (1, 3, H, W), channels-last -> (H, W, 3), a view."""
    return images[0].permute(1, 2, 0).numpy()


def _grid(pixels: np.ndarray, stride: int) -> tuple[int, int]:
    return pixels.shape[0] // stride, pixels.shape[1] // stride


@torch.no_grad()
def encode_latents(vqvae, pixels: np.ndarray, policy: Policy) -> torch.Tensor:
    """uint8 pixels (H, W, 3), H and W multiples of the stride -> latents (1, D, H/s, W/s)."""
    s = vqvae.config.stride
    return tiled(lambda x: vqvae.encode(_float(x), policy.bfloat16), [_tensor(pixels)], *_grid(pixels, s),
                 policy.tile_pixels // s, policy.margin)


def refine_latents(vqvae, pixels: np.ndarray, latents: torch.Tensor, num_stages: int, steps: int,
                   policy: Policy) -> torch.Tensor:
    """encode_latents' latents for uint8 pixels (H, W, 3), refined for the first num_stages
    stages by `steps` gradient steps (nn.refine), tile by tile; float32."""
    s = vqvae.config.stride
    return tiled(lambda x, z: refine.refine_latents(vqvae, _float(x), z, num_stages, steps),
                 [_tensor(pixels), latents], *_grid(pixels, s), policy.tile_pixels // s, policy.margin)


@torch.no_grad()
def decode_pixels(vqvae, indices: torch.Tensor, policy: Policy) -> np.ndarray:
    """indices (1, n, h, w) -> uint8 pixels (h*s, w*s, 3)."""
    tile = policy.tile_pixels // vqvae.config.stride
    return _pixels(tiled(lambda i: _uint8(vqvae.decode(i, policy.bfloat16)), [indices], *indices.shape[-2:], tile,
                         policy.margin, torch.channels_last))


@torch.no_grad()
def encode_detail(layer, pixels: np.ndarray, base: np.ndarray, num_stages: int, policy: Policy) -> torch.Tensor:
    """The enhancement layer's indices (1, num_stages, H/s, W/s) of uint8 pixels and their
    base reconstruction (H, W, 3), H and W multiples of the stride."""
    s = layer.config.stride
    return tiled(lambda x, b: layer.encode(_float(x), _float(b), num_stages, policy.bfloat16),
                 [_tensor(pixels), _tensor(base)], *_grid(pixels, s), policy.tile_pixels // s, policy.margin)


@torch.no_grad()
def decode_detail(layer, indices: torch.Tensor, base: np.ndarray, policy: Policy) -> np.ndarray:
    """The enhancement layer's indices (1, n, h, w) over the uint8 base reconstruction
    (h*s, w*s, 3) -> uint8 pixels (h*s, w*s, 3)."""
    tile = policy.tile_pixels // layer.config.stride
    return _pixels(tiled(lambda i, b: _uint8(layer.decode(i, _float(b), policy.bfloat16)), [indices, _tensor(base)],
                         *indices.shape[-2:], tile, policy.margin, torch.channels_last))


@torch.no_grad()
def encode_hierarchy(model, pixels: np.ndarray, num_stages: int, lam: float | None, policy: Policy,
                     chooser=None) -> list[torch.Tensor]:
    """A hierarchical model's (nn.hierarchy) index grids (h, w) of uint8 pixels (H, W, 3), H
    and W multiples of its stride: the first num_stages stages, coarse to fine, chosen by ECVQ
    at tradeoff lam (None: the nearest codes), or by `chooser` (HierarchicalVQ.encode_indices).
    The analysis runs tile by tile, one step (stride) at a time, and so does the decoder state's
    way down to a finer level; the choice of indices, on latent grids, over the whole image."""
    features, previous = {}, _tensor(pixels)
    for stride in model.analysis_strides():
        def step(x: torch.Tensor, stride: int = stride) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=policy.bfloat16):
                return model.analyze_step(stride, _float(x) if stride == 4 else x)
        previous = features[stride] = tiled(step, [previous], *_grid(pixels, stride), policy.tile_pixels // stride,
                                            policy.margin)

    def convolve(fn: Callable[[torch.Tensor], torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        stride = pixels.shape[0] // state.shape[-2]
        return tiled(fn, [state], *state.shape[-2:], policy.tile_pixels // stride, policy.margin)

    grids, _ = model.encode_features(features, num_stages, lam, policy.bfloat16, chooser, convolve)
    return [grid[0] for grid in grids]


@torch.no_grad()
def decode_hierarchy(model, grids: Sequence[torch.Tensor], policy: Policy) -> np.ndarray:
    """A hierarchical model's index grids (h, w), coarse to fine -> uint8 pixels (H, W, 3),
    tile by tile over the coarsest grid (each tile's grids at every level decoded together)."""
    stride = model.config.level_strides[0]
    rows, cols = grids[0].shape

    def decode(*tile: torch.Tensor) -> torch.Tensor:
        return _uint8(model.decode_indices([grid[:, 0] for grid in tile], policy.bfloat16).clamp(0, 1))
    return _pixels(tiled(decode, [grid.long()[None, None] for grid in grids], rows, cols,
                         policy.tile_pixels // stride, policy.margin, torch.channels_last))
