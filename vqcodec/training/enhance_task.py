"""Training task: the enhancement layer (vqcodec.nn.enhance) over a trained base model
(`vqcodec train-enhance`), run by the one loop (training.loop).

    folder of images ──base model at the layer's base level, as the codec codes it──> pairs
        │ (image, base reconstruction) as 6-channel uint8 tensors (image_pairs)
        │ random crops + flips, every step
        v
    EnhanceLayer(crops, base crops, keep_stages ~ U{1..S})  ──>  MSE + beta * commitment
        │ evaluate: held-out PSNR per level, bits per index, codebook usage
        v  (at the end)
    weights_io.save_with_enhance: the base model's tensors (and prior) + the layer ("enhance.*")

Its prior (`vqcodec train-prior --layer enhance`) is a training.prior_task over the layer's
index grids (enhancement_grids).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import inference
from ..codec import RATE_TRADEOFF
from ..config import EnhanceConfig, TrainConfig
from ..images import pad_to_multiple
from ..nn.enhance import EnhanceLayer
from ..nn.rdoq import rate_distortion_indices
from ..weights_io import save_with_enhance
from .data import psnr, random_crops, usage_statistics
from .vqvae_task import residual_vq_loss


@torch.no_grad()
def base_reconstruction(vqvae, prior, pixels: np.ndarray, multiple: int, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """(padded pixels, base reconstruction) of uint8 (H, W, 3) pixels at base level `stages`,
    both padded to `multiple`, with the indices the codec picks (rate-aware under the prior),
    run as the codec runs it (this machine's inference policy)."""
    padded, policy = pad_to_multiple(pixels, multiple), inference.Policy.default()
    z = inference.encode_latents(vqvae, padded, policy)
    if prior is None:
        indices = vqvae.quantizer.quantize(z, stages)
    else:
        indices = rate_distortion_indices(vqvae.quantizer, prior, z, stages, RATE_TRADEOFF)[0].unsqueeze(0)
    return padded, inference.decode_pixels(vqvae, indices, policy)


def image_pairs(vqvae, prior, pool: list[torch.Tensor], multiple: int, stages: int,
                progress: bool) -> list[torch.Tensor]:
    """(6, H, W) uint8: each image stacked on its base reconstruction at level `stages`."""
    pairs = []
    for image in tqdm(pool, desc="base reconstructions", disable=not progress, leave=False):
        padded, base = base_reconstruction(vqvae, prior, image.permute(1, 2, 0).numpy(), multiple, stages)
        pairs.append(torch.from_numpy(np.concatenate([padded, base], axis=2)).permute(2, 0, 1).contiguous())
    return pairs


@torch.no_grad()
def enhancement_grids(layer: EnhanceLayer, pairs: list[torch.Tensor], mirror: bool, progress: bool) -> list[torch.Tensor]:
    """(S, H/s, W/s) int16 index grids of the layer's stages over each (image, base) pair (and
    its mirror image): what files hold above the base levels, coded as the codec codes them."""
    grids, policy = [], inference.Policy.default()
    for pair in tqdm(pairs, desc="enhancement grids", disable=not progress, leave=False):
        for version in ((pair, pair.flip(-1)) if mirror else (pair,)):
            pixels = version.permute(1, 2, 0).numpy()
            indices = inference.encode_detail(layer, pixels[..., :3], pixels[..., 3:], layer.config.num_stages,
                                              policy)[0]
            grids.append(indices.to(torch.int16))
    return grids


@torch.no_grad()
def evaluate(layer: EnhanceLayer, pairs: list[torch.Tensor]) -> dict:
    """Held-out PSNR of the base and of each enhancement level, and per stage the codebook
    usage and the empirical entropy of its indices (bits per index, a memoryless coder's rate).
    The levels are decoded as the codec decodes them (bfloat16 where this machine's policy says)."""
    cfg, bfloat16 = layer.config, inference.native_bfloat16()
    scores = [0.0] * (cfg.num_stages + 1)
    counts = torch.zeros(cfg.num_stages, cfg.codebook_size, dtype=torch.long)
    pixels = 0
    for pair in pairs:
        both = pair.unsqueeze(0).float().div(255)
        x, base = both[:, :3], both[:, 3:]
        indices = layer.quantizer.quantize(layer.encoder(x, base), cfg.num_stages)
        scores[0] += psnr(base, x) / len(pairs)
        for level in range(1, cfg.num_stages + 1):
            y = layer.decode(indices[:, :level], base, bfloat16)
            scores[level] += psnr((y * 255).round() / 255, x) / len(pairs)
        for stage in range(cfg.num_stages):
            counts[stage] += torch.bincount(indices[:, stage].flatten(), minlength=cfg.codebook_size)
        pixels += x.shape[-1] * x.shape[-2]
    usage = usage_statistics(counts)
    entropy = [u["entropy_bits"] for u in usage]
    positions = int(counts[0].sum())
    return {"psnr": scores, "bits_per_index": entropy, "live": [u["live_fraction"] for u in usage],
            "bpp_per_stage": [e * positions / pixels for e in entropy]}


class EnhanceTask:
    """The layer on random crops of (image, base reconstruction) `pairs`; written at the end
    into a copy of the base model's weights file `source` (with `description`, if given)."""

    def __init__(self, config: EnhanceConfig, cfg: TrainConfig, pairs: list[torch.Tensor],
                 held_pairs: list[torch.Tensor], *, source: str | Path, description: str | None = None,
                 record: dict | None = None):
        self.model, self.cfg, self.pairs, self.held_pairs = EnhanceLayer(config), cfg, pairs, held_pairs
        self.source, self.description, self.record = source, description, record or {}
        self.checkpoint_key = {"enhance_config": asdict(config)}

    def batch_loss(self, step: int, generator: torch.Generator):
        both = random_crops(self.pairs, self.cfg.batch_size, self.cfg.crop_size, generator)
        return residual_vq_loss(self.model, self.model.quantizer, self.model.config, both[:, :3], both[:, 3:],
                                generator=generator)

    def evaluate(self) -> dict:
        return evaluate(self.model, self.held_pairs)

    @staticmethod
    def summary(entry: dict) -> dict:
        return {"step": entry["step"], "minutes": round(entry["wall_seconds"] / 60, 1),
                "psnr": [round(p, 2) for p in entry["psnr"]], "bits": [round(b, 2) for b in entry["bits_per_index"]],
                "bpp": [round(b, 3) for b in entry["bpp_per_stage"]], "live": [round(v, 3) for v in entry["live"]]}

    def save_weights(self, path: Path, record: dict) -> None:
        training = {"steps": record["steps"], "wall_seconds": record["wall_seconds"], "train_pool": len(self.pairs),
                    "train_config": asdict(self.cfg), "lr_scale": record["lr_scale"], "rollbacks": record["rollbacks"],
                    "log": record["log"], **self.record}
        save_with_enhance(self.source, path, self.model.eval(), training, self.description)
