"""Coding drivers: run the integer prior pass by pass over index grids, yielding the frequency
tables the range coder (or a sampler) consumes, in the order the decoder rebuilds the grids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...entropy import PRECISION_BITS
from .integer_model import FREQ_BITS, IntegerPrior
from .schedule import pass_schedule


def empty_embedding(count: int | None, channels: int, rows: int, cols: int) -> torch.Tensor:
    """Zeros (count, C, H, W) (or (C, H, W) for None) laid out channels-last in memory, the
    layout the trunk's convolutions are fastest in; the embeddings added to it keep it."""
    shape = (rows, cols, channels) if count is None else (count, rows, cols, channels)
    return torch.zeros(shape).movedim(-1, -3)


PASS_CHUNK_POSITIONS = 1 << 16  # encoder: passes evaluated together, bounded by rows*cols*passes
BAND_POSITIONS = 1 << 15  # positions of a pass whose frequency tables exist at once (x K entries each)


def bands(mask: torch.Tensor) -> list[torch.Tensor]:
    """A pass's coded positions (H, W) in bands of whole rows, each of at most BAND_POSITIONS
    positions where a row allows (masks of the same shape, in order): the positions in row-major
    order, as the whole pass, with frequency tables of at most about BAND_POSITIONS x K entries
    at once. One band, the mask itself, when it fits."""
    limit = BAND_POSITIONS
    per_row = mask.sum(1)
    if int(per_row.sum()) <= limit:
        return [mask]
    ends = per_row.cumsum(0)
    parts, start = [], 0
    while start < len(per_row):
        before = int(ends[start - 1]) if start else 0
        end = max(start + 1, int(torch.searchsorted(ends, before + limit, right=True)))
        band = torch.zeros_like(mask)
        band[start:end] = mask[start:end]
        parts.append(band)
        start = end
    return parts


def coder_intervals(freq_table: torch.Tensor, symbols: torch.Tensor,
                    distances: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each symbol's interval [cdf(s), cdf(s + 1)) of 2**24 under its row of frequencies
    f = freq_table[distances] (n, K), as the range coder's lazy categorical model derives it
    (docs/FORMAT.md): N = sum f, scale = float32(2**24 - K) / N, cdf(k) = trunc(F_k x scale) + k
    with F_k the sum of f below k, cdf(K) = 2**24; for entropy.RangeEncoder.add_intervals.
    One embedding_bag over the distances gives each row's three sums, below the symbol, at it
    and above it, without the frequencies themselves: sums of integers of at most 2**15, exact
    in float32 in any order while K <= 2**(24 - 15)."""
    n, k = distances.shape
    if k > 1 << (PRECISION_BITS - FREQ_BITS):
        raise ValueError(f"{k} symbols: frequency sums would not be exact")
    s = symbols.to(distances.dtype)
    row_start = torch.arange(0, n * k, k, dtype=distances.dtype)
    bags = torch.stack([row_start, row_start + s, row_start + s + 1], dim=1).view(-1)  # below, at, above s
    sums = F.embedding_bag(distances.reshape(-1), freq_table.view(-1, 1), bags, mode="sum").view(n, 3)
    scale = torch.tensor(float((1 << PRECISION_BITS) - k)) / sums.sum(1)  # IEEE float32, as the coder
    below = sums[:, 0]
    left = (below * scale).int() + s
    right = ((below + sums[:, 1]) * scale).int() + s + 1
    right.masked_fill_(s == k - 1, 1 << PRECISION_BITS)
    return left.numpy(), right.numpy()


@dataclass(frozen=True)
class CodedPass:
    """A pass of the prior (or a band of one) as an encoder that chose its symbols hands it on:
    its stage, the symbols (n,), and the prior's logit distances (n, K) at them
    (IntegerPrior.head_distances), from which follow both the frequencies and the range
    coder's intervals."""
    prior: IntegerPrior
    stage: int
    symbols: torch.Tensor
    distances: torch.Tensor

    def frequencies(self) -> np.ndarray:
        return self.prior.frequencies_of(self.distances).numpy()

    def intervals(self) -> tuple[np.ndarray, np.ndarray]:
        """For entropy.RangeEncoder.add_intervals: the words add(symbols, frequencies) would
        write, at a fraction of the cost (coder_intervals)."""
        return coder_intervals(self.prior.freq_table, self.symbols, self.distances)


def encode_passes(prior: IntegerPrior, indices: torch.Tensor, coarse: list[torch.Tensor] | None = None) -> list:
    """Known indices (q, H, W) -> [(stage, symbols (n,), frequencies (n, K))] in coding order.
    coarse: the coarser levels' grids of a hierarchical model (prior.config.coarse_factors)."""
    return list(iter_passes(prior, indices, coarse))


def starting_embedding(prior: IntegerPrior, count: int | None, rows: int, cols: int,
                       coarse: list[torch.Tensor] | None) -> torch.Tensor:
    """`previous` before a grid's first stage: zeros, plus the coarser levels' grids' embedding."""
    previous = empty_embedding(count, prior.config.channels, rows, cols)
    if len(prior.config.coarse_factors) != len(coarse or []):
        raise ValueError(f"the prior conditions on {len(prior.config.coarse_factors)} coarser grids, "
                         f"got {len(coarse or [])}")
    return previous + prior.coarse_context(coarse) if coarse else previous


def iter_passes(prior: IntegerPrior, indices: torch.Tensor, coarse: list[torch.Tensor] | None = None,
                label: int | None = None):
    """encode_passes one pass at a time, so that a caller streaming them to the range coder holds
    only a few passes' inputs and frequency tables at once, whatever the image size: a pass of
    more than BAND_POSITIONS positions comes in several parts (bands), in coding order.

    Passes are evaluated a few at a time in batched network calls; the integer arithmetic makes
    that identical to the decoder's one pass at a time. label: the grid's class under a
    class-conditional prior (measuring only: files are coded without one)."""
    q, rows, cols = indices.shape
    indices = indices.long()
    chunk = max(1, PASS_CHUNK_POSITIONS // (rows * cols))
    previous = starting_embedding(prior, None, rows, cols, coarse)
    if label is not None:
        previous = previous + prior.class_context(torch.tensor([label]))[0]
    pending = []  # (inputs, stage, coded mask, context) of passes not yet evaluated

    def evaluate() -> list:
        inputs, stages, masks, contexts = zip(*pending)
        hidden = prior.hidden(torch.stack(inputs))
        done = []
        for p, (stage, mask, context) in enumerate(zip(stages, masks, contexts)):
            for band in bands(mask):
                (distances,) = prior.head_distances(hidden[p:p + 1], [stage], [band], [context])
                done.append((stage, indices[stage][band].numpy(), prior.frequencies_of(distances).numpy()))
        pending.clear()
        return done

    last_stage = 0
    for stage, known, coded, far in pass_schedule(prior.config, q, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[last_stage])
            last_stage = stage
        pending.append((prior.pass_inputs(previous, indices[stage], stage, known), stage, coded, (indices, known, far)))
        if len(pending) == chunk:
            yield from evaluate()
    if pending:
        yield from evaluate()


def decode_passes(prior: IntegerPrior, num_stages: int, rows: int, cols: int, next_symbols,
                  count: int = 1, coarse: list[torch.Tensor] | None = None,
                  classes: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild `count` grids (count, q, H, W) pass by pass. next_symbols(frequencies (n, K))
    -> (n,) ints is the range decoder, or a sampler, which turns this into generation
    (the count grids of a pass are then evaluated in one network call, rows grid-major).
    coarse: the coarser levels' grids (count, H/f, W/f) of a hierarchical model.
    classes: (count,) the class of each grid for a class-conditional prior (generation; -1 or
    None: no class, which is how files are coded)."""
    indices = torch.zeros(count, num_stages, rows, cols, dtype=torch.long)
    previous = starting_embedding(prior, count, rows, cols, coarse)
    if classes is not None:
        if not prior.config.num_classes:
            raise ValueError("the prior is not class-conditional")
        classes = torch.as_tensor(classes, dtype=torch.long).view(count)
        if int(classes.max()) >= prior.config.num_classes:
            raise ValueError(f"class must be below {prior.config.num_classes}")
        previous = previous + prior.class_context(classes)
    last_stage = 0
    for stage, known, coded, far in pass_schedule(prior.config, num_stages, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[:, last_stage])
            last_stage = stage
        hidden = prior.hidden(prior.pass_inputs(previous, indices[:, stage], stage, known), coded)
        contexts = [(indices[i], known, far) for i in range(count)]
        for band in bands(coded):  # as iter_passes coded them
            parts = [prior.frequencies_of(d) for d in prior.head_distances(hidden, [stage] * count, [band] * count,
                                                                            contexts)]
            freqs = parts[0] if count == 1 else torch.cat(parts)
            symbols = torch.as_tensor(np.asarray(next_symbols(freqs.numpy())), dtype=torch.long)
            n = int(band.sum())
            if (symbols.shape != (count * n,) or int(symbols.min()) < 0
                    or int(symbols.max()) >= prior.config.codebook_size):
                raise ValueError("decoded symbols do not fit the pass")
            indices[:, stage][:, band] = symbols.view(count, n)
    return indices
