"""Training loop of the context prior over a trained VQ-VAE's index grids.

    folder of images ──VQVAE.encode_indices (all stages; full size, 0.6x, mirrored)──> index grids
        │ random crops of the grids, a random stage per example, every step
        v
    ContextPrior.loss_bits (both checkerboard halves)  ──>  Adam
        │ every eval_every steps: held-out bits per index per stage, measured with the
        │ integer prior's real frequencies (what the range coder will spend)
        v
    <out>.safetensors = the VQ-VAE's tensors + the integer prior ("prior.*"), one hash for both

Next to <out>: <out>.prior.ckpt (resumable state) and <out>.grids.pt (the index grids, reused
while the VQ-VAE weights and data are unchanged).

With rate_tradeoff > 0 the grids are those the rate-aware encoder (nn/rdoq.py) makes with the
prior already in the weights, and training continues from that prior: one round of the
entropy-constrained VQ design loop (Chou, Lookabaugh and Gray 1989), so that the prior learns
the indices files will actually hold.

The held-out images are the same as the VQ-VAE's (the last ones by name).
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
from tqdm import tqdm

from .config import PriorConfig, PriorTrainConfig, prior_config_from_dict, prior_train_config_from_dict
from .fileio import atomic_write_bytes
from .nn.autoencoder import VQVAE
from .nn.prior import CONTINUE_RULE, ContextPrior, IntegerPrior, continues, iter_passes
from .nn.rdoq import rate_distortion_indices
from .training.data import held_out_positions, load_training_data
from .training.loop import learning_rate
from .weights_io import load_vqvae, prior_from_bytes, save_with_prior, sha256_of_file


@torch.no_grad()
def index_grids(vqvae: VQVAE, pool: list[torch.Tensor], mirror: bool, progress: bool,
                prior: IntegerPrior | None = None, rate_tradeoff: float = 0.0) -> list[torch.Tensor]:
    """(S, H/s, W/s) int16 index grids of every image (and its mirror image): nearest codes,
    or with a prior, the rate-aware encoder's choice at rate_tradeoff (what files will hold)."""
    cfg = vqvae.config
    grids = []
    for image in tqdm(pool, desc="index grids", disable=not progress, leave=False):
        x = image.unsqueeze(0).float().div(255)
        x = x[..., : x.shape[-2] // cfg.stride * cfg.stride, : x.shape[-1] // cfg.stride * cfg.stride]
        for version in ((x, x.flip(-1)) if mirror else (x,)):
            if prior is None:
                grid = vqvae.encode_indices(version, cfg.num_stages)[0]
            else:
                z = vqvae.encoder(version)
                grid = rate_distortion_indices(vqvae.quantizer, prior, z, cfg.num_stages, rate_tradeoff)[0]
            grids.append(grid.to(torch.int16))
    return grids


def grid_crops(grids: list[torch.Tensor], count: int, size: int, generator: torch.Generator,
               with_picks: bool = False):
    """count random size x size crops of random grids (and, with_picks, which grid each came from)."""
    crops = []
    picks = torch.randint(len(grids), (count,), generator=generator)
    for i in picks.tolist():
        grid = grids[i]
        _, h, w = grid.shape
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crops.append(grid[:, top:top + size, left:left + size])
    return (torch.stack(crops).long(), picks) if with_picks else torch.stack(crops).long()


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


def load_labels(data_dir: str | os.PathLike, held_out: int, spread: bool, mirror: bool
                ) -> tuple[list[int], list[int]]:
    """The classes of the training and held-out images of a .npz with a `labels` array (for a
    class-conditional prior), in the order of their grids (each twice with mirror)."""
    data_dir = Path(data_dir)
    if not (data_dir.is_file() and data_dir.suffix == ".npz"):
        raise ValueError(f"a class-conditional prior needs a .npz with a 'labels' array, not {data_dir}")
    with np.load(data_dir) as archive:
        if "labels" not in archive:
            raise ValueError(f"{data_dir} has no 'labels' array (a class-conditional prior needs one)")
        labels = archive["labels"].astype(np.int64).tolist()
    held = held_out_positions(len(labels), held_out, spread)
    rest = sorted(set(range(len(labels))) - set(held))
    train = [labels[i] for i in rest for _ in range(2 if mirror else 1)]
    return train, [labels[i] for i in held]


def read_prior_config_file(path: str | os.PathLike | None) -> tuple[dict, PriorTrainConfig]:
    """A JSON file {"prior": {...}, "train": {...}} -> (the prior fields it sets, train config).
    Missing train keys keep their defaults; see train_prior for the prior's."""
    if path is None:
        return {}, PriorTrainConfig()
    data = json.loads(Path(path).read_text())
    unknown = set(data) - {"prior", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected 'prior' and 'train')")
    prior = dict(data.get("prior", {}))
    prior_config_from_dict({**asdict(PriorConfig()), **prior})  # unknown fields fail here, early
    train = prior_train_config_from_dict({**asdict(PriorTrainConfig()), **data.get("train", {})})
    return prior, train


def train_prior(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                prior_fields: dict | None = None, train_config: PriorTrainConfig = PriorTrainConfig(),
                progress: bool = True) -> Path:
    """Train a context prior for the VQ-VAE in `weights`; write VQ-VAE + prior to `out`.

    prior_fields: PriorConfig fields to set; the rest keep their defaults, except
    num_stages and codebook_size, which default to the model's."""
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    checkpoint_path = out.with_suffix(".prior.ckpt")
    vqvae = load_vqvae(weights)
    model_cfg = vqvae.config
    prior_config = prior_config_from_dict({**asdict(PriorConfig()), "num_stages": model_cfg.num_stages,
                                           "codebook_size": model_cfg.codebook_size, **(prior_fields or {})})
    if (prior_config.num_stages, prior_config.codebook_size) != (model_cfg.num_stages, model_cfg.codebook_size):
        raise ValueError("the prior's stages and codebook size must match the model's")
    source_prior = None  # rate_tradeoff > 0: the prior to refine, which also quantizes the grids
    if cfg.rate_tradeoff > 0:
        source_prior = prior_from_bytes(Path(weights).read_bytes(), str(weights))
        if source_prior is None:
            raise ValueError(f"{weights} has no prior to refine (rate_tradeoff > 0 needs one)")
        if not continues(source_prior.config, prior_config):
            raise ValueError(f"the prior in {weights} cannot be continued as the one asked for ({CONTINUE_RULE})")
    cache_path = out.with_suffix(".grids.pt")
    cache_key = [sha256_of_file(weights), str(Path(data_dir).resolve()), cfg.held_out_images,
                 list(cfg.extra_scales), cfg.crop_size, cfg.mirror, cfg.rate_tradeoff]
    if cfg.held_out_spread:
        cache_key.append("spread")
    cache = torch.load(cache_path, weights_only=True) if cache_path.exists() else {}
    if cache.get("key") == cache_key:
        grids, held_grids, held_names = cache["grids"], cache["held_out"], cache["held_out_names"]
        sample_size = cache["sample_size"]
    else:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size * model_cfg.stride, model_cfg.stride,
                                                         cfg.held_out_spread)
        sizes = {tuple(image.shape[1:]) for image in pool}  # one size up to 256 (digits): sample that
        sample_size = list(min(sizes)) if len(sizes) == 1 and max(min(sizes)) <= 256 else [256, 256]
        grids = index_grids(vqvae, pool, cfg.mirror, progress, source_prior, cfg.rate_tradeoff)
        held_grids = index_grids(vqvae, held_pool, False, progress, source_prior, cfg.rate_tradeoff)
        buffer = io.BytesIO()
        torch.save({"key": cache_key, "grids": grids, "held_out": held_grids, "held_out_names": held_names,
                    "sample_size": sample_size}, buffer)
        atomic_write_bytes(cache_path, buffer.getvalue())

    labels = held_labels = None
    if prior_config.num_classes:
        labels, held_labels = load_labels(data_dir, cfg.held_out_images, cfg.held_out_spread, cfg.mirror)
        if max(labels + held_labels) >= prior_config.num_classes or min(labels + held_labels) < 0:
            raise ValueError(f"{data_dir}: labels must be 0..{prior_config.num_classes - 1}")
    prior = (ContextPrior(prior_config) if source_prior is None
             else ContextPrior.from_integer(source_prior, prior_config))
    record = fit_prior(prior, grids, held_grids, cfg, checkpoint_path, progress, labels, held_labels)
    record.update({"data": str(data_dir), "train_grids": len(grids), "held_out_images": held_names,
                   "sample_size": sample_size, "sample_temperature": cfg.sample_temperature})
    if prior_config.num_classes:
        record["sample_guidance"] = cfg.sample_guidance
    save_with_prior(weights, out, IntegerPrior(prior_config, prior.to_integer()), prior_config, record)
    return out


def fit_prior(prior: ContextPrior, grids: list[torch.Tensor], held_grids: list[torch.Tensor],
              cfg: PriorTrainConfig, checkpoint_path: Path, progress: bool = True,
              labels: list[int] | None = None, held_labels: list[int] | None = None) -> dict:
    """Train `prior` on random crops of `grids` (resuming from checkpoint_path if it exists, and
    checkpointing there); returns the record of the run for the weights' metadata.
    labels: each grid's class, for a class-conditional prior (shown with probability
    1 - cfg.class_dropout); held-out bits are then also measured given the class."""
    prior_config = prior.config
    optimizer = torch.optim.Adam(prior.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, log = 0, 0.0, []
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True)
        if state["prior_config"] != asdict(prior_config):
            raise ValueError(f"{checkpoint_path} was made with another prior config")
        prior.load_state_dict(state["prior"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, log = state["step"], state["elapsed"], json.loads(state["log"])

    def save_checkpoint() -> None:
        buffer = io.BytesIO()
        torch.save({"prior": prior.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "generator": generator.get_state(), "log": json.dumps(log),
                    "prior_config": asdict(prior_config)}, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())

    # Stage s is coded at quality levels s+1..S, so it weighs S - s in the mean over levels.
    stage_weights = torch.arange(prior_config.num_stages, 0, -1, dtype=torch.float)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True, desc="training prior")
    while step < cfg.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        batch, picks = grid_crops(grids, cfg.batch_size, cfg.crop_size, generator, with_picks=True)
        stage = torch.multinomial(stage_weights, cfg.batch_size, replacement=True, generator=generator)
        classes = None
        if labels is not None:
            dropped = torch.rand(cfg.batch_size, generator=generator) < cfg.class_dropout
            classes = torch.where(dropped, -1, torch.tensor(labels)[picks])
        loss = prior.loss_bits(batch, stage, generator, classes=classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(bits=f"{loss.item():.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            integer = IntegerPrior(prior_config, prior.to_integer())
            bits = held_out_bits(integer, held_grids)
            log.append({"step": step, "wall_seconds": round(elapsed, 1), "held_out_bits_per_stage": bits,
                        "held_out_bits_mean": round(sum(bits) / len(bits), 4)})
            if held_labels is not None:
                given = held_out_bits(integer, held_grids, held_labels)
                log[-1].update({"held_out_bits_per_stage_given_class": given,
                                "held_out_bits_mean_given_class": round(sum(given) / len(given), 4)})
            bar.write(json.dumps(log[-1]))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
    bar.close()
    return {"steps": step, "wall_seconds": round(elapsed, 1), "train_config": asdict(cfg), "log": log}
