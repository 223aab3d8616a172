"""`vqcodec train`: the VQ-VAE task (training.vqvae_task) run by the one loop (training.loop),
in one process or data-parallel under torchrun; with a "prior" section in the config, then
its prior (train_prior), in the same command.

    config {"model": ModelConfig, "train": TrainConfig}
        └─ the VQ-VAE  -> <out>, with <out>.ckpt (the loop's checkpoint; a rerun resumes from
                          it) and <out>.log.jsonl (every evaluation) next to it
    config {"model": ..., "train": ..., "prior": {"prior": {...}, "train": {...}}}
        ├─ phase 1  the VQ-VAE   -> <work>/autoencoder.safetensors (.ckpt, .log.jsonl)
        └─ phase 2  its prior    -> <out>: exactly what `vqcodec train-prior --weights
                                    <work>/autoencoder.safetensors --config <the prior section>`
                                    writes; its checkpoint, log and grid cache in <work>/prior.*
    config {"model": HierarchyConfig, "autoencoder": ..., "priors": ...}: training.pipeline

<work> is <out> without its suffix plus ".work" unless given. A phase that has reached its step
count is skipped on a rerun, an interrupted one resumes from its checkpoint; phase 2 starts
over when phase 1's weights have changed since it began (prior.source holds their sha256).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import ModelConfig, PriorTrainConfig, TrainConfig
from .training.data import load_training_data, parse_sections, read_json_object
from .training.loop import (LoopConfig, RunFiles, finished, is_main_process, run, setup, setup_distributed,
                            start_over_if_changed)
from .training.pipeline import SECTIONS as PIPELINE_SECTIONS, work_folder
from .training.vqvae_task import VQVAETask, initialize_from

__all__ = ["config_kind", "read_config_file", "read_phases", "train", "train_with_prior", "is_main_process"]

VQVAE_SECTIONS = ("model", "train", "prior")


def config_kind(path: str | os.PathLike | None) -> str:
    """Which trainer a `vqcodec train` config is for, by its sections: "vqvae" (model, train,
    and optionally prior) or "pipeline" (the hierarchical model: model, autoencoder, priors).
    Any other mix is a ValueError."""
    sections = set(read_json_object(path)) if path is not None else set()
    if sections <= set(VQVAE_SECTIONS):
        return "vqvae"
    if sections <= set(PIPELINE_SECTIONS):
        return "pipeline"
    raise ValueError(f"{path}: sections {sorted(sections)} fit no trainer: a VQ-VAE config has "
                     f"{', '.join(VQVAE_SECTIONS[:-1])} and optionally {VQVAE_SECTIONS[-1]}; a hierarchical "
                     f"pipeline config has {', '.join(PIPELINE_SECTIONS)}")


def read_phases(path: str | os.PathLike | None
                ) -> tuple[ModelConfig, TrainConfig, tuple[dict, PriorTrainConfig] | None]:
    """A JSON file {"model": {...}, "train": {...}} and optionally "prior": {"prior": {...},
    "train": {...}} (what a `vqcodec train-prior` config holds); missing keys keep their
    defaults. Returns the model and train configs, and the prior's (prior fields, train
    config), or None without a "prior" section."""
    data = read_json_object(path) if path is not None else {}
    prior = None
    if "prior" in data:
        from .train_prior import prior_config_from_section

        prior = prior_config_from_section(data["prior"], f"{path}, section 'prior'")
    sections = parse_sections({k: v for k, v in data.items() if k != "prior"},
                              {"model": ModelConfig, "train": TrainConfig}, str(path))
    return sections["model"], sections["train"], prior


def read_config_file(path: str | os.PathLike | None) -> tuple[ModelConfig, TrainConfig]:
    """The VQ-VAE's configs of a `vqcodec train` config file (read_phases without the prior)."""
    model_config, train_config, _ = read_phases(path)
    return model_config, train_config


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *, model_config: ModelConfig,
          train_config: TrainConfig, name: str, description: str, device_name: str = "cpu",
          resume: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
          progress: bool = True, label: str | None = None) -> Path:
    """Train a VQ-VAE on the images in data_dir and write its weights to `out`.

    resume: a checkpoint to start from (default: <out>.ckpt if it exists).
    init_from: weights of an earlier model to start from (ignored when resuming).
    label: the progress bar's (default "training <name>")."""
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
    run(task, loop_cfg, files, description=label or f"training {name}", progress=progress)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out


def train_with_prior(data_dir: str | os.PathLike, out: str | os.PathLike, *, model_config: ModelConfig,
                     train_config: TrainConfig, prior: tuple[dict, PriorTrainConfig], name: str, description: str,
                     device_name: str = "cpu", resume: str | os.PathLike | None = None,
                     init_from: str | os.PathLike | None = None, work: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """Both phases of a config with a "prior" section (see the module's docstring): the VQ-VAE
    into <work>/autoencoder.safetensors, then its prior (prior: read_phases's pair) into `out`.
    A finished phase is skipped, an interrupted one resumes. resume and init_from: phase 1's,
    as for train. Under torchrun, phase 2 runs in process 0 alone."""
    from .train_prior import run_files, train_prior
    from .training.data import load_labels
    from .training.prior_task import LOOP_SETTINGS, PriorTask, prior_config_for

    prior_fields, prior_train = prior
    if prior_train.rate_tradeoff > 0:
        raise ValueError("the prior section cannot refine a prior (rate_tradeoff > 0): the VQ-VAE of phase 1 "
                         "has none yet; refine the result with `vqcodec train-prior`")
    prior_config = prior_config_for(prior_fields, model_config.num_stages, model_config.codebook_size,
                                    "the model's")
    if prior_config.num_classes:  # phase 2's labels: missing ones fail now, not after phase 1
        load_labels(data_dir, prior_train.held_out_images, prior_train.held_out_spread, prior_train.mirror)
    out = Path(out)
    work = work_folder(out, work)
    autoencoder = work / "autoencoder.safetensors"

    def say(message: str) -> None:
        if progress and is_main_process():
            tqdm.write(message)

    phase1 = "phase 1/2: autoencoder"
    if resume is None and finished(RunFiles.beside(autoencoder), LoopConfig.of(train_config, bf16=False),
                                   VQVAETask.checkpoint_key_for(model_config)):
        say(f"{phase1}: done, skipped ({autoencoder})")
    else:
        train(data_dir, autoencoder, model_config=model_config, train_config=train_config, name=name,
              description=description, device_name=device_name, resume=resume, init_from=init_from,
              progress=progress, label=phase1)
    if not is_main_process():
        return out

    phase2 = "phase 2/2: prior"
    prior_files = run_files(out, work)
    start_over_if_changed(prior_files, autoencoder, work / "prior.source")
    if finished(prior_files, LoopConfig.of(prior_train, **LOOP_SETTINGS), PriorTask.checkpoint_key_for(prior_config)):
        say(f"{phase2}: done, skipped ({out})")
        return out
    return train_prior(autoencoder, data_dir, out, prior_fields=prior_fields, train_config=prior_train,
                       progress=progress, work=work, description=phase2)
