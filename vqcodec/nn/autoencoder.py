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
    """x + conv3x3(GELU(conv3x3(x))); identity=True starts the second convolution at zero, so
    the block starts as the identity (SkipInit, De & Smith 2020)."""

    def __init__(self, channels: int, identity: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        if identity:
            nn.init.zeros_(self.body[2].weight)
            nn.init.zeros_(self.body[2].bias)

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

    def infer(self, z: torch.Tensor, bfloat16: bool = False) -> torch.Tensor:
        """forward for decoding. With bfloat16 (for CPUs that are fast at it, inference.Policy),
        every layer but the last runs in bf16, and the last makes the pixels in float32 as a
        sub-pixel convolution (twice as fast as the transposed one it equals); else, forward."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            hidden = self.net[:-1](z)
        last = self.net[-1]
        return (subpixel_conv_transpose(hidden.float(), last) if bfloat16 else last(hidden)) + 0.5


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
    def encode(self, images: torch.Tensor, bfloat16: bool = False) -> torch.Tensor:
        """images (B,3,H,W) in [0,1], H and W multiples of the stride -> latents (B,D,H/s,W/s),
        float32; bfloat16: the encoder runs under bf16 autocast."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            return self.encoder(images).float()

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, bfloat16: bool = False) -> torch.Tensor:
        """indices (B,n,h,w) -> images (B,3,h*s,w*s), clamped to [0,1]; bfloat16: Decoder.infer's."""
        z = self.quantizer.dequantize(indices).contiguous(memory_format=torch.channels_last)
        return self.decoder.infer(z, bfloat16).clamp(0, 1)
