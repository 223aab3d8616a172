"""Samplers: the decode_passes callbacks that turn decoding into generation."""
from __future__ import annotations

import math

import numpy as np
import torch


class GuidedSampler:
    """Classifier-free guidance (Ho and Salimans 2022) for a class-conditional prior, sampling only.

    decode_passes runs `count` grids with their classes followed by the same `count` grids
    without a class (2 * count grids in all, rows grid-major); each pass draws one symbol per
    position with `sampler` from log p = log f_class + weight * (log f_class - log f_none), and
    gives it to both copies, so the unconditional copy always sees the conditional grid.
    weight 0 is plain conditional sampling."""

    def __init__(self, sampler: "Sampler", weight: float):
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"guidance must be a finite number >= 0, got {weight}")
        self.sampler, self.weight = sampler, weight

    def __call__(self, frequencies: np.ndarray) -> np.ndarray:
        half = len(frequencies) // 2
        given, blind = np.log(frequencies[:half].astype(np.float64)), np.log(frequencies[half:].astype(np.float64))
        guided = given + self.weight * (given - blind)
        symbols = self.sampler(np.exp(guided - guided.max(axis=1, keepdims=True)))
        return np.concatenate([symbols, symbols])


class Sampler:
    """Draws indices from the prior's frequencies: the decode_passes callback for generation.

    p(k) is proportional to f_k ** (1 / temperature), restricted to the top_k most likely
    symbols (None = all); temperature 0 takes the most likely symbol (the lowest index
    among equals, so top_k=1 gives the same choice)."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, seed: int = 0):
        if not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.temperature, self.top_k = temperature, top_k
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, frequencies: np.ndarray) -> np.ndarray:
        freqs = torch.from_numpy(frequencies).double()
        if self.temperature == 0:
            return freqs.argmax(dim=1).numpy()
        log_p = torch.log(freqs) / self.temperature
        if self.top_k is not None and self.top_k < freqs.shape[1]:
            # a stable sort breaks ties towards the lower index, as argmax does
            order = torch.sort(log_p, dim=1, descending=True, stable=True).indices
            dropped = torch.ones_like(log_p, dtype=torch.bool).scatter_(1, order[:, :self.top_k], False)
            log_p = log_p.masked_fill(dropped, -math.inf)
        probabilities = torch.softmax(log_p, dim=1)
        return torch.multinomial(probabilities, 1, generator=self.generator)[:, 0].numpy()
