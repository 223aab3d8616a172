"""Training loop of the VQ-VAE (single process, or data-parallel under torchrun).

    folder of images ──decode once──> pool of uint8 tensors (+ downscaled copies)
        │ random crops + flips, every step
        v
    VQVAE(crops, keep_stages ~ U{1..S})  ──>  MSE + beta * commitment  ──> Adam
        │ every checkpoint_every steps: resumable checkpoint (<out>.ckpt) + weights
        │ every eval_every steps: held-out PSNR per quality level, codebook usage
        v
    <out>.safetensors (config inside)

Quantizer dropout (a random number of residual stages per example) makes every
prefix of stages a usable quality level: Zeghidour et al. 2021, "SoundStream".
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .config import ModelConfig, TrainConfig, model_config_from_dict, train_config_from_dict
from .nn.autoencoder import VQVAE
from .fileio import atomic_write_bytes
from .images import find_images
from .weights_io import save_weights

def load_pool(files: list[Path], scales: tuple[float, ...], min_side: int) -> list[torch.Tensor]:
    """Decode every image once into uint8 (3, H, W) tensors, plus downscaled copies."""
    pool = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            for scale in (1.0, *scales):
                size = (round(im.width * scale), round(im.height * scale))
                if min(size) < min_side:
                    continue
                scaled = im if scale == 1.0 else im.resize(size, Image.LANCZOS)
                pool.append(torch.from_numpy(np.asarray(scaled).copy()).permute(2, 0, 1).contiguous())
    if not pool:
        raise ValueError(f"no image is at least {min_side} pixels on its shorter side")
    return pool


def random_crops(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """count random size x size crops (random image, position, flips) as floats in [0,1]."""
    crops = []
    picks = torch.randint(len(pool), (count,), generator=generator)
    for i in picks.tolist():
        image = pool[i]
        _, h, w = image.shape
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = image[:, top:top + size, left:left + size]
        if torch.rand(1, generator=generator) < 0.5:
            crop = crop.flip(2)
        crops.append(crop)
    return torch.stack(crops).float() / 255.0


def psnr_of(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr_final_fraction of the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr_final_fraction
    return cfg.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def codebook_usage(model: VQVAE, images: list[torch.Tensor], device: torch.device) -> list[dict]:
    """Per stage: fraction of codes used at least once and perplexity, over a pass of `images`."""
    model.eval()
    cfg = model.config
    counts = torch.zeros(cfg.num_stages, cfg.codebook_size, dtype=torch.long)
    for image in images:
        x = image.unsqueeze(0).float().div(255).to(device)
        x = x[..., : x.shape[-2] // cfg.stride * cfg.stride, : x.shape[-1] // cfg.stride * cfg.stride]
        indices = model.encode_indices(x, cfg.num_stages).cpu()
        for stage in range(cfg.num_stages):
            counts[stage] += torch.bincount(indices[:, stage].flatten(), minlength=cfg.codebook_size)
    model.train()
    usage = []
    for stage_counts in counts:
        p = stage_counts.double() / stage_counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
        usage.append({"live_fraction": (stage_counts > 0).float().mean().item(),
                      "perplexity": 2 ** entropy, "entropy_bits": entropy})
    return usage


@torch.no_grad()
def held_out_psnr(model: VQVAE, images: list[torch.Tensor], device: torch.device) -> dict[int, float]:
    """Mean PSNR per quality level (number of stages) on held-out images."""
    model.eval()
    cfg = model.config
    result = {}
    totals = dict.fromkeys(range(1, cfg.num_stages + 1), 0.0)
    for image in images:
        x = image.unsqueeze(0).float().div(255).to(device)
        x = x[..., : x.shape[-2] // cfg.stride * cfg.stride, : x.shape[-1] // cfg.stride * cfg.stride]
        indices = model.encode_indices(x, cfg.num_stages)
        for level in totals:
            y = model.decode_indices(indices[:, :level])
            totals[level] += psnr_of((y * 255).round() / 255, x) / len(images)
    model.train()
    return totals


def read_config_file(path: str | os.PathLike | None) -> tuple[ModelConfig, TrainConfig]:
    """A JSON file {"model": {...}, "train": {...}}; missing keys keep their defaults."""
    if path is None:
        return ModelConfig(), TrainConfig()
    data = json.loads(Path(path).read_text())
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected 'model' and 'train')")
    model = model_config_from_dict({**asdict(ModelConfig()), **data.get("model", {})})
    train = train_config_from_dict({**asdict(TrainConfig()), **data.get("train", {})})
    return model, train


def is_main_process() -> bool:
    """True except in the non-zero ranks of a torchrun launch (RANK is set by torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def _setup_distributed(device_name: str) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1) join the process group; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_name == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *, model_config: ModelConfig,
          train_config: TrainConfig, name: str, description: str, device_name: str = "cpu",
          resume: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Train a VQ-VAE on the images in data_dir and write its weights to `out`."""
    rank, world = _setup_distributed(device_name)
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(device_name if device_name != "cuda" or world == 1 else f"cuda:{rank % torch.cuda.device_count()}")
    out = Path(out)
    checkpoint_path = out.with_suffix(".ckpt")
    torch.manual_seed(cfg.seed)
    files = find_images([data_dir])
    if len(files) <= cfg.held_out_images:
        raise ValueError(f"{data_dir} has {len(files)} images; need more than {cfg.held_out_images} held out")
    train_files, held_files = files[: len(files) - cfg.held_out_images], files[len(files) - cfg.held_out_images:]
    pool = load_pool(train_files, cfg.extra_scales, cfg.crop_size)
    held_out = load_pool(held_files, (), model_config.stride)

    model = VQVAE(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, elapsed = 0, 0.0
    resume = resume or (checkpoint_path if checkpoint_path.exists() else None)
    if resume:
        state = torch.load(resume, map_location=device, weights_only=True)
        if model_config_from_dict(state["model_config"]) != model_config:
            raise ValueError(f"{resume} was made with another model config; pass the same --config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
        step, elapsed = state["step"], state["elapsed"]
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    def record(extra: dict) -> dict:
        return {"steps": step, "wall_seconds": round(elapsed, 1), "world_size": world,
                "device": device_name, "data": str(data_dir), "train_images": len(train_files),
                "held_out_images": [p.name for p in held_files], **extra}

    def save_checkpoint() -> None:
        generators = [generator.get_state()]
        if world > 1:
            generators = [torch.empty_like(generators[0]) for _ in range(world)]
            dist.all_gather(generators, generator.get_state())
        if rank != 0:
            return
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "generator": generators,
                    "model_config": asdict(model_config), "train_config": asdict(cfg)}, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())
        save_weights(model, out, name=name, description=description, train_config=cfg,
                     training=record({}))

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True,
               desc=f"training {name}")
    model.train()
    log = []
    while step < cfg.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        images = random_crops(pool, cfg.batch_size, cfg.crop_size, generator).to(device)
        keep = torch.randint(1, model_config.num_stages + 1, (cfg.batch_size,), generator=generator).to(device)
        reconstruction, indices, commitment = ddp_model(images, keep)
        distortion = F.mse_loss(reconstruction, images)
        loss = distortion + model_config.commitment_weight * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
        step += 1
        elapsed += time.perf_counter() - started
        live = [(vq.ema_count >= model_config.dead_code_threshold).float().mean().item()
                for vq in model.quantizer.stages]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr_of(reconstruction, images):.2f}",
                        live=f"{min(live):.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
        if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            entry = {"step": step, "wall_seconds": round(elapsed, 1),
                     "held_out_psnr": held_out_psnr(model, held_out, device),
                     "usage": codebook_usage(model, held_out + pool[:: max(1, len(pool) // 16)], device)}
            log.append(entry)
            bar.write(json.dumps({"step": step, "psnr": {k: round(v, 2) for k, v in entry["held_out_psnr"].items()},
                                  "live": [round(u["live_fraction"], 3) for u in entry["usage"]]}))
            with open(out.with_suffix(".log.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")
            save_weights(model, out, name=name, description=description, train_config=cfg,
                         training=record({"held_out_psnr": entry["held_out_psnr"], "usage": entry["usage"]}))
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out

