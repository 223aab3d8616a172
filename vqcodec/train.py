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

import copy
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


def held_out_positions(count: int, held_out: int, spread: bool) -> list[int]:
    """Which of `count` images (in name or array order) are held out: the last `held_out`, or
    with spread, every (count // held_out)-th one (the last of each run of that length)."""
    if count <= held_out:
        raise ValueError(f"{count} images; need more than {held_out} held out")
    if not spread or held_out == 0:
        return list(range(count - held_out, count))
    step = count // held_out
    return [step - 1 + i * step for i in range(held_out)]


def load_training_data(data: str | os.PathLike, held_out: int, scales: tuple[float, ...], min_side: int,
                       held_min_side: int, spread: bool = False
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """(training pool, held-out pool, held-out names) from a folder of images or from a .npz
    file with an `images` array (N, H, W) or (N, H, W, 3) of uint8, such as mnist5k.npz.
    The last `held_out` images (by name, or by position in the array) are held out, or with
    spread, `held_out` images evenly spread over them (held_out_positions)."""
    data = Path(data)
    if data.is_file() and data.suffix == ".npz":
        with np.load(data) as archive:
            if "images" not in archive:
                raise ValueError(f"{data} has no 'images' array")
            array = archive["images"]
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise ValueError(f"{data}: 'images' must be uint8 (N, H, W) or (N, H, W, 3)")
        if array.ndim == 3:
            array = np.repeat(array[..., None], 3, axis=-1)
        tensors = list(torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2))
        if len(tensors) <= held_out:
            raise ValueError(f"{data} has {len(tensors)} images; need more than {held_out} held out")
        held = held_out_positions(len(tensors), held_out, spread)
        rest = sorted(set(range(len(tensors))) - set(held))
        return [tensors[i] for i in rest], [tensors[i] for i in held], [f"{data.name}[{i}]" for i in held]
    files = find_images([data])
    if len(files) <= held_out:
        raise ValueError(f"{data} has {len(files)} images; need more than {held_out} held out")
    held = set(held_out_positions(len(files), held_out, spread))
    train_files = [f for i, f in enumerate(files) if i not in held]
    held_files = [f for i, f in enumerate(files) if i in held]
    return (load_pool(train_files, scales, min_side), load_pool(held_files, (), held_min_side),
            [p.name for p in held_files])


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


def learning_rate(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to lr_final_fraction of the peak (for TrainConfig and
    PriorTrainConfig alike: learning_rate, warmup_steps, steps, lr_final_fraction)."""
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


class SpikeGuard:
    """Detects divergence: the recent mean loss far above the long-run mean.

    A single bad batch is normal; a run that is blowing up shows a rising loss over
    tens of steps before it becomes non-finite, which is what this looks for."""

    def __init__(self, factor: float, recent: int = 20, long: int = 500):
        self.factor = factor
        self.recent_decay, self.long_decay = 1 - 1 / recent, 1 - 1 / long
        self.recent = self.long = None
        self.seen = 0

    def diverging(self, loss: float) -> bool:
        if not self.factor:
            return False
        if not math.isfinite(loss):
            return True
        self.seen += 1
        if self.recent is None:
            self.recent = self.long = loss
            return False
        self.recent = self.recent_decay * self.recent + (1 - self.recent_decay) * loss
        self.long = self.long_decay * self.long + (1 - self.long_decay) * loss
        return self.seen > 100 and self.recent > self.factor * self.long

    def reset(self) -> None:
        self.recent = self.long = None
        self.seen = 0


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


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The loss averaged over all processes, so every rank makes the same rollback decision."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value.item()


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *, model_config: ModelConfig,
          train_config: TrainConfig, name: str, description: str, device_name: str = "cpu",
          resume: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
          progress: bool = True) -> Path:
    """Train a VQ-VAE on the images in data_dir and write its weights to `out`.

    init_from: weights of an earlier model to start from (ignored when resuming)."""
    rank, world = _setup_distributed(device_name)
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(device_name if device_name != "cuda" or world == 1 else f"cuda:{rank % torch.cuda.device_count()}")
    out = Path(out)
    checkpoint_path = out.with_suffix(".ckpt")
    torch.manual_seed(cfg.seed)
    pool, held_out, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                    cfg.crop_size, model_config.stride, cfg.held_out_spread)

    model = VQVAE(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, elapsed, lr_scale, rollbacks = 0, 0.0, 1.0, []
    resume = resume or (checkpoint_path if checkpoint_path.exists() else None)
    if init_from and not resume:
        partial = initialize_from(model, init_from)
        if rank == 0 and progress:
            tqdm.write(f"initialised from {init_from}; resized: {', '.join(partial) or 'none'}")
    if resume:
        state = torch.load(resume, map_location=device, weights_only=True)
        if model_config_from_dict(state["model_config"]) != model_config:
            raise ValueError(f"{resume} was made with another model config; pass the same --config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
        step, elapsed = state["step"], state["elapsed"]
        lr_scale, rollbacks = state.get("lr_scale", 1.0), state.get("rollbacks", [])
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    def record(extra: dict) -> dict:
        return {"steps": step, "wall_seconds": round(elapsed, 1), "world_size": world,
                "device": device_name, "data": str(data_dir), "train_pool": len(pool),
                "held_out_images": held_names, "lr_scale": lr_scale,
                "init_from": str(init_from) if init_from else None, "rollbacks": rollbacks, **extra}

    def snapshot() -> dict:
        return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "step": step, "elapsed": elapsed, "generator": generator.get_state()})

    def save_checkpoint() -> None:
        generators = [generator.get_state()]
        if world > 1:
            generators = [torch.empty_like(generators[0]) for _ in range(world)]
            dist.all_gather(generators, generator.get_state())
        if rank != 0:
            return
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "generator": generators, "lr_scale": lr_scale, "rollbacks": rollbacks,
                    "model_config": asdict(model_config), "train_config": asdict(cfg)}, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())
        save_weights(model, out, name=name, description=description, train_config=cfg,
                     training=record({}))

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True,
               desc=f"training {name}")
    model.train()
    log = []
    guard = SpikeGuard(cfg.spike_factor)
    last_good = snapshot()
    while step < cfg.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg) * lr_scale
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
        if guard.diverging(_mean_over_ranks(loss.detach(), world)):
            model.load_state_dict(last_good["model"])
            optimizer.load_state_dict(last_good["optimizer"])
            generator.set_state(last_good["generator"])
            rollbacks.append({"at_step": step, "back_to": last_good["step"]})
            step, elapsed, lr_scale = last_good["step"], last_good["elapsed"], lr_scale / 2
            guard.reset()
            bar.write(f"loss diverging at step {rollbacks[-1]['at_step']}: back to step {step}, "
                      f"learning rate x{lr_scale:g}")
            bar.n = step
            bar.refresh()
            continue
        step += 1
        elapsed += time.perf_counter() - started
        live = [(vq.ema_count >= model_config.dead_code_threshold).float().mean().item()
                for vq in model.quantizer.stages]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr_of(reconstruction, images):.2f}",
                        live=f"{min(live):.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
            last_good = snapshot()
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

