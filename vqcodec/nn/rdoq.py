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

from .prior import LOGIT_STEPS, IntegerPrior, empty_embedding, pass_schedule
from .quantize import ResidualVQ

CHUNK = 1 << 16  # positions per distance computation: bounds memory on huge grids
LAMBDA_SAMPLE = 4  # lambda's unit, the mean nearest-code distance, is estimated on every 4th position


def _distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, K) from each vector to each code."""
    cross = torch.addmm(codebook.pow(2).sum(1), vectors, codebook.t(), alpha=-2)  # |c|^2 - 2 v.c
    return cross.add_(vectors.pow(2).sum(1, keepdim=True)).clamp_(min=0)


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
    previous = empty_embedding(None, prior.config.channels, rows, cols)
    passes = []
    last_stage = -1
    for stage, known, coded, far in pass_schedule(prior.config, num_stages, rows, cols):
        if stage != last_stage:  # a new stage: its codebook, distances and lambda
            if last_stage >= 0:
                residual = residual - codebook[indices[last_stage].flatten()]
                previous = previous + prior.stage_embedding(last_stage, indices[last_stage])
            last_stage = stage
            codebook = quantizer.stages[stage].codebook
            # distances of every position at once where that fits in memory, else chunk by chunk
            every = _distances(residual, codebook) if len(residual) <= CHUNK else None
            if every is not None:
                nearest = every[::LAMBDA_SAMPLE].min(dim=1).values
            else:
                sample = residual[::LAMBDA_SAMPLE]
                nearest = torch.cat([_distances(sample[i:i + CHUNK], codebook).min(dim=1).values
                                     for i in range(0, len(sample), CHUNK)])
            lam = tradeoff * float(nearest.mean())
        x = prior.pass_inputs(previous, indices[stage], stage, known)
        (logit_distance,) = prior.logit_distances(x.unsqueeze(0), [stage], [coded], [(indices, known, far)])
        freqs = prior.frequencies_of(logit_distance)
        positions = coded.flatten().nonzero()[:, 0]
        choice = torch.empty(len(positions), dtype=torch.long)
        for i in range(0, len(positions), CHUNK):
            part = slice(i, i + CHUNK)
            distance = every[positions[part]] if every is not None else _distances(residual[positions[part]], codebook)
            if lam:  # bits(k) = the likeliest code's bits + logit distance / 16
                distance.add_(logit_distance[part], alpha=lam / LOGIT_STEPS)
            choice[part] = distance.argmin(dim=1)
        indices[stage][coded] = choice
        if sink is None:
            passes.append((stage, choice.numpy(), freqs.numpy()))
        else:
            sink(stage, choice.numpy(), freqs.numpy())
    return indices, passes
