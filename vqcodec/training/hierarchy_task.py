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
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save as save_safetensors

from ..config import HierarchyConfig
from ..fileio import atomic_write_bytes
from ..images import find_images
from ..nn.hierarchy import HierarchicalVQ


EVAL_SIDE = 512  # held-out photos are evaluated on their central EVAL_SIDE square, for speed


def split_by_name(folders: list[str | Path], held_out_per_folder: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): in every folder that holds images directly, the last
    held_out_per_folder files by name are held out (photos/047-049 with the default 3)."""
    train, held = [], []
    by_folder: dict[Path, list[Path]] = {}
    for path in find_images([str(f) for f in folders]):
        by_folder.setdefault(path.parent, []).append(path)
    for files in by_folder.values():
        files = sorted(files)
        cut = len(files) - held_out_per_folder
        train += files[:cut]
        held += files[cut:]
    return train, held


def load_pool(files: list[Path], scales: tuple[float, ...], min_side: int) -> list[torch.Tensor]:
    """Every image decoded once to a uint8 (3, H, W) tensor, plus downscaled copies."""
    pool = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            for scale in (1.0, *scales):
                size = (round(im.width * scale), round(im.height * scale))
                if min(size) >= min_side:
                    scaled = im if scale == 1.0 else im.resize(size, Image.LANCZOS)
                    pool.append(torch.from_numpy(np.asarray(scaled).copy()).permute(2, 0, 1).contiguous())
    return pool


def random_crops(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """count random size x size crops (random image, position, horizontal flip), floats in [0,1]."""
    crops = []
    for i in torch.randint(len(pool), (count,), generator=generator).tolist():
        _, h, w = pool[i].shape
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = pool[i][:, top:top + size, left:left + size]
        crops.append(crop.flip(2) if float(torch.rand(1, generator=generator)) < 0.5 else crop)
    return torch.stack(crops).float() / 255.0


def central_crop(image: torch.Tensor, multiple: int, side: int = EVAL_SIDE) -> torch.Tensor:
    """(1, 3, h, w) floats in [0,1]: the central side x side of a uint8 (3, H, W) image (or less),
    cut to a multiple of `multiple`: the held-out evaluation's view of a photo."""
    h = min(side, image.shape[1]) // multiple * multiple
    w = min(side, image.shape[2]) // multiple * multiple
    top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    return image[:, top:top + h, left:left + w].unsqueeze(0).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class HierarchyTask:
    def __init__(self, cfg: HierarchyConfig, folders: list[str], *, batch_size: int = 16, crop_size: int = 128,
                 held_out_per_folder: int = 3, extra_scales: tuple[float, ...] = (0.6,), name: str = "photo2"):
        self.cfg, self.name = cfg, name
        self.batch_size, self.crop_size = batch_size, crop_size
        train_files, held_files = split_by_name(folders, held_out_per_folder)
        self.pool = load_pool(train_files, extra_scales, crop_size)
        self.held_out = load_pool(held_files, (), cfg.stride)
        self.held_names = [f"{p.parent.name}/{p.name}" for p in held_files]
        self.model = HierarchicalVQ(cfg)
        self.lambdas = self.model.stage_lambdas()

    def batch_loss(self, step: int, generator: torch.Generator):
        images = random_crops(self.pool, self.batch_size, self.crop_size, generator)
        keep = torch.randint(1, self.model.num_stages + 1, (self.batch_size,), generator=generator)
        lambdas = self.lambdas[keep - 1]
        reconstruction, bits, vq = self.model(images, keep, lambdas)
        mse = (reconstruction.float() - images).pow(2).mean(dim=(1, 2, 3))
        bpp = bits / (images.shape[2] * images.shape[3])
        loss = (bpp + lambdas * mse * 255 ** 2 + vq).mean()
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
            x = central_crop(image, stride)
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
        tensors = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                   for k, v in self.model.state_dict().items()}
        metadata = {"format": "vqcodec-hierarchy", "name": self.name,
                    "hierarchy_config": json.dumps(asdict(self.cfg)),
                    "training": json.dumps({**record, "held_out_images": self.held_names})}
        atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def read_config(path: str | Path) -> tuple[HierarchyConfig, "LoopConfig", dict]:
    """A JSON file {"model": {...}, "loop": {...}, "data": {...}}; missing keys keep defaults."""
    from ..config import _tupleize
    from .loop import LoopConfig

    data = json.loads(Path(path).read_text())
    unknown = set(data) - {"model", "loop", "data"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    return (_tupleize(HierarchyConfig, data.get("model", {})), _tupleize(LoopConfig, data.get("loop", {})),
            data.get("data", {}))


def train(config_path: str | Path, folders: list[str], out: str | Path, progress: bool = True) -> dict:
    from .loop import run

    model_cfg, loop_cfg, data_cfg = read_config(config_path)
    torch.manual_seed(loop_cfg.seed)
    task = HierarchyTask(model_cfg, folders, **data_cfg)
    return run(task, loop_cfg, out, description="autoencoder (rate term)", progress=progress)


if __name__ == "__main__":
    import sys

    train(sys.argv[1], sys.argv[3:], sys.argv[2])
