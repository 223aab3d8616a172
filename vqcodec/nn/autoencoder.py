"""Convolutional encoder and decoder, and the VQ-VAE that joins them.

    image (B,3,H,W) in [0,1]
      │ Encoder: [conv5x5/2 + GDN] x n  ->  residual blocks  ->  1x1 to latent_dim
      v
    z (B,D,H/s,W/s) ──ResidualVQ──> indices (B,S,H/s,W/s), z_q
      │ Decoder: 1x1 from latent_dim -> residual blocks -> [deconv5x5/2 + IGDN] x n
      v
    reconstruction (B,3,H,W)

Most of the capacity sits at the lowest resolution, where it is cheap: width at
full or half resolution is what costs time on a CPU.
GDN / inverse GDN: Balle et al. 2016, "Density Modeling of Images using a
Generalized Normalization Transformation"; the 5x5 stride-2 layout follows
Balle et al. 2017, "End-to-end Optimized Image Compression".
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .quantize import ResidualVQ


class GDN(nn.Module):
    """y = x / sqrt(beta + gamma * x^2) per position; inverse=True multiplies instead.

    beta and gamma are kept non-negative by squaring their parameters."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta_root = nn.Parameter(torch.ones(channels))
        self.gamma_root = nn.Parameter(torch.eye(channels) * 0.1 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_root.pow(2) + 1e-6
        gamma = self.gamma_root.pow(2)
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        previous = cfg.in_channels
        for i, width in enumerate(cfg.widths):
            layers.append(nn.Conv2d(previous, width, 5, stride=2, padding=2))
            if i < len(cfg.widths) - 1:
                layers.append(GDN(width))
            previous = width
        layers += [ResidualBlock(previous) for _ in range(cfg.res_blocks)]
        layers.append(nn.Conv2d(previous, cfg.latent_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - 0.5)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = list(reversed(cfg.widths))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 1)]
        layers += [ResidualBlock(widths[0]) for _ in range(cfg.res_blocks)]
        outputs = widths[1:] + [cfg.in_channels]
        for i, (width, out) in enumerate(zip(widths, outputs)):
            layers.append(nn.ConvTranspose2d(width, out, 5, stride=2, padding=2, output_padding=1))
            if i < len(widths) - 1:
                layers.append(GDN(out, inverse=True))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) + 0.5

    def infer(self, z: torch.Tensor) -> torch.Tensor:
        """forward for decoding. Where the CPU is fast at bfloat16 (fast_bfloat16), every layer
        but the last runs in bf16, and the last makes the pixels in float32 as a sub-pixel
        convolution (twice as fast as the transposed one it equals); elsewhere, forward."""
        fast = fast_bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            hidden = self.net[:-1](z)
        last = self.net[-1]
        return (subpixel_conv_transpose(hidden.float(), last) if fast else last(hidden)) + 0.5


def subpixel_conv_transpose(x: torch.Tensor, layer: nn.ConvTranspose2d) -> torch.Tensor:
    """layer(x) for a 5x5, stride-2 transposed convolution (padding 2, output padding 1),
    computed as a 3x3 convolution to 4x the channels and a pixel shuffle: each output
    parity (py, px) is a 3x3 convolution with the taps of that parity (Shi et al. 2016,
    "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
    Convolutional Neural Network"). Equal up to float rounding; other layers run as they are."""
    if (layer.kernel_size, layer.stride, layer.padding, layer.output_padding) != ((5, 5), (2, 2), (2, 2), (1, 1)):
        return layer(x)
    weight = layer.weight  # (in, out, 5, 5)
    out = weight.shape[1]
    kernel = weight.new_zeros(out, 2, 2, weight.shape[0], 3, 3)
    taps = ({2: 0, 1: 2, 0: 4}, {2: 1, 1: 3})  # parity -> {3x3 tap: 5x5 tap}
    for py in (0, 1):
        for px in (0, 1):
            for jy, ky in taps[py].items():
                for jx, kx in taps[px].items():
                    kernel[:, py, px, :, jy, jx] = weight[:, :, ky, kx].t()
    bias = layer.bias.repeat_interleave(4) if layer.bias is not None else None
    return F.pixel_shuffle(F.conv2d(x, kernel.reshape(out * 4, -1, 3, 3), bias, padding=1), 2)


TILE = 128  # latent positions per tile side (1024 pixels at stride 8): larger images go in tiles
TILE_MARGIN = 8  # latent positions of context computed around each tile and then dropped


def fast_bfloat16() -> bool:
    """Whether encoding and decoding run the autoencoder in bfloat16: only on CPUs with bf16
    dot-product instructions (AVX512-BF16 or AMX), where that halves its time at no measured
    cost in PSNR (docs/EXPERIMENTS.md); elsewhere bf16 is emulated and slower than float32.
    VQCODEC_FLOAT32=1 turns it off. Decoding derives the same indices either way; decoded
    pixels differ from the float32 path by a level or two (the encoder may pick other indices)."""
    if os.environ.get("VQCODEC_FLOAT32", "") not in ("", "0"):
        return False
    return _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def tiles(rows: int, cols: int, tile: int, margin: int):
    """(core slice, padded slice, core offset inside the padded one) per tile, in latent units."""
    for top in range(0, rows, tile):
        for left in range(0, cols, tile):
            core = (slice(top, min(rows, top + tile)), slice(left, min(cols, left + tile)))
            t0, l0 = max(0, top - margin), max(0, left - margin)
            padded = (slice(t0, min(rows, top + tile + margin)), slice(l0, min(cols, left + tile + margin)))
            yield core, padded, (top - t0, left - l0)


class VQVAE(nn.Module):
    """Encoder + residual VQ + decoder. Quality level q uses the first q stages."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(cfg.num_stages, cfg.codebook_size, cfg.latent_dim,
                                    cfg.ema_decay, cfg.dead_code_threshold)
        self.decoder = Decoder(cfg)

    def forward(self, images: torch.Tensor, keep_stages: torch.Tensor | None = None):
        """Training pass: (reconstruction, indices, commitment loss)."""
        z = self.encoder(images)
        z_q, indices, commitment = self.quantizer(z, keep_stages)
        return self.decoder(z_q), indices, commitment

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor, num_stages: int) -> torch.Tensor:
        """images (B,3,H,W) with H, W multiples of the stride -> indices (B,n,H/s,W/s)."""
        return self.quantizer.quantize(self.encoder(images), num_stages)

    @torch.no_grad()
    def encode_latents(self, pixels: np.ndarray, tile: int = TILE, margin: int = TILE_MARGIN) -> torch.Tensor:
        """uint8 pixels (H, W, 3), H and W multiples of the stride -> latents (1, D, H/s, W/s).

        Images larger than `tile` latent positions are encoded in tiles, each with `margin`
        positions of context, so memory stays bounded; smaller ones in one piece."""
        s = self.config.stride
        rows, cols = pixels.shape[0] // s, pixels.shape[1] // s
        z = torch.empty(1, self.config.latent_dim, rows, cols)
        for (cr, cc), (pr, pc), (dr, dc) in tiles(rows, cols, tile, margin):
            crop = pixels[pr.start * s:pr.stop * s, pc.start * s:pc.stop * s]
            x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).unsqueeze(0).float().div(255)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bfloat16()):
                part = self.encoder(x.contiguous(memory_format=torch.channels_last)).float()
            z[:, :, cr, cc] = part[:, :, dr:dr + cr.stop - cr.start, dc:dc + cc.stop - cc.start]
        return z

    @torch.no_grad()
    def decode_pixels(self, indices: torch.Tensor, tile: int = TILE, margin: int = TILE_MARGIN) -> np.ndarray:
        """indices (1, n, h, w) -> uint8 pixels (h*s, w*s, 3), in tiles as encode_latents."""
        s = self.config.stride
        rows, cols = indices.shape[-2:]
        out = np.empty((rows * s, cols * s, 3), dtype=np.uint8)
        for (cr, cc), (pr, pc), (dr, dc) in tiles(rows, cols, tile, margin):
            y = self.decode_indices(indices[:, :, pr, pc])[0]
            y = y[:, dr * s:(dr + cr.stop - cr.start) * s, dc * s:(dc + cc.stop - cc.start) * s]
            out[cr.start * s:cr.stop * s, cc.start * s:cc.stop * s] = (
                y.permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy())
        return out

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,n,h,w) -> images (B,3,h*s,w*s), clamped to [0,1]."""
        z = self.quantizer.dequantize(indices).contiguous(memory_format=torch.channels_last)
        return self.decoder.infer(z).clamp(0, 1)
