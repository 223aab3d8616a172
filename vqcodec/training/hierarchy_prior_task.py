"""Training phase: the integer context priors that code a hierarchical model's indices.

    photo crops ──HierarchicalVQ.encode_indices (ECVQ at lambda_n, n random)──> grids per level
        │   or with codec_grids: the codec's own encoder at a random quality level (its ladder,
        │   its per-image lambda, indices chosen under the warm-start priors): what files hold
        │ per level: ContextPrior over its stages (checkerboard passes), conditioned on the
        │ coarser levels' grids (PriorConfig.coarse_factors); one random stage per example
        v
    sum over levels of bits per pixel ──> Adam (the autoencoder stays frozen)

The float training entropy model of the autoencoder predicts from the decoder state, which is
not exactly reproducible across machines; these priors see only integers (indices), so the
decoder derives the encoder's probabilities bit for bit (Balle et al. 2019).
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save as save_safetensors

from ..config import HierarchyConfig, PriorConfig, from_dict
from ..fileio import atomic_write_bytes
from ..nn.hierarchy import HierarchicalVQ
from ..nn.prior import ContextPrior, IntegerPrior
from ..weights_io import level_priors
from .data import central_crop, crop_batch, load_pool, random_crops, read_sections, split_by_name
from .loop import LoopConfig, run, setup


def level_prior_configs(model_cfg: HierarchyConfig, base: PriorConfig, conditioned: bool = True) -> list[PriorConfig]:
    """One prior config per level: its stages, and the stride ratio of every coarser stage."""
    configs = []
    for level, (stride, stages) in enumerate(zip(model_cfg.level_strides, model_cfg.level_stages)):
        factors = tuple(coarse // stride for coarse, n in zip(model_cfg.level_strides[:level],
                                                               model_cfg.level_stages[:level]) for _ in range(n))
        configs.append(replace(base, num_stages=stages, codebook_size=model_cfg.codebook_size,
                               coarse_factors=factors if conditioned else ()))
    return configs


def read_level_priors(path: str | Path) -> tuple[list[IntegerPrior], dict]:
    """The level priors of this phase's weights file (HierarchyPriorTask.save_weights) and
    its metadata."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return level_priors(load_file(str(path)), json.loads(metadata["prior_configs"]), origin=str(path)), metadata


def load_hierarchy(path: str | Path) -> HierarchicalVQ:
    with safe_open(str(path), "pt") as f:
        cfg = from_dict(HierarchyConfig, json.loads(f.metadata()["hierarchy_config"]))
    model = HierarchicalVQ(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


class HierarchyPriorTask:
    def __init__(self, autoencoder: str | Path, folders: list[str], prior: PriorConfig, *, conditioned: bool = True,
                 batch_size: int = 8, crop_size: int = 256, held_out_per_folder: int = 3,
                 extra_scales: tuple[float, ...] = (0.6,), device: torch.device | str = "cpu",
                 warm_start: str | Path | None = None, codec_grids: bool = False,
                 encoder_settings: dict | None = None):
        """warm_start: a weights file of this phase (another autoencoder's level priors, for the
        same first levels and codebook sizes) whose priors these continue (ContextPrior.from_integer):
        an autoencoder trained on from the one they were made for keeps most of its index
        statistics, so they start near their optimum. Levels it lacks (an autoencoder that
        added a level) start fresh.
        codec_grids: train on the grids the codec writes (codec.hierarchy_grids) with this
        autoencoder, the warm-start priors and encoder_settings (HierarchyConfig.ENCODER_SETTINGS,
        the quality ladder among them) instead of the training ECVQ's: a refit of priors that
        never saw the codec's own index choice (its ladder's lambdas, its per-image lambda)."""
        self.device = torch.device(device)
        self.autoencoder = load_hierarchy(autoencoder).to(self.device)
        for p in self.autoencoder.parameters():
            p.requires_grad_(False)
        cfg = self.autoencoder.config
        self.lambdas = self.autoencoder.stage_lambdas()
        self.configs = level_prior_configs(cfg, prior, conditioned)
        if warm_start is None:
            self.model = torch.nn.ModuleList(ContextPrior(c) for c in self.configs)
        else:
            source, _ = read_level_priors(warm_start)
            if len(source) > len(self.configs):
                raise ValueError(f"{warm_start} has {len(source)} level priors, this model {len(self.configs)} levels")
            self.model = torch.nn.ModuleList(ContextPrior.from_integer(p, c) for p, c in zip(source, self.configs))
            self.model.extend(ContextPrior(c) for c in self.configs[len(source):])
        self.model.to(self.device)
        self.batch_size, self.crop_size = batch_size, crop_size
        train_files, held_files = split_by_name(folders, held_out_per_folder)
        self.pool = load_pool(train_files, extra_scales, crop_size)
        self.held_out = load_pool(held_files, (), cfg.stride)
        self.source = str(autoencoder)
        self.codec = None  # (HierarchicalVQ with the encoder settings, its level priors) with codec_grids
        if codec_grids:
            if warm_start is None or not (cfg.quality_ladder or (encoder_settings or {}).get("quality_ladder")):
                raise ValueError("codec_grids needs warm-start priors and a quality ladder (encoder_settings)")
            codec_model = load_hierarchy(autoencoder)
            codec_model.config = codec_model.config.with_encoder_settings(**(encoder_settings or {}))
            self.codec = (codec_model, read_level_priors(warm_start)[0])

    def _levels(self, grids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Split the stage list into (B, S_l, h, w) per level (levels beyond the prefix: absent)."""
        out, start = [], 0
        for stages in self.autoencoder.config.level_stages:
            part = grids[start:start + stages]
            if part:
                out.append(torch.stack(part, dim=1))
            start += stages
        return out

    def _bits_per_pixel(self, grids: list[torch.Tensor], pixels: int, stage_of, generator) -> tuple[torch.Tensor, list]:
        levels = self._levels(grids)
        flat = [g for level in levels for g in level.unbind(1)]
        total, parts, offset = 0.0, [], 0
        for prior, indices in zip(self.model, levels):
            coarse = flat[:offset] if prior.config.coarse_factors else None
            b, s, h, w = indices.shape
            stage = stage_of(b, s).to(indices.device)
            bits = prior.loss_bits(indices, stage, generator, coarse) * h * w * s / pixels
            total = total + bits
            parts.append(bits)
            offset += s
        return total, parts

    def batch_loss(self, step: int, generator: torch.Generator):
        if self.codec is not None:
            images, _ = crop_batch(self.pool, self.batch_size, self.crop_size, generator)
            quality = 1 + int(torch.randint(self.codec[0].config.quality_levels().count, (1,), generator=generator))
            grids = self._codec_grids(images, quality)
        else:
            images = random_crops(self.pool, self.batch_size, self.crop_size, generator, self.device)
            n = int(torch.randint(1, self.autoencoder.num_stages + 1, (1,), generator=generator))
            with torch.no_grad():
                grids, _ = self.autoencoder.encode_indices(images, n, float(self.lambdas[n - 1]))
        bpp, _ = self._bits_per_pixel(grids, self.crop_size ** 2,
                                      lambda b, s: torch.randint(s, (b,), generator=generator), generator)
        return bpp, {"bpp": float(bpp.detach())}

    def _codec_grids(self, images: torch.Tensor, quality: int) -> list[torch.Tensor]:
        """The codec's grids (B, h, w) per stage of uint8 images (B, 3, H, W) at `quality`."""
        from .. import codec

        model, priors = self.codec
        with torch.autocast(self.device.type, enabled=False):  # the codec's own precision, whatever the loop's
            per_image = [codec.hierarchy_grids(model, priors, image.permute(1, 2, 0).numpy(), quality)
                         for image in images]
        return [torch.from_numpy(np.stack(stage)).long().to(self.device) for stage in zip(*per_image)]

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per prefix n on the held-out photos (central EVAL_SIDE square): bpp under these
        priors (the integer model's code length, up to the frequency table's rounding) and
        under the autoencoder's float training entropy model; with codec_grids, per quality
        level, the bpp of the codec's grids under these priors."""
        if self.codec is not None:
            levels = self.codec[0].config.quality_levels().count
            codec_bpp = np.zeros(levels)
            for image in self.held_out:
                x = (central_crop(image, self.autoencoder.config.stride) * 255).round().byte()
                for quality in range(1, levels + 1):
                    grids = self._codec_grids(x, quality)
                    bits = sum(float(self._stage_bits(grids, s)) for s in range(len(grids)))
                    codec_bpp[quality - 1] += bits / (x.shape[2] * x.shape[3]) / len(self.held_out)
            return {"codec_bpp": [round(float(v), 4) for v in codec_bpp]}
        n_stages = self.autoencoder.num_stages
        prior_bpp, float_bpp = np.zeros(n_stages), np.zeros(n_stages)
        stride = self.autoencoder.config.stride
        for image in self.held_out:
            x = central_crop(image, stride).to(self.device)
            h, w = x.shape[2:]
            for n in range(1, n_stages + 1):
                grids, bits = self.autoencoder.encode_indices(x, n, float(self.lambdas[n - 1]))
                total = 0.0
                for s_all in range(n):  # every stage of the prefix, all its passes
                    total += float(self._stage_bits(grids, s_all))
                prior_bpp[n - 1] += total / (h * w) / len(self.held_out)
                float_bpp[n - 1] += bits.item() / (h * w) / len(self.held_out)
        return {"prior_bpp": [round(float(v), 4) for v in prior_bpp],
                "float_model_bpp": [round(float(v), 4) for v in float_bpp]}

    def _stage_bits(self, grids: list[torch.Tensor], global_stage: int) -> torch.Tensor:
        """Total bits of one stage of the prefix `grids` under its level's prior."""
        start = 0
        for level, stages in enumerate(self.autoencoder.config.level_stages):
            if global_stage < start + stages:
                prior = self.model[level]
                indices = torch.stack(grids[start:start + stages] if len(grids) >= start + stages
                                      else grids[start:] + [grids[start]] * (start + stages - len(grids)), dim=1)
                coarse = grids[:start] if prior.config.coarse_factors else None
                stage = torch.tensor([global_stage - start], device=indices.device)
                _, _, h, w = indices.shape
                return prior.loss_bits(indices, stage, None, coarse) * h * w
            start += stages
        raise IndexError(global_stage)

    def save_weights(self, path: Path, record: dict) -> None:
        tensors = {}
        for level, prior in enumerate(self.model):
            tensors.update({f"prior{level}.{k}": v.cpu() for k, v in prior.to_integer().items()})
        metadata = {"format": "vqcodec-hierarchy-priors", "autoencoder": self.source,
                    "prior_configs": json.dumps([asdict(c) for c in self.configs]), "training": json.dumps(record)}
        atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def train(autoencoder: str, config_path: str, folders: list[str], out: str, progress: bool = True,
          device: str = "cpu", warm_start: str | None = None) -> dict:
    cfg = read_sections(config_path, {"prior": PriorConfig, "loop": LoopConfig, "data": dict})
    setup(cfg["loop"])
    task = HierarchyPriorTask(autoencoder, folders, cfg["prior"], device=device, warm_start=warm_start, **cfg["data"])
    return run(task, cfg["loop"], out, description="priors", progress=progress)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="train a hierarchical autoencoder's level priors alone (one phase)")
    parser.add_argument("autoencoder", help="the autoencoder phase's weights file")
    parser.add_argument("config", help='JSON {"prior": ..., "loop": ..., "data": ...}')
    parser.add_argument("out", help="run folder: checkpoint, weights, log")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--warm-start", help="a weights file of this phase whose priors to continue")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    train(args.autoencoder, args.config, args.folders, args.out, device=args.device, warm_start=args.warm_start)
