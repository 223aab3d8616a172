"""`vqcodec train-prior`: a context prior over a trained VQ-VAE's index grids, the prior task
(training.prior_task) run by the one loop (training.loop).

    folder of images ──VQVAE.encode_indices (all stages; full size, 0.6x, mirrored)──> index grids
        │ (cached in <out>.grids.pt while the VQ-VAE weights and data are unchanged)
        v
    training.prior_task.PriorTask ──> <out>.safetensors = the VQ-VAE's tensors + the integer
                                      prior ("prior.*"), one hash for both

Next to <out>: <out>.prior.ckpt (the loop's checkpoint; a rerun resumes from it) and
<out>.prior.log.jsonl (every evaluation; also in the weights' "prior_training" record).

With rate_tradeoff > 0 the grids are those the rate-aware encoder (nn/rdoq.py) makes with the
prior already in the weights, and training continues from that prior: one round of the
entropy-constrained VQ design loop (Chou, Lookabaugh and Gray 1989), so that the prior learns
the indices files will actually hold.

The held-out images are the same as the VQ-VAE's (the last ones by name, or spread).
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import PriorConfig, PriorTrainConfig, from_dict
from .nn.prior import CONTINUE_RULE, ContextPrior, continues
from .training.data import cached, load_labels, load_training_data, parse_sections, read_sections
from .training.loop import LoopConfig, RunFiles, run, setup
from .training.prior_task import LOOP_SETTINGS, PriorTask, index_grids, prior_config_for
from .weights_io import load_vqvae, prior_from_bytes, sha256_of_file

__all__ = ["read_prior_config_file", "train_prior"]


SECTIONS = {"prior": dict, "train": PriorTrainConfig}


def read_prior_config_file(path: str | os.PathLike | None) -> tuple[dict, PriorTrainConfig]:
    """A JSON file {"prior": {...}, "train": {...}} -> (the prior fields it sets, train config).
    Missing train keys keep their defaults; see train_prior for the prior's."""
    return _checked(read_sections(path, SECTIONS))


def prior_config_from_section(section: dict, origin: str) -> tuple[dict, PriorTrainConfig]:
    """read_prior_config_file for the same dict held elsewhere (the "prior" section of a
    `vqcodec train` config), `origin` naming it in errors."""
    if not isinstance(section, dict):
        raise ValueError(f"{origin} must be a JSON object {{\"prior\": {{...}}, \"train\": {{...}}}}")
    return _checked(parse_sections(section, SECTIONS, origin))


def _checked(sections: dict) -> tuple[dict, PriorTrainConfig]:
    from_dict(PriorConfig, sections["prior"])  # unknown fields fail here, early
    return sections["prior"], sections["train"]


def run_files(out: str | os.PathLike, work: str | os.PathLike | None = None) -> RunFiles:
    """The prior run's files: <out>.prior.ckpt and <out>.prior.log.jsonl, or prior.ckpt and
    prior.log.jsonl in `work`; the weights, `out`, written once, at the end."""
    if work is None:
        return RunFiles.beside(out, "prior.", weights_at_checkpoints=False)
    return RunFiles(Path(work) / "prior.ckpt", Path(work) / "prior.log.jsonl", Path(out), weights_at_checkpoints=False)


def train_prior(weights: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                prior_fields: dict | None = None, train_config: PriorTrainConfig = PriorTrainConfig(),
                progress: bool = True, work: str | os.PathLike | None = None,
                description: str = "training prior") -> Path:
    """Train a context prior for the VQ-VAE in `weights`; write VQ-VAE + prior to `out`.

    prior_fields: PriorConfig fields to set; the rest keep their defaults, except
    num_stages and codebook_size, which default to the model's.
    work: a folder for the checkpoint, log and grid cache (prior.ckpt, prior.log.jsonl,
    prior.grids.pt); default: next to `out` (<out>.prior.ckpt, <out>.prior.log.jsonl, <out>.grids.pt).
    description: the progress bar's label."""
    cfg = train_config
    loop_cfg = LoopConfig.of(cfg, **LOOP_SETTINGS)
    setup(loop_cfg)
    out = Path(out)
    vqvae = load_vqvae(weights)
    model_cfg = vqvae.config
    prior_config = prior_config_for(prior_fields, model_cfg.num_stages, model_cfg.codebook_size, "the model's")
    source_prior = None  # rate_tradeoff > 0: the prior to refine, which also quantizes the grids
    if cfg.rate_tradeoff > 0:
        source_prior = prior_from_bytes(Path(weights).read_bytes(), str(weights))
        if source_prior is None:
            raise ValueError(f"{weights} has no prior to refine (rate_tradeoff > 0 needs one)")
        if not continues(source_prior.config, prior_config):
            raise ValueError(f"the prior in {weights} cannot be continued as the one asked for ({CONTINUE_RULE})")

    def make_grids() -> dict:
        pool, held_pool, held_names = load_training_data(data_dir, cfg.held_out_images, cfg.extra_scales,
                                                         cfg.crop_size * model_cfg.stride, model_cfg.stride,
                                                         cfg.held_out_spread)
        sizes = {tuple(image.shape[1:]) for image in pool}  # one size up to 256 (digits): sample that
        return {"grids": index_grids(vqvae, pool, cfg.mirror, progress, source_prior, cfg.rate_tradeoff),
                "held_out": index_grids(vqvae, held_pool, False, progress, source_prior, cfg.rate_tradeoff),
                "held_out_names": held_names,
                "sample_size": list(min(sizes)) if len(sizes) == 1 and max(min(sizes)) <= 256 else [256, 256]}

    key = [sha256_of_file(weights), str(Path(data_dir).resolve()), cfg.held_out_images, list(cfg.extra_scales),
           cfg.crop_size, cfg.mirror, cfg.rate_tradeoff] + (["spread"] if cfg.held_out_spread else [])
    files = run_files(out, work)
    data = cached(out.with_suffix(".grids.pt") if work is None else Path(work) / "prior.grids.pt", key, make_grids)
    labels = held_labels = None
    if prior_config.num_classes:
        labels, held_labels = load_labels(data_dir, cfg.held_out_images, cfg.held_out_spread, cfg.mirror)
        if max(labels + held_labels) >= prior_config.num_classes or min(labels + held_labels) < 0:
            raise ValueError(f"{data_dir}: labels must be 0..{prior_config.num_classes - 1}")
    prior = (ContextPrior(prior_config) if source_prior is None
             else ContextPrior.from_integer(source_prior, prior_config))
    record = {"data": str(data_dir), "held_out_images": data["held_out_names"], "sample_size": data["sample_size"],
              "sample_temperature": cfg.sample_temperature}
    if prior_config.num_classes:
        record["sample_guidance"] = cfg.sample_guidance
    task = PriorTask(prior, cfg, data["grids"], data["held_out"], source=weights, labels=labels,
                     held_labels=held_labels, record=record)
    run(task, loop_cfg, files, description=description, progress=progress)
    return out
