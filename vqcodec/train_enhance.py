"""Training loop of the enhancement layer (vqcodec.nn.enhance) over a trained base model.

    folder of images ──base model at the layer's base level, as the codec codes it──> pairs
        │ (image, base reconstruction) as 6-channel uint8 tensors, cached in <out>.pairs.pt
        │ random crops + flips, every step
        v
    EnhanceLayer(crops, base crops, keep_stages ~ U{1..S})  ──>  MSE + beta * commitment  ──> Adam
        │ every checkpoint_every steps: resumable checkpoint (<out>.enhance.ckpt)
        │ every eval_every steps: held-out PSNR per level, bits per index, codebook usage
        v  (at the end)
    <out>.safetensors = the base model's tensors (and prior) + the layer ("enhance.*")

train_enhance_prior (`vqcodec train-prior --layer enhance`) then fits a context prior
(nn/prior.py, the same model as the base's) to the layer's index grids: "enhance_prior.*".

The held-out images are the same as the base model's (the last ones by name).
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .codec import RATE_TRADEOFF
from .config import (EnhanceConfig, PriorConfig, PriorTrainConfig, TrainConfig, enhance_config_from_dict,
                     prior_config_from_dict, train_config_from_dict)
from .fileio import atomic_write_bytes
from .images import pad_to_multiple
from .nn.enhance import EnhanceLayer, base_level
from .nn.prior import ContextPrior, IntegerPrior
from .nn.rdoq import rate_distortion_indices
from .training.data import load_training_data, psnr as psnr_of, random_crops
from .training.loop import SpikeGuard, learning_rate
from .train_prior import fit_prior
from .weights_io import (enhance_from_bytes, load_vqvae, prior_from_bytes, save_with_enhance, save_with_prior,
                         sha256_of_file)



@torch.no_grad()
def base_reconstruction(vqvae, prior, pixels: np.ndarray, multiple: int, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """(padded pixels, base reconstruction) of uint8 (H, W, 3) pixels at base level `stages`,
    both padded to `multiple`, with the indices the codec picks (rate-aware under the prior)."""
    padded = pad_to_multiple(pixels, multiple)
    z = vqvae.encode_latents(padded)
    if prior is None:
        indices = vqvae.quantizer.quantize(z, stages)
    else:
        indices = rate_distortion_indices(vqvae.quantizer, prior, z, stages, RATE_TRADEOFF)[0].unsqueeze(0)
    return padded, vqvae.decode_pixels(indices)


def image_pairs(vqvae, prior, pool: list[torch.Tensor], multiple: int, stages: int,
                progress: bool) -> list[torch.Tensor]:
    """(6, H, W) uint8: each image stacked on its base reconstruction at level `stages`."""
    pairs = []
    for image in tqdm(pool, desc="base reconstructions", disable=not progress, leave=False):
        padded, base = base_reconstruction(vqvae, prior, image.permute(1, 2, 0).numpy(), multiple, stages)
        pairs.append(torch.from_numpy(np.concatenate([padded, base], axis=2)).permute(2, 0, 1).contiguous())
    return pairs


@torch.no_grad()
def evaluate(layer: EnhanceLayer, pairs: list[torch.Tensor]) -> dict:
    """Held-out PSNR of the base and of each enhancement level, and per stage the codebook
    usage and the empirical entropy of its indices (bits per index, a memoryless coder's rate)."""
    layer.eval()
    cfg = layer.config
    psnr = [0.0] * (cfg.num_stages + 1)
    counts = torch.zeros(cfg.num_stages, cfg.codebook_size, dtype=torch.long)
    pixels = 0
    for pair in pairs:
        both = pair.unsqueeze(0).float().div(255)
        x, base = both[:, :3], both[:, 3:]
        indices = layer.quantizer.quantize(layer.encoder(x, base), cfg.num_stages)
        psnr[0] += psnr_of(base, x) / len(pairs)
        for level in range(1, cfg.num_stages + 1):
            y = layer.decode_indices(indices[:, :level], base)
            psnr[level] += psnr_of((y * 255).round() / 255, x) / len(pairs)
        for stage in range(cfg.num_stages):
            counts[stage] += torch.bincount(indices[:, stage].flatten(), minlength=cfg.codebook_size)
        pixels += x.shape[-1] * x.shape[-2]
    layer.train()
    entropy = []
    for stage_counts in counts:
        p = stage_counts.double() / stage_counts.sum()
        entropy.append(-(p[p > 0] * p[p > 0].log2()).sum().item())
    positions = int(counts[0].sum())
    return {"psnr": psnr, "bits_per_index": entropy,
            "live": [(c > 0).float().mean().item() for c in counts],
            "bpp_per_stage": [e * positions / pixels for e in entropy]}


@torch.no_grad()
def enhancement_grids(layer: EnhanceLayer, pairs: list[torch.Tensor], mirror: bool, progress: bool) -> list[torch.Tensor]:
    """(S, H/s, W/s) int16 index grids of the layer's stages over each (image, base) pair (and
    its mirror image): what files hold above the base levels."""
    grids = []
    for pair in tqdm(pairs, desc="enhancement grids", disable=not progress, leave=False):
        for version in ((pair, pair.flip(-1)) if mirror else (pair,)):
            pixels = version.permute(1, 2, 0).numpy()
            indices = layer.encode_pixels(pixels[..., :3], pixels[..., 3:], layer.config.num_stages)[0]
            grids.append(indices.to(torch.int16))
    return grids


def train_enhance_prior(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                        prior_fields: dict | None = None, train_config: PriorTrainConfig = PriorTrainConfig(),
                        progress: bool = True) -> Path:
    """Train the context prior over the index grids of the enhancement layer in `weights`
    (its stages and codebook size by default); write the weights with it to `out`."""
    cfg = train_config
    if cfg.rate_tradeoff > 0:
        raise ValueError("the enhancement layer picks nearest codes: rate_tradeoff does not apply to its prior")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    weights_bytes = Path(weights).read_bytes()
    layer = enhance_from_bytes(weights_bytes, str(weights))
    if layer is None:
        raise ValueError(f"{weights} has no enhancement layer (train one with `vqcodec train-enhance`)")
    vqvae, prior = load_vqvae(weights), prior_from_bytes(weights_bytes, str(weights))
    layer_cfg = layer.config
    prior_config = prior_config_from_dict({**asdict(PriorConfig()), "num_stages": layer_cfg.num_stages,
                                           "codebook_size": layer_cfg.codebook_size, **(prior_fields or {})})
    if (prior_config.num_stages, prior_config.codebook_size) != (layer_cfg.num_stages, layer_cfg.codebook_size):
        raise ValueError("the prior's stages and codebook size must match the enhancement layer's")
    multiple = max(vqvae.config.stride, layer_cfg.stride)
    cache_path = out.with_suffix(".enhance_grids.pt")
    cache_key = [sha256_of_file(weights), str(Path(data_dir).resolve()), cfg.held_out_images,
                 list(cfg.extra_scales), cfg.crop_size, cfg.mirror]
    cache = torch.load(cache_path, weights_only=True) if cache_path.exists() else {}
    if cache.get("key") == cache_key:
        grids, held_grids, held_names = cache["grids"], cache["held_out"], cache["held_out_names"]
    else:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size * layer_cfg.stride, multiple)
        stages = base_level(vqvae.config, layer_cfg)
        grids = enhancement_grids(layer, image_pairs(vqvae, prior, pool, multiple, stages, progress), cfg.mirror,
                                  progress)
        held_grids = enhancement_grids(layer, image_pairs(vqvae, prior, held_pool, multiple, stages, progress),
                                       False, progress)
        buffer = io.BytesIO()
        torch.save({"key": cache_key, "grids": grids, "held_out": held_grids, "held_out_names": held_names}, buffer)
        atomic_write_bytes(cache_path, buffer.getvalue())
    context_prior = ContextPrior(prior_config)
    record = fit_prior(context_prior, grids, held_grids, cfg, out.with_suffix(".enhance_prior.ckpt"), progress)
    record.update({"data": str(data_dir), "train_grids": len(grids), "held_out_images": held_names})
    save_with_prior(weights, out, IntegerPrior(prior_config, context_prior.to_integer()), prior_config, record,
                    layer="enhance")
    return out


def read_enhance_config_file(path: str | os.PathLike | None) -> tuple[EnhanceConfig, TrainConfig]:
    """A JSON file {"enhance": {...}, "train": {...}}; missing keys keep their defaults."""
    if path is None:
        return EnhanceConfig(), TrainConfig()
    data = json.loads(Path(path).read_text())
    unknown = set(data) - {"enhance", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected 'enhance' and 'train')")
    enhance = enhance_config_from_dict({**asdict(EnhanceConfig()), **data.get("enhance", {})})
    train = train_config_from_dict({**asdict(TrainConfig()), **data.get("train", {})})
    return enhance, train


def train_enhance(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                  enhance_config: EnhanceConfig, train_config: TrainConfig, description: str | None = None,
                  progress: bool = True) -> Path:
    """Train an enhancement layer over the base model in `weights`; write both to `out`
    (with a new one-line `description`, if given)."""
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    checkpoint_path = out.with_suffix(".enhance.ckpt")
    weights_bytes = Path(weights).read_bytes()
    vqvae = load_vqvae(weights)
    prior = prior_from_bytes(weights_bytes, str(weights))
    multiple = max(vqvae.config.stride, enhance_config.stride)
    if multiple % min(vqvae.config.stride, enhance_config.stride):
        raise ValueError("the enhancement stride and the base model's must divide one another")

    stages = base_level(vqvae.config, enhance_config)
    cache_path = out.with_suffix(".pairs.pt")
    cache_key = [sha256_of_file(weights), str(Path(data_dir).resolve()), cfg.held_out_images,
                 list(cfg.extra_scales), cfg.crop_size, multiple, RATE_TRADEOFF, stages]
    cache = torch.load(cache_path, weights_only=True) if cache_path.exists() else {}
    if cache.get("key") == cache_key:
        pairs, held_pairs, held_names = cache["pairs"], cache["held_out"], cache["held_out_names"]
    else:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size, multiple)
        pairs = image_pairs(vqvae, prior, pool, multiple, stages, progress)
        held_pairs = image_pairs(vqvae, prior, held_pool, multiple, stages, progress)
        buffer = io.BytesIO()
        torch.save({"key": cache_key, "pairs": pairs, "held_out": held_pairs, "held_out_names": held_names},
                   buffer)
        atomic_write_bytes(cache_path, buffer.getvalue())

    layer = EnhanceLayer(enhance_config)
    optimizer = torch.optim.Adam(layer.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, lr_scale, log = 0, 0.0, 1.0, []
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True)
        if state["enhance_config"] != asdict(enhance_config):
            raise ValueError(f"{checkpoint_path} was made with another enhancement config")
        layer.load_state_dict(state["layer"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, lr_scale, log = state["step"], state["elapsed"], state["lr_scale"], json.loads(state["log"])

    def record() -> dict:
        return {"steps": step, "wall_seconds": round(elapsed, 1), "data": str(data_dir),
                "train_pool": len(pairs), "held_out_images": held_names, "base_weights_sha256": cache_key[0],
                "train_config": asdict(cfg), "lr_scale": lr_scale, "log": log}

    def snapshot() -> bytes:
        buffer = io.BytesIO()
        torch.save({"layer": layer.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "generator": generator.get_state(), "lr_scale": lr_scale,
                    "log": json.dumps(log), "enhance_config": asdict(enhance_config)}, buffer)
        return buffer.getvalue()

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True,
               desc="training enhancement layer")
    guard = SpikeGuard(cfg.spike_factor)
    last_good = snapshot()
    layer.train()
    while step < cfg.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg) * lr_scale
        both = random_crops(pairs, cfg.batch_size, cfg.crop_size, generator)
        images, base = both[:, :3], both[:, 3:]
        keep = torch.randint(1, enhance_config.num_stages + 1, (cfg.batch_size,), generator=generator)
        reconstruction, _, commitment = layer(images, base, keep)
        loss = F.mse_loss(reconstruction, images) + enhance_config.commitment_weight * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
        if guard.diverging(loss.item()):
            state = torch.load(io.BytesIO(last_good), weights_only=True)
            layer.load_state_dict(state["layer"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step, elapsed, lr_scale = state["step"], state["elapsed"], lr_scale / 2
            guard.reset()
            bar.write(f"loss diverging: back to step {step}, learning rate x{lr_scale:g}")
            bar.n = step
            continue
        step += 1
        elapsed += time.perf_counter() - started
        live = min((vq.ema_count >= enhance_config.dead_code_threshold).float().mean().item()
                   for vq in layer.quantizer.stages)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.5f}", psnr=f"{psnr_of(reconstruction, images):.2f}",
                        live=f"{live:.2f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result = evaluate(layer, held_pairs)
            log.append({"step": step, "wall_seconds": round(elapsed, 1), **result})
            bar.write(json.dumps({"step": step, "minutes": round(elapsed / 60, 1),
                                  "psnr": [round(p, 2) for p in result["psnr"]],
                                  "bits": [round(b, 2) for b in result["bits_per_index"]],
                                  "bpp": [round(b, 3) for b in result["bpp_per_stage"]],
                                  "live": [round(v, 3) for v in result["live"]]}))
        if step % cfg.checkpoint_every == 0:
            last_good = snapshot()
            atomic_write_bytes(checkpoint_path, last_good)
    bar.close()
    save_with_enhance(weights, out, layer.eval(), record(), description)
    return out

