"""Enhancement layer: a finer VQ autoencoder for the quality levels above a base level.

    image x, base reconstruction b (the base model at the layer's base level, as decoded)
      │ EnhanceEncoder: concat(x, b) -> unshuffle /2 -> conv3x3 -> [conv5x5/2] x (n-1) -> res blocks -> 1x1
      v
    e (B,D,H/s,W/s) ──ResidualVQ──> indices (B,S,H/s,W/s), e_q
      │ EnhanceDecoder: 1x1 -> res blocks -> [deconv5x5/2] x (n-1) ─────────┐ (half resolution)
      │                 b -> unshuffle /2 -> conv3x3 ────────────────────── + -> conv3x3 x2 -> shuffle x2
      v
    reconstruction = b + detail (B,3,H,W)

The base model's 16 numbers per 8x8 block cap its quality, and its later stages buy little
(the autoencoder, not the quantizer, is the limit, docs/EXPERIMENTS.md). The enhancement layer
sees both the image and what the base made of it, and spends its indices on the detail the
base lost, on a finer grid. This is the layered idea of scalable coding (an enhancement layer
coding the base layer's residual, as in SVC and JPEG's hierarchical mode) with a VQ-VAE in
each layer; conditioning the finer level on the coarser follows VQ-VAE-2 (Razavi et al. 2019).
The decoder's last layer starts at zero, so an untrained layer returns the base image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import quality
from ..config import EnhanceConfig, ModelConfig
from .autoencoder import ResidualBlock
from .quantize import ResidualVQ


def base_level(model_config: ModelConfig, enhance_config: EnhanceConfig) -> int:
    """The base level an enhancement layer builds on (its base_stages; 0 = the base's top)."""
    return quality.levels(model_config.num_stages, enhance_config.num_stages, enhance_config.base_stages).base


class EnhanceEncoder(nn.Module):
    """concat(x, base) -> pixel unshuffle to half resolution -> conv3x3 -> [conv5x5/2] x (n-1)."""

    def __init__(self, cfg: EnhanceConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(24, cfg.widths[0], 3, padding=1), nn.GELU()]
        for previous, width in zip(cfg.widths, cfg.widths[1:]):
            layers += [nn.Conv2d(previous, width, 5, stride=2, padding=2), nn.GELU()]
        layers += [ResidualBlock(cfg.widths[-1]) for _ in range(cfg.res_blocks)]
        layers.append(nn.Conv2d(cfg.widths[-1], cfg.latent_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.net(F.pixel_unshuffle(torch.cat([x, base], dim=1) - 0.5, 2))


class EnhanceDecoder(nn.Module):
    """Detail from the latents, up to half resolution, joined there with the base image
    (pixel-unshuffled), then out to full resolution by a pixel shuffle (Shi et al. 2016):
    no layer runs at full resolution, which is what costs time on a CPU."""

    def __init__(self, cfg: EnhanceConfig):
        super().__init__()
        widths = list(reversed(cfg.widths))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 1)]
        layers += [ResidualBlock(widths[0]) for _ in range(cfg.res_blocks)]
        for width, out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width, out, 5, stride=2, padding=2, output_padding=1), nn.GELU()]
        self.detail = nn.Sequential(*layers)
        half = cfg.widths[0]
        self.from_base = nn.Conv2d(12, half, 3, padding=1)
        self.fuse = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(half, 12, 3, padding=1),
        )
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def residual(self, e_q: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """What the layer adds to the base image."""
        joined = self.detail(e_q) + self.from_base(F.pixel_unshuffle(base - 0.5, 2))
        return F.pixel_shuffle(self.fuse(joined), 2)

    def forward(self, e_q: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return base + self.residual(e_q, base)


class EnhanceLayer(nn.Module):
    """Encoder + residual VQ + decoder of the enhancement layer; level n uses the first n stages."""

    def __init__(self, cfg: EnhanceConfig):
        super().__init__()
        self.config = cfg
        self.encoder = EnhanceEncoder(cfg)
        self.quantizer = ResidualVQ(cfg.num_stages, cfg.codebook_size, cfg.latent_dim,
                                    cfg.ema_decay, cfg.dead_code_threshold)
        self.decoder = EnhanceDecoder(cfg)

    def forward(self, images: torch.Tensor, base: torch.Tensor, keep_stages: torch.Tensor | None = None):
        """Training pass: (reconstruction, indices, commitment loss)."""
        z = self.encoder(images, base)
        z_q, indices, commitment = self.quantizer(z, keep_stages)
        return self.decoder(z_q, base), indices, commitment

    @torch.no_grad()
    def encode(self, images: torch.Tensor, base: torch.Tensor, num_stages: int,
               bfloat16: bool = False) -> torch.Tensor:
        """images and base reconstructions (B,3,H,W) in [0,1], H and W multiples of the stride
        -> indices (B,num_stages,H/s,W/s); bfloat16: the encoder runs under bf16 autocast."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            z = self.encoder(images, base).float()
        return self.quantizer.quantize(z, num_stages)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, base: torch.Tensor, bfloat16: bool = False) -> torch.Tensor:
        """indices (B,n,h,w) and base (B,3,h*s,w*s) -> images (B,3,h*s,w*s) in [0,1]; bfloat16:
        the detail is computed under bf16 autocast and added to the base in float32."""
        e_q = self.quantizer.dequantize(indices)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            detail = self.decoder.residual(e_q, base)
        return (base + detail.float()).clamp(0, 1)
