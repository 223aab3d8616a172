"""Training task: the VQ-VAE (`vqcodec train`), run by the one loop (training.loop).

    folder of images / .npz ──decode once──> pool of uint8 tensors (+ downscaled copies)
        │ random crops + flips, every step
        v
    VQVAE(crops, keep_stages ~ U{1..S})  ──>  MSE + beta * commitment
        │ evaluate: held-out PSNR per quality level, codebook usage per stage
        v
    <out>.safetensors (config inside), written at every checkpoint

Quantizer dropout (a random number of residual stages per example) makes every prefix of
stages a usable quality level: Zeghidour et al. 2021, "SoundStream". The same residual-VQ
step (residual_vq_loss) trains the enhancement layer (training.enhance_task).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ModelConfig, TrainConfig
from ..inference import native_bfloat16
from ..nn.autoencoder import VQVAE
from ..weights_io import save_weights
from .data import as_batch, psnr, random_crops, usage_statistics


def residual_vq_loss(forward, quantizer, config, images: torch.Tensor, *context: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """One step's loss of a residual-VQ autoencoder (VQVAE, EnhanceLayer) on a batch, each
    example keeping a random prefix of the stages: MSE + beta * commitment; and the scalars
    the progress line shows (loss, PSNR, smallest fraction of live codes over the stages)."""
    keep = torch.randint(1, config.num_stages + 1, (images.shape[0],), generator=generator).to(images.device)
    reconstruction, _, commitment = forward(images, *context, keep)
    loss = F.mse_loss(reconstruction, images) + config.commitment_weight * commitment
    live = min((vq.ema_count >= config.dead_code_threshold).float().mean().item() for vq in quantizer.stages)
    return loss, {"loss": loss.item(), "psnr": psnr(reconstruction.detach(), images), "live": live}


@torch.no_grad()
def codebook_usage(model: VQVAE, images: list[torch.Tensor], device: torch.device) -> list[dict]:
    """Per stage: fraction of codes used at least once and perplexity, over a pass of `images`."""
    cfg = model.config
    counts = torch.zeros(cfg.num_stages, cfg.codebook_size, dtype=torch.long)
    for image in images:
        indices = model.encode_indices(as_batch(image, cfg.stride).to(device), cfg.num_stages).cpu()
        for stage in range(cfg.num_stages):
            counts[stage] += torch.bincount(indices[:, stage].flatten(), minlength=cfg.codebook_size)
    return usage_statistics(counts)


@torch.no_grad()
def held_out_psnr(model: VQVAE, images: list[torch.Tensor], device: torch.device) -> dict[int, float]:
    """Mean PSNR per quality level (number of stages) on held-out images, each level decoded as
    the codec decodes it (bfloat16 where this machine's inference policy says)."""
    cfg, bfloat16 = model.config, native_bfloat16()
    totals = dict.fromkeys(range(1, cfg.num_stages + 1), 0.0)
    for image in images:
        x = as_batch(image, cfg.stride).to(device)
        indices = model.encode_indices(x, cfg.num_stages)
        for level in totals:
            y = model.decode(indices[:, :level], bfloat16)
            totals[level] += psnr((y * 255).round() / 255, x) / len(images)
    return totals


def initialize_from(model: VQVAE, weights: str | os.PathLike) -> list[str]:
    """Warm start: copy every tensor of an existing model's weights into `model`.

    Tensors whose shape differs (say a wider latent) get the overlapping slice; the rest
    of such a tensor keeps its fresh initialisation, except the decoder's first layer,
    whose extra input channels start at zero so the warm-started model begins as the old
    one. Codebooks of another dimension are left uninitialised (k-means on the first
    batch). Returns the names of the tensors that were only partly copied."""
    from safetensors.torch import load_file

    source = load_file(str(weights))
    target = model.state_dict()
    partial = []
    same_codebooks = all(name in source and source[name].shape == tensor.shape
                         for name, tensor in target.items() if name.startswith("quantizer."))
    with torch.no_grad():
        for name, tensor in target.items():
            old = source.get(name)
            if old is None or old.dim() != tensor.dim() or (name.startswith("quantizer.") and not same_codebooks):
                continue
            if old.shape == tensor.shape:
                tensor.copy_(old)
                continue
            if name == "decoder.net.0.weight":
                tensor.zero_()
            overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, tensor.shape))
            tensor[overlap] = old[overlap]
            partial.append(name)
    return partial


class VQVAETask:
    """The VQ-VAE on random crops of `pool`; evaluated on `held_out` (named held_names).
    With world > 1 (torchrun) the forward pass goes through DistributedDataParallel."""

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, pool: list[torch.Tensor],
                 held_out: list[torch.Tensor], held_names: list[str], *, name: str, description: str,
                 device: torch.device, world: int = 1, record: dict | None = None):
        self.cfg, self.name, self.description, self.device = cfg, name, description, device
        self.pool, self.held_out, self.held_names = pool, held_out, held_names
        self.model = VQVAE(model_config).to(device)
        self.forward = self.model
        if world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        self.checkpoint_key = self.checkpoint_key_for(model_config)
        self.record = {"world_size": world, "device": device.type, "train_pool": len(pool),
                       "held_out_images": held_names, **(record or {})}

    @staticmethod
    def checkpoint_key_for(model_config: ModelConfig) -> dict:
        """What a checkpoint must have been made with to be resumed (loop.run, loop.finished)."""
        return {"model_config": asdict(model_config)}

    def batch_loss(self, step: int, generator: torch.Generator):
        images = random_crops(self.pool, self.cfg.batch_size, self.cfg.crop_size, generator).to(self.device)
        return residual_vq_loss(self.forward, self.model.quantizer, self.model.config, images, generator=generator)

    def evaluate(self) -> dict:
        sample = self.held_out + self.pool[:: max(1, len(self.pool) // 16)]
        return {"held_out_psnr": held_out_psnr(self.model, self.held_out, self.device),
                "usage": codebook_usage(self.model, sample, self.device)}

    @staticmethod
    def summary(entry: dict) -> dict:
        return {"step": entry["step"], "psnr": {k: round(v, 2) for k, v in entry["held_out_psnr"].items()},
                "live": [round(u["live_fraction"], 3) for u in entry["usage"]]}

    def save_weights(self, path: Path, record: dict) -> None:
        training = {"steps": record["steps"], "wall_seconds": record["wall_seconds"], "lr_scale": record["lr_scale"],
                    "rollbacks": record["rollbacks"], **self.record, **record["last_eval"]}
        save_weights(self.model, path, name=self.name, description=self.description, train_config=self.cfg,
                     training=training)
