"""Training phase: the hierarchical ECVQ autoencoder with its rate term (vqcodec.nn.hierarchy).

    folders of photos ──decode once──> uint8 pool (+ downscaled copies); held out by name
        │ random crops, every step; each crop keeps a random prefix n of the stage ladder
        v
    HierarchicalVQ(crops, n, lambda_n) ──> bpp_n + lambda_n * MSE(0-255) + VQ terms
        │ evaluate: per prefix n, ECVQ at lambda_n on the held-out photos:
        v   bits under the training entropy model, PSNR of the decoded pixels
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save as save_safetensors

from ..config import HierarchyConfig
from ..fileio import atomic_write_bytes
from ..nn.hierarchy import ECVQStage, HierarchicalVQ
from ..weights_io import HIERARCHY_PREFIX, load_vqvae
from .data import central_crop, load_pool, psnr, random_crops, read_sections, split_by_name
from .loop import LoopConfig, run, setup


def rate_distortion_loss(bpp: torch.Tensor, mse: torch.Tensor, vq: torch.Tensor, lambdas: torch.Tensor,
                         ladder: torch.Tensor, balance: float = 0.0) -> torch.Tensor:
    """Mean over the batch of bpp + lambda * MSE (0-255 scale) + VQ terms, each example at its
    prefix's lambda. ladder: every prefix's lambda; balance p (HierarchyConfig.balance_prefixes):
    each example's loss is multiplied by (the ladder's geometric mean / its lambda)^p, so that at
    p = 1 a unit of MSE weighs alike in every prefix."""
    per_example = bpp + lambdas * mse * 255 ** 2 + vq
    return (per_example * (ladder.log().mean().exp() / lambdas) ** float(balance)).mean()


class HierarchyTask:
    def __init__(self, cfg: HierarchyConfig, folders: list[str], *, batch_size: int = 16, crop_size: int = 128,
                 held_out_per_folder: int = 3, extra_scales: tuple[float, ...] = (0.6,), name: str = "photo2",
                 warm_start: str | Path | None = None, device: torch.device | str = "cpu"):
        self.cfg, self.name, self.device = cfg, name, torch.device(device)
        self.batch_size, self.crop_size = batch_size, crop_size
        train_files, held_files = split_by_name(folders, held_out_per_folder)
        self.pool = load_pool(train_files, extra_scales, crop_size)
        self.held_out = load_pool(held_files, (), cfg.stride)
        self.held_names = [f"{p.parent.name}/{p.name}" for p in held_files]
        self.model = HierarchicalVQ(cfg)
        if warm_start is not None:
            self.warm_start(warm_start)
        self.model.to(self.device)
        self.lambdas = self.model.stage_lambdas().to(self.device)

    def warm_start(self, path: str | Path) -> None:
        """Start from the tensors of another hierarchical model's weights file: every tensor
        of the same name and shape. The spatial-context convolutions it lacks start at zero,
        and so do the outputs of a level whose quantization it lacks or shapes otherwise (its
        codebooks restart by k-means), the stride-4 residual blocks it lacks start as
        identities, and a fine synthesis it lacks as a copy of its synthesis, so the model
        starts decoding as that one did; the other transforms must
        match. A VQ-VAE's weights file (today's models) becomes the stride-8
        level instead (HierarchicalVQ.load_vqvae). Files of either kind may be training outputs
        or installable weights files (which keep no codebook EMA statistics: those restart
        from a count of one per code)."""
        source = load_file(str(path))
        if "encoder.net.0.weight" in source:
            self.model.load_vqvae(load_vqvae(path))
            return
        installable = {k[len(HIERARCHY_PREFIX):]: v for k, v in source.items() if k.startswith(HIERARCHY_PREFIX)}
        if installable:
            source = installable
            for name in [k for k in source if k.endswith(".codebook")]:
                stem = name[:-len("codebook")]
                buffers = ECVQStage.state_from_codebook(source[name], torch.ones(source[name].shape[0]))
                for key, value in buffers.items():
                    source.setdefault(stem + key, value)
        own = self.model.state_dict()
        for key in own:  # a fine synthesis it lacks (config.fine_synthesis) starts as a copy of the shared one
            if key.startswith("fine.") and key not in source and key[len("fine."):] in source:
                source[key] = source[key[len("fine."):]]
        matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in matched and ".context." not in k]
        fresh_levels = {self.model.quantizer_level(k) for k in missing} - {None}
        unfit = [k for k in missing if self.model.quantizer_level(k) is None and not self.model.starts_as_identity(k)]
        if unfit:
            raise ValueError(f"{path} does not fit this model: {unfit[:4]}")
        self.model.load_state_dict({**own, **matched})
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if ".context." in name:
                    param.zero_()
            for level in fresh_levels:
                self.model.silence_level(level)
                for k, stage in enumerate(self.model.levels[level]):
                    if f"levels.{level}.{k}.codebook" not in matched:
                        stage.initialized.fill_(False)  # k-means on the first batch

    def batch_loss(self, step: int, generator: torch.Generator):
        images = random_crops(self.pool, self.batch_size, self.crop_size, generator, self.device)
        keep = torch.randint(1, self.model.num_stages + 1, (self.batch_size,), generator=generator).to(self.device)
        lambdas = self.lambdas[keep - 1]
        reconstruction, bits, vq = self.model(images, keep, lambdas)
        mse = (reconstruction.float() - images).pow(2).mean(dim=(1, 2, 3))
        bpp = bits / (images.shape[2] * images.shape[3])
        loss = rate_distortion_loss(bpp, mse, vq, lambdas, self.lambdas, self.cfg.balance_prefixes)
        return loss, {"loss": loss.item(), "bpp": bpp.mean().item(),
                      "psnr": 10 * math.log10(1 / max(mse.mean().item(), 1e-12))}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per prefix n: mean estimated bpp (training entropy model) and PSNR (pixels rounded
        to 8 bits) on the held-out photos (their central EVAL_SIDE x EVAL_SIDE, for speed),
        indices chosen by ECVQ at lambda_n."""
        n_stages = self.model.num_stages
        bpp, db = np.zeros(n_stages), np.zeros(n_stages)
        used = [set() for _ in range(n_stages)]
        stride = self.cfg.stride
        for image in self.held_out:
            x = central_crop(image, stride).to(self.device)
            h, w = x.shape[2:]
            for n in range(1, n_stages + 1):
                grids, bits = self.model.encode_indices(x, n, float(self.lambdas[n - 1]))
                y = self.model.decode_indices(grids).float().clamp(0, 1).mul(255).round().div(255)
                bpp[n - 1] += bits.item() / (h * w) / len(self.held_out)
                if n == n_stages:
                    for stage, grid in enumerate(grids):
                        used[stage].update(grid.unique().tolist())
                db[n - 1] += psnr(y, x) / len(self.held_out)
        return {"bpp": [round(float(v), 4) for v in bpp], "psnr": [round(float(v), 2) for v in db],
                "codes_used": [len(u) for u in used]}

    def save_weights(self, path: Path, record: dict) -> None:
        tensors = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.cpu().contiguous()
                   for k, v in self.model.state_dict().items()}
        metadata = {"format": "vqcodec-hierarchy", "name": self.name,
                    "hierarchy_config": json.dumps(asdict(self.cfg)),
                    "training": json.dumps({**record, "held_out_images": self.held_names})}
        atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def read_config(path: str | Path) -> tuple[HierarchyConfig, LoopConfig, dict]:
    """A JSON file {"model": {...}, "loop": {...}, "data": {...}}; missing keys keep defaults."""
    sections = read_sections(path, {"model": HierarchyConfig, "loop": LoopConfig, "data": dict})
    return sections["model"], sections["loop"], sections["data"]


def train(config_path: str | Path, folders: list[str], out: str | Path, progress: bool = True,
          warm_start: str | None = None, device: str = "cpu") -> dict:
    model_cfg, loop_cfg, data_cfg = read_config(config_path)
    setup(loop_cfg)
    task = HierarchyTask(model_cfg, folders, warm_start=warm_start, device=device, **data_cfg)
    return run(task, loop_cfg, out, description="autoencoder (rate term)", progress=progress)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="train the hierarchical autoencoder alone (one phase)")
    parser.add_argument("config")
    parser.add_argument("out", help="run folder: checkpoint, weights, log")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--warm-start", help="weights file of a hierarchical model, or of a VQ-VAE, to start from")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    train(args.config, args.folders, args.out, warm_start=args.warm_start, device=args.device)
