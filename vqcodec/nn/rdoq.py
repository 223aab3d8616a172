"""Rate-distortion optimised residual quantization: the encoder's choice of indices sees
what each index costs under the prior.

    latents z ─for each stage s, for each pass of the prior's schedule──────────────────┐
        distance(residual, code k)  +  lambda_s * bits(k | context so far)  ─> argmin k  │
        context so far = the indices already chosen (exactly what the decoder will know) │
        residual -= chosen codes; next stage ───────────────────────────────────────────┘

Nearest-code quantization ignores the rate; among codes that are almost equally close (common
in the later residual stages, which quantize near-noise) this picks the one the prior finds
likely, trading a little distortion for fewer bits: entropy-constrained VQ (Chou, Lookabaugh
and Gray 1989, "Entropy-Constrained Vector Quantization"). Decoding is unchanged: the
decoder reads whatever indices were coded, and the frequencies computed here are the ones
it will derive, so they go straight to the range coder.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .prior import IntegerPrior, group_map
from .quantize import ResidualVQ

CHUNK = 1 << 16  # positions per distance computation: bounds memory on huge grids


def _distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, K) from each vector to each code."""
    return (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.pow(2).sum(1)).clamp(min=0)


@torch.no_grad()
def rate_distortion_indices(quantizer: ResidualVQ, prior: IntegerPrior, z: torch.Tensor, num_stages: int,
                            tradeoff: float,
                            sink: Callable[[int, np.ndarray, np.ndarray], None] | None = None):
    """Indices (q, H, W) for latents z (1, D, H, W), and the prior's passes
    [(stage, symbols, frequencies)] in coding order.

    tradeoff: lambda in units of the stage's mean nearest-code distance per bit; 0 gives
    nearest-code quantization (the indices quantizer.quantize would choose).
    sink: if given, each pass goes to sink(stage, symbols, frequencies) as soon as it is
    done (and the returned list is empty), so a huge image never holds every pass's
    frequencies at once."""
    _, d, rows, cols = z.shape
    residual = z[0].permute(1, 2, 0).reshape(-1, d)
    indices = torch.zeros(num_stages, rows, cols, dtype=torch.long)
    previous = torch.zeros(prior.config.channels, rows, cols)
    passes = []
    for stage in range(num_stages):
        if stage:
            previous = previous + prior.stage_embedding(stage - 1, indices[stage - 1])
        codebook = quantizer.stages[stage].codebook
        nearest = torch.cat([_distances(residual[i:i + CHUNK], codebook).min(dim=1).values
                             for i in range(0, len(residual), CHUNK)])
        lam = tradeoff * float(nearest.mean())
        groups = group_map(prior.config.schedule, stage, rows, cols)
        for g in torch.unique(groups).tolist():
            known, coded = groups < g, groups == g
            x = prior.pass_inputs(previous, indices[stage], stage, known)
            (freqs,) = prior.frequencies(x.unsqueeze(0), [stage], [coded], [(indices[stage], known)])
            positions = coded.flatten().nonzero()[:, 0]
            choice = torch.empty(len(positions), dtype=torch.long)
            for i in range(0, len(positions), CHUNK):
                part = slice(i, i + CHUNK)
                f = freqs[part]
                bits = torch.log2(f.sum(1, keepdim=True)) - torch.log2(f)
                choice[part] = (_distances(residual[positions[part]], codebook) + lam * bits).argmin(dim=1)
            indices[stage][coded] = choice
            if sink is None:
                passes.append((stage, choice.numpy(), freqs.numpy()))
            else:
                sink(stage, choice.numpy(), freqs.numpy())
        residual = residual - codebook[indices[stage].flatten()]
    return indices, passes
