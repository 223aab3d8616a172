"""`vqcodec train`: the VQ-VAE task (training.vqvae_task) run by the one loop (training.loop),
in one process or data-parallel under torchrun.

Next to <out>: <out>.ckpt (the loop's checkpoint; a rerun resumes from it) and <out>.log.jsonl
(every evaluation).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import ModelConfig, TrainConfig
from .training.data import load_training_data, read_sections
from .training.loop import LoopConfig, RunFiles, is_main_process, run, setup, setup_distributed
from .training.vqvae_task import VQVAETask, initialize_from

__all__ = ["read_config_file", "train", "is_main_process"]


def read_config_file(path: str | os.PathLike | None) -> tuple[ModelConfig, TrainConfig]:
    """A JSON file {"model": {...}, "train": {...}}; missing keys keep their defaults."""
    sections = read_sections(path, {"model": ModelConfig, "train": TrainConfig})
    return sections["model"], sections["train"]


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *, model_config: ModelConfig,
          train_config: TrainConfig, name: str, description: str, device_name: str = "cpu",
          resume: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
          progress: bool = True) -> Path:
    """Train a VQ-VAE on the images in data_dir and write its weights to `out`.

    resume: a checkpoint to start from (default: <out>.ckpt if it exists).
    init_from: weights of an earlier model to start from (ignored when resuming)."""
    rank, world = setup_distributed(device_name)
    cfg = train_config
    loop_cfg = LoopConfig.of(cfg, bf16=False)  # the VQ-VAE trains in float32
    setup(loop_cfg)
    device = torch.device(device_name if device_name != "cuda" or world == 1
                          else f"cuda:{rank % torch.cuda.device_count()}")
    out = Path(out)
    files = RunFiles.beside(out, resume=Path(resume) if resume else None)
    pool, held_out, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                    cfg.crop_size, model_config.stride, cfg.held_out_spread)
    task = VQVAETask(model_config, cfg, pool, held_out, held_names, name=name, description=description,
                     device=device, world=world,
                     record={"data": str(data_dir), "init_from": str(init_from) if init_from else None})
    if init_from and not (resume or files.checkpoint.exists()):
        partial = initialize_from(task.model, init_from)
        if rank == 0 and progress:
            tqdm.write(f"initialised from {init_from}; resized: {', '.join(partial) or 'none'}")
    run(task, loop_cfg, files, description=f"training {name}", progress=progress)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out
