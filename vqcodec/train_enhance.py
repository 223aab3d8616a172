"""`vqcodec train-enhance` and `vqcodec train-prior --layer enhance`: the enhancement layer
(training.enhance_task) and the context prior over its index grids (training.prior_task), both
run by the one loop (training.loop).

    folder of images ──base model at the layer's base level──> (image, base) pairs, cached in
        │ <out>.pairs.pt while the base weights and data are unchanged
        v
    EnhanceTask ──> <out>.safetensors = the base model (and prior) + the layer ("enhance.*")
    then: the layer's index grids (cached in <out>.enhance_grids.pt) ──PriorTask──> + "enhance_prior.*"

Next to <out>: <out>.enhance.ckpt / <out>.enhance_prior.ckpt (the loop's checkpoints; a rerun
resumes from them) and <out>.enhance.log.jsonl / <out>.enhance_prior.log.jsonl (evaluations).

The held-out images are the same as the base model's (the last ones by name, or spread).
"""
from __future__ import annotations

import os
from pathlib import Path

from .codec import RATE_TRADEOFF
from .config import EnhanceConfig, PriorTrainConfig, TrainConfig
from .nn.enhance import base_level
from .nn.prior import ContextPrior
from .training.data import cached, load_training_data, read_sections
from .training.enhance_task import EnhanceTask, enhancement_grids, image_pairs
from .training.loop import LoopConfig, RunFiles, run, setup
from .training.prior_task import LOOP_SETTINGS, PriorTask, prior_config_for
from .weights_io import enhance_from_bytes, load_vqvae, prior_from_bytes, sha256_of_file

__all__ = ["read_enhance_config_file", "train_enhance", "train_enhance_prior"]


def read_enhance_config_file(path: str | os.PathLike | None) -> tuple[EnhanceConfig, TrainConfig]:
    """A JSON file {"enhance": {...}, "train": {...}}; missing keys keep their defaults."""
    sections = read_sections(path, {"enhance": EnhanceConfig, "train": TrainConfig})
    return sections["enhance"], sections["train"]


def train_enhance(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                  enhance_config: EnhanceConfig, train_config: TrainConfig, description: str | None = None,
                  progress: bool = True) -> Path:
    """Train an enhancement layer over the base model in `weights`; write both to `out`
    (with a new one-line `description`, if given)."""
    cfg = train_config
    loop_cfg = LoopConfig.of(cfg, bf16=False)
    setup(loop_cfg)
    out = Path(out)
    vqvae = load_vqvae(weights)
    prior = prior_from_bytes(Path(weights).read_bytes(), str(weights))
    multiple = max(vqvae.config.stride, enhance_config.stride)
    if multiple % min(vqvae.config.stride, enhance_config.stride):
        raise ValueError("the enhancement stride and the base model's must divide one another")
    stages = base_level(vqvae.config, enhance_config)

    def make_pairs() -> dict:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size, multiple, cfg.held_out_spread)
        return {"pairs": image_pairs(vqvae, prior, pool, multiple, stages, progress),
                "held_out": image_pairs(vqvae, prior, held_pool, multiple, stages, progress),
                "held_out_names": held_names}

    base_sha256 = sha256_of_file(weights)
    key = [base_sha256, str(Path(data_dir).resolve()), cfg.held_out_images, list(cfg.extra_scales), cfg.crop_size,
           multiple, RATE_TRADEOFF, stages] + (["spread"] if cfg.held_out_spread else [])
    data = cached(out.with_suffix(".pairs.pt"), key, make_pairs)
    task = EnhanceTask(enhance_config, cfg, data["pairs"], data["held_out"], source=weights, description=description,
                       record={"data": str(data_dir), "held_out_images": data["held_out_names"],
                               "base_weights_sha256": base_sha256})
    run(task, loop_cfg, RunFiles.beside(out, "enhance.", weights_at_checkpoints=False),
        description="training enhancement layer", progress=progress)
    return out


def train_enhance_prior(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                        prior_fields: dict | None = None, train_config: PriorTrainConfig = PriorTrainConfig(),
                        progress: bool = True) -> Path:
    """Train the context prior over the index grids of the enhancement layer in `weights`
    (its stages and codebook size by default); write the weights with it to `out`."""
    cfg = train_config
    if cfg.rate_tradeoff > 0:
        raise ValueError("the enhancement layer picks nearest codes: rate_tradeoff does not apply to its prior")
    loop_cfg = LoopConfig.of(cfg, **LOOP_SETTINGS)
    setup(loop_cfg)
    out = Path(out)
    weights_bytes = Path(weights).read_bytes()
    layer = enhance_from_bytes(weights_bytes, str(weights))
    if layer is None:
        raise ValueError(f"{weights} has no enhancement layer (train one with `vqcodec train-enhance`)")
    vqvae, prior = load_vqvae(weights), prior_from_bytes(weights_bytes, str(weights))
    layer_cfg = layer.config
    prior_config = prior_config_for(prior_fields, layer_cfg.num_stages, layer_cfg.codebook_size,
                                    "the enhancement layer's")
    multiple = max(vqvae.config.stride, layer_cfg.stride)

    def make_grids() -> dict:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size * layer_cfg.stride, multiple,
                                                         cfg.held_out_spread)
        stages = base_level(vqvae.config, layer_cfg)
        pairs, held_pairs = (image_pairs(vqvae, prior, images, multiple, stages, progress)
                             for images in (pool, held_pool))
        return {"grids": enhancement_grids(layer, pairs, cfg.mirror, progress),
                "held_out": enhancement_grids(layer, held_pairs, False, progress), "held_out_names": held_names}

    key = [sha256_of_file(weights), str(Path(data_dir).resolve()), cfg.held_out_images, list(cfg.extra_scales),
           cfg.crop_size, cfg.mirror] + (["spread"] if cfg.held_out_spread else [])
    data = cached(out.with_suffix(".enhance_grids.pt"), key, make_grids)
    task = PriorTask(ContextPrior(prior_config), cfg, data["grids"], data["held_out"], source=weights,
                     layer="enhance", record={"data": str(data_dir), "held_out_images": data["held_out_names"]})
    run(task, loop_cfg, RunFiles.beside(out, "enhance_prior.", weights_at_checkpoints=False),
        description="training prior", progress=progress)
    return out
