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

import torch

from .prior import (LOGIT_STEPS, CodedPass, IntegerPrior, bands, empty_embedding, pass_schedule, stage_passes,
                    starting_embedding)
from .quantize import ResidualVQ

CHUNK = 1 << 16  # positions per distance computation: bounds memory on huge grids
LAMBDA_SAMPLE = 4  # lambda's unit, the mean nearest-code distance, is estimated on every 4th position


def _distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, K) from each vector to each code."""
    cross = torch.addmm(codebook.pow(2).sum(1), vectors, codebook.t(), alpha=-2)  # |c|^2 - 2 v.c
    return cross.add_(vectors.pow(2).sum(1, keepdim=True)).clamp_(min=0)


def _distance_factors(vectors: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D + 2) and (D + 2, K) whose product is the squared distance from each vector v
    (N, D) to each code c_k (K, D), |v|^2 - 2 v.c_k + |c_k|^2, in one matrix product:
    rows [v, |v|^2, 1] times columns [-2 c_k, 1, |c_k|^2]."""
    points = torch.cat([vectors, vectors.pow(2).sum(1, keepdim=True), torch.ones(len(vectors), 1)], dim=1)
    codes = torch.cat([-2 * codebook, torch.ones(len(codebook), 1), codebook.pow(2).sum(1, keepdim=True)], dim=1)
    return points, codes.t().contiguous()


def _cheapest(costs: torch.Tensor) -> torch.Tensor:
    """argmin over dim 1 of costs (N, K), float32, >= 0 up to rounding, overwritten: a
    non-negative float's bit pattern, read as an integer, orders as the float does; with its
    lowest bits replaced by the code number, the smallest pattern of a row names its cheapest
    code (codes within 2**-15 of the cheapest, relative, go to the lower number). One integer
    min instead of torch's argmin, which runs three times slower here. A cost rounded below
    zero reads as negative and wins, rightly: its true cost is about 0, the least there is."""
    k = costs.shape[1]
    bits = max(1, (k - 1).bit_length())
    if bits > 12:  # too many codes for the low bits of the mantissa
        return costs.argmin(dim=1)
    patterns = costs.view(torch.int32).bitwise_and_(-(1 << bits)).bitwise_or_(torch.arange(k, dtype=torch.int32))
    return patterns.amin(dim=1).bitwise_and_((1 << bits) - 1).long()


def _choose_pass(prior: IntegerPrior, previous: torch.Tensor, indices: torch.Tensor, stage: int, known: torch.Tensor,
                 coded: torch.Tensor, far: bool, lam: float,
                 add_distances: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
                 sink: Callable[[CodedPass], None]) -> None:
    """One pass of the prior's schedule: at its `coded` positions, the codes minimizing
    distance + lam x bits, given the indices already chosen (in `indices`, (q, H, W), where the
    choice is written). add_distances(positions, costs (n, K), scale) adds scale x each code's
    squared distance to costs in place. The pass goes to sink (a CodedPass) band by band
    (nn.prior.bands), as the decoder will read it."""
    hidden = prior.hidden(prior.pass_inputs(previous, indices[stage], stage, known).unsqueeze(0), coded)
    for band in bands(coded):
        (logit_distance,) = prior.head_distances(hidden, [stage], [band], [(indices, known, far)])
        # bits(k) = the likeliest code's bits + logit distance / 16: the costs are counted in
        # 1/16 bit, distance + lam x bits divided by lam / 16 (lam 0: the nearest code)
        at = band.flatten().nonzero()[:, 0]
        if lam:
            costs = add_distances(at, logit_distance.to(torch.float32), LOGIT_STEPS / lam)
        else:
            costs = add_distances(at, torch.zeros(logit_distance.shape), 1.0)
        choice = _cheapest(costs)
        indices[stage][band] = choice
        sink(CodedPass(prior, stage, choice, logit_distance))


@torch.no_grad()
def rate_distortion_indices(quantizer: ResidualVQ, prior: IntegerPrior, z: torch.Tensor, num_stages: int,
                            tradeoff: float,
                            sink: Callable[[CodedPass], None] | None = None):
    """Indices (q, H, W) for latents z (1, D, H, W), and the prior's passes
    [(stage, symbols, frequencies)] in coding order (a pass of more than nn.prior's
    BAND_POSITIONS positions in several parts, as iter_passes gives them).

    tradeoff: lambda in units of the stage's mean nearest-code distance per bit; 0 gives
    nearest-code quantization (the indices quantizer.quantize would choose).
    sink: if given, each pass goes to sink (a CodedPass) as soon as it is done (and the
    returned list is empty), so a huge image never holds every pass's
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
        _choose_pass(prior, previous, indices, stage, known, coded, far, lam,
                     lambda at, costs, scale: costs.add_(every[at] if every is not None
                                                         else _distances(residual[at], codebook), alpha=scale),
                     sink or (lambda done: passes.append((done.stage, done.symbols.numpy(), done.frequencies()))))
    return indices, passes


class HierarchyRateDistortion:
    """The prior-driven index choice of a hierarchical model (nn.hierarchy): the `chooser` of
    HierarchicalVQ.encode_indices. Each stage's indices are chosen pass by pass of its level's
    integer prior, as rate_distortion_indices does for a VQ-VAE: ECVQ (Chou, Lookabaugh & Gray
    1989) with the code lengths the range coder will spend, given what the decoder will know
    (the coarser levels' grids, the level's earlier stages, the stage's earlier passes).

    priors: one IntegerPrior per level; level_stages: the stages of each level in the prefix
    coded; weights: per level, the ECVQ weight on squared latent distance per bit
    (HierarchicalVQ.assignment_weight). Every pass goes to sink (a CodedPass) in coding order
    (level by level), ready for the range coder."""

    def __init__(self, priors: list[IntegerPrior], level_stages: list[int], weights: list[float],
                 sink: Callable[[CodedPass], None]):
        self.priors, self.level_stages, self.sink = priors, level_stages, sink
        self.bits_per_distance = [1.0 / weight for weight in weights]
        self.where = [(level, s) for level, count in enumerate(level_stages) for s in range(count)]
        self.grids: list[torch.Tensor] = []  # the (h, w) grids chosen so far, coarse to fine

    @torch.no_grad()
    def __call__(self, position: int, stage, residual: torch.Tensor) -> torch.Tensor:
        """Indices (1, h, w) of global stage `position` (an ECVQStage) for residual (1, D, h, w)."""
        with torch.autocast("cpu", enabled=False):  # the priors' exact integer arithmetic, float32 distances
            return self._choose(position, stage, residual.float())

    def _choose(self, position: int, stage, residual: torch.Tensor) -> torch.Tensor:
        level, s = self.where[position]
        prior = self.priors[level]
        rows, cols = residual.shape[2:]
        if s == 0:
            self.indices = torch.zeros(self.level_stages[level], rows, cols, dtype=torch.long)
            self.previous = starting_embedding(prior, None, rows, cols,
                                               self.grids if prior.config.coarse_factors else None)
        else:
            self.previous = self.previous + prior.stage_embedding(s - 1, self.indices[s - 1])
        vectors = residual[0].permute(1, 2, 0).reshape(rows * cols, -1)
        points, codes = _distance_factors(vectors, stage.codebook)
        for known, coded, far in stage_passes(prior.config, s, rows, cols):  # each position's distances once
            _choose_pass(prior, self.previous, self.indices, s, known, coded, far, self.bits_per_distance[level],
                         lambda at, costs, scale: costs.addmm_(points.index_select(0, at), codes, alpha=scale),
                         self.sink)
        self.grids.append(self.indices[s])
        return self.indices[s].unsqueeze(0)
