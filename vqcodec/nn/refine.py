"""Encoder-side latent refinement: spend encoding time to cut the encoder's amortization gap.

The encoder network maps an image to latents in one pass, trained to do well on average; for
the one image being coded, gradient descent on the latents themselves can do better (Campos et
al. 2019, "Content Adaptive Optimization for Neural Image Compression"; Yang et al. 2020,
"Improving Inference for Neural Image Compression"). Only the encoder changes: the decoder
and the file syntax stay as they are, so refined files decode with any decoder.

    latents z --residual VQ (first n stages, nearest codes)--> z_q --decoder--> image'
       ^                                                                           |
       +--- Adam step on z: straight-through gradient of MSE(image', image) <------+

Each step scores the quantized reconstruction exactly (the straight-through estimator of van
den Oord et al. 2017 only shapes the gradient), and the best latents seen, the encoder's own
included, are returned: refinement never makes the nearest-code reconstruction worse.
"""
from __future__ import annotations

import math

import torch

from .autoencoder import VQVAE

STEP_SIZE = 0.018  # Adam's step, as a fraction of the latents' root mean square


def refine_latents(vqvae: VQVAE, images: torch.Tensor, latents: torch.Tensor, num_stages: int,
                   steps: int) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] and their encoder latents (B, D, H/s, W/s) -> latents whose
    first num_stages residual-VQ stages decode closer to the images (float32)."""
    z = latents.detach().float().clone().requires_grad_(True)
    target = images.float()
    step_size = STEP_SIZE * float(latents.float().pow(2).mean().sqrt())
    optimizer = torch.optim.Adam([z], lr=step_size)
    best, best_error = z.detach().clone(), math.inf
    with torch.enable_grad():
        for step in range(steps + 1):
            with torch.no_grad():
                quantized = vqvae.quantizer.dequantize(vqvae.quantizer.quantize(z, num_stages))
            straight_through = z + (quantized - z).detach()
            error = (vqvae.decoder(straight_through).clamp(0, 1) - target).pow(2).mean()
            if error.item() < best_error:
                best, best_error = z.detach().clone(), error.item()
            if step == steps:
                break
            z.grad, = torch.autograd.grad(error, z)
            optimizer.step()
    return best
