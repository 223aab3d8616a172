"""Training task: a context prior over index grids (`vqcodec train-prior`), run by the one loop.

    index grids (S, H, W) of the training images (a VQ-VAE's, or an enhancement layer's)
        │ random crops of the grids, a random stage per example (stage s weighs S - s: it is
        │ coded at quality levels s+1..S), a class per example for a class-conditional prior
        v
    ContextPrior.loss_bits (both checkerboard halves)
        │ evaluate: held-out bits per index per stage, measured with the integer prior's real
        v   frequencies (what the range coder will spend); also given the class, if it has classes
    weights_io.save_with_prior(source weights + "prior.*" or "enhance_prior.*"), at the end
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import PriorConfig, PriorTrainConfig, from_dict
from ..nn.autoencoder import VQVAE
from ..nn.prior import ContextPrior, IntegerPrior, iter_passes
from ..nn.rdoq import rate_distortion_indices
from ..weights_io import save_with_prior
from .data import as_batch, crop_batch


# What the prior's loop does beyond its train config (as the prior trainer always did):
# no gradient clipping, no divergence rollback, float32.
LOOP_SETTINGS = {"grad_clip": float("inf"), "spike_factor": 0.0, "bf16": False}


def prior_config_for(fields: dict | None, num_stages: int, codebook_size: int, whose: str) -> PriorConfig:
    """The PriorConfig of `fields`, its stages and codebook size defaulting to those of the
    indices it codes (`whose`: "the model's", ...), which they must match."""
    config = from_dict(PriorConfig, {"num_stages": num_stages, "codebook_size": codebook_size, **(fields or {})})
    if (config.num_stages, config.codebook_size) != (num_stages, codebook_size):
        raise ValueError(f"the prior's stages and codebook size must match {whose}")
    return config


@torch.no_grad()
def index_grids(vqvae: VQVAE, pool: list[torch.Tensor], mirror: bool, progress: bool,
                prior: IntegerPrior | None = None, rate_tradeoff: float = 0.0) -> list[torch.Tensor]:
    """(S, H/s, W/s) int16 index grids of every image (and its mirror image): nearest codes,
    or with a prior, the rate-aware encoder's choice at rate_tradeoff (what files will hold)."""
    cfg = vqvae.config
    grids = []
    for image in tqdm(pool, desc="index grids", disable=not progress, leave=False):
        x = as_batch(image, cfg.stride)
        for version in ((x, x.flip(-1)) if mirror else (x,)):
            if prior is None:
                grid = vqvae.encode_indices(version, cfg.num_stages)[0]
            else:
                z = vqvae.encoder(version)
                grid = rate_distortion_indices(vqvae.quantizer, prior, z, cfg.num_stages, rate_tradeoff)[0]
            grids.append(grid.to(torch.int16))
    return grids


def code_length_bits(prior: IntegerPrior, grid: torch.Tensor, label: int | None = None) -> list[float]:
    """Ideal code length in bits per stage of one grid (S, H, W) under the integer prior
    (given its class `label` under a class-conditional prior; None: as files are coded)."""
    bits = [0.0] * grid.shape[0]
    for stage, symbols, freqs in iter_passes(prior, grid, label=label):
        chosen = freqs[np.arange(len(symbols)), symbols]
        bits[stage] += float(-np.log2(chosen / freqs.sum(axis=1)).sum())
    return bits


def held_out_bits(prior: IntegerPrior, grids: list[torch.Tensor], labels: list[int] | None = None) -> list[float]:
    """Bits per index per stage over held-out grids (given their classes, if labels)."""
    totals = np.zeros(prior.config.num_stages)
    count = 0
    for i, grid in enumerate(grids):
        totals += code_length_bits(prior, grid.long(), None if labels is None else labels[i])
        count += grid[0].numel()
    return [round(float(t / count), 4) for t in totals]


class PriorTask:
    """`prior` on random crops of `grids` (each of class labels[i], for a class-conditional
    prior, shown with probability 1 - cfg.class_dropout); written into a copy of the weights
    file `source` as the prior over `layer`'s indices, with `record` in its training record."""

    def __init__(self, prior: ContextPrior, cfg: PriorTrainConfig, grids: list[torch.Tensor],
                 held_grids: list[torch.Tensor], *, source: str | Path, layer: str = "base",
                 labels: list[int] | None = None, held_labels: list[int] | None = None, record: dict | None = None):
        self.model, self.cfg, self.grids, self.held_grids = prior, cfg, grids, held_grids
        self.source, self.layer, self.record = source, layer, record or {}
        self.labels = None if labels is None else torch.tensor(labels)
        self.held_labels = held_labels
        self.checkpoint_key = self.checkpoint_key_for(prior.config)
        self.stage_weights = torch.arange(prior.config.num_stages, 0, -1, dtype=torch.float)

    @staticmethod
    def checkpoint_key_for(prior_config: PriorConfig) -> dict:
        """What a checkpoint must have been made with to be resumed (loop.run, loop.finished)."""
        return {"prior_config": asdict(prior_config)}

    def batch_loss(self, step: int, generator: torch.Generator):
        cfg = self.cfg
        batch, picks = crop_batch(self.grids, cfg.batch_size, cfg.crop_size, generator, flip=False)
        stage = torch.multinomial(self.stage_weights, cfg.batch_size, replacement=True, generator=generator)
        classes = None
        if self.labels is not None:
            dropped = torch.rand(cfg.batch_size, generator=generator) < cfg.class_dropout
            classes = torch.where(dropped, -1, self.labels[picks])
        loss = self.model.loss_bits(batch.long(), stage, generator, classes=classes)
        return loss, {"bits": loss.item()}

    def integer(self) -> IntegerPrior:
        return IntegerPrior(self.model.config, self.model.to_integer())

    def evaluate(self) -> dict:
        integer = self.integer()
        bits = held_out_bits(integer, self.held_grids)
        result = {"held_out_bits_per_stage": bits, "held_out_bits_mean": round(sum(bits) / len(bits), 4)}
        if self.held_labels is not None:
            given = held_out_bits(integer, self.held_grids, self.held_labels)
            result.update({"held_out_bits_per_stage_given_class": given,
                           "held_out_bits_mean_given_class": round(sum(given) / len(given), 4)})
        return result

    def save_weights(self, path: Path, record: dict) -> None:
        training = {"steps": record["steps"], "wall_seconds": record["wall_seconds"], "train_config": asdict(self.cfg),
                    "log": record["log"], "train_grids": len(self.grids), **self.record}
        save_with_prior(self.source, path, self.integer(), self.model.config, training, layer=self.layer)
