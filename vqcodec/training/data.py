"""Training data, shared by every task: images decoded once, the held-out split, random crops,
cached derived data (index grids, base reconstructions), the config files' sections.

    folder of images / .npz ──split (held out: last by name, or spread)──> uint8 (3, H, W) pools
        │ random crops (+ flips) every step: crop_batch / random_crops
        v
    held-out images: as_batch (cut to the model's stride) or central_crop, psnr
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import from_dict
from ..fileio import atomic_write_bytes
from ..images import find_images

EVAL_SIDE = 512  # central_crop's default: held-out photos evaluated on their central square, for speed


def read_sections(path: str | os.PathLike | None, sections: dict[str, type]) -> dict:
    """A JSON config file {"section": {...}, ...} -> {section: dataclass} for each section named
    in `sections` (name -> dataclass, or dict for a section passed on as it is); missing sections
    and keys keep their defaults, unknown ones are errors. path None: every section's defaults."""
    return parse_sections(read_json_object(path) if path is not None else {}, sections, str(path))


def read_json_object(path: str | os.PathLike) -> dict:
    """A config file's JSON object; anything else is a ValueError naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of sections")
    return data


def parse_sections(data: dict, sections: dict[str, type], origin: str) -> dict:
    """read_sections for a dict already read (a config file's section, say), `origin` naming it."""
    unknown = set(data) - set(sections)
    if unknown:
        raise ValueError(f"{origin}: unknown sections {sorted(unknown)} "
                         f"(expected {' and '.join(repr(s) for s in sections)})")
    return {name: dict(data.get(name, {})) if cls is dict else from_dict(cls, data.get(name, {}))
            for name, cls in sections.items()}


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


def held_out_positions(count: int, held_out: int, spread: bool) -> list[int]:
    """Which of `count` images (in name or array order) are held out: the last `held_out`, or
    with spread, every (count // held_out)-th one (the last of each run of that length)."""
    if count <= held_out:
        raise ValueError(f"{count} images; need more than {held_out} held out")
    if not spread or held_out == 0:
        return list(range(count - held_out, count))
    step = count // held_out
    return [step - 1 + i * step for i in range(held_out)]


def load_pool(files: list[Path], scales: tuple[float, ...], min_side: int) -> list[torch.Tensor]:
    """Every image decoded once to a uint8 (3, H, W) tensor, plus downscaled copies (those at
    least min_side pixels on their shorter side)."""
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
    pools = []
    for chosen, chosen_scales, side in ((train_files, scales, min_side), (held_files, (), held_min_side)):
        pools.append(load_pool(chosen, chosen_scales, side))
        if chosen and not pools[-1]:
            raise ValueError(f"no image is at least {side} pixels on its shorter side")
    return pools[0], pools[1], [p.name for p in held_files]


def load_labels(data: str | os.PathLike, held_out: int, spread: bool, mirror: bool) -> tuple[list[int], list[int]]:
    """The classes of the training and held-out images of a .npz with a `labels` array (for a
    class-conditional prior), in the order of load_training_data's pools (each twice with mirror)."""
    data = Path(data)
    if not (data.is_file() and data.suffix == ".npz"):
        raise ValueError(f"a class-conditional prior needs a .npz with a 'labels' array, not {data}")
    with np.load(data) as archive:
        if "labels" not in archive:
            raise ValueError(f"{data} has no 'labels' array (a class-conditional prior needs one)")
        labels = archive["labels"].astype(np.int64).tolist()
    held = held_out_positions(len(labels), held_out, spread)
    rest = sorted(set(range(len(labels))) - set(held))
    return [labels[i] for i in rest for _ in range(2 if mirror else 1)], [labels[i] for i in held]


def crop_batch(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator, *,
               flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """count random size x size crops of random (C, H, W) tensors of `pool` (with flip, each
    mirrored with probability 1/2), stacked in the pool's dtype; and the pool index of each."""
    crops = []
    picks = torch.randint(len(pool), (count,), generator=generator)
    for i in picks.tolist():
        _, h, w = pool[i].shape
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = pool[i][:, top:top + size, left:left + size]
        if flip and float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(2)
        crops.append(crop)
    return torch.stack(crops), picks


def random_crops(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """count random size x size crops (random image, position, horizontal flip), floats in [0,1]
    on `device` (cut on the CPU, sent as uint8)."""
    return crop_batch(pool, count, size, generator)[0].to(device).float() / 255.0


def as_batch(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """(1, C, h, w) floats in [0,1]: a uint8 (C, H, W) image cut at the bottom and right to a
    multiple of `multiple`."""
    _, h, w = image.shape
    return image[:, : h // multiple * multiple, : w // multiple * multiple].unsqueeze(0).float() / 255


def central_crop(image: torch.Tensor, multiple: int, side: int = EVAL_SIDE) -> torch.Tensor:
    """(1, 3, h, w) floats in [0,1]: the central side x side of a uint8 (3, H, W) image (or less),
    cut to a multiple of `multiple`: the held-out evaluation's view of a photo."""
    h = min(side, image.shape[1]) // multiple * multiple
    w = min(side, image.shape[2]) // multiple * multiple
    top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    return image[:, top:top + h, left:left + w].unsqueeze(0).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of `a` (clamped to [0,1]) against `b`."""
    mse = F.mse_loss(a.float().clamp(0, 1), b.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def usage_statistics(counts: torch.Tensor) -> list[dict]:
    """Per stage, from (stages, K) counts of each code: the fraction of codes used, the entropy
    of the indices (bits per index, a memoryless coder's rate) and its perplexity (2 ** entropy)."""
    usage = []
    for stage_counts in counts:
        p = stage_counts.double() / stage_counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
        usage.append({"live_fraction": (stage_counts > 0).float().mean().item(),
                      "perplexity": 2 ** entropy, "entropy_bits": entropy})
    return usage


def cached(path: Path, key: list, compute: Callable[[], dict]) -> dict:
    """compute()'s tensors, kept in `path` and reused while `key` (what they derive from:
    weights hash, data, settings) is unchanged."""
    cache = torch.load(path, weights_only=True) if path.exists() else {}
    if cache.get("key") == key:
        return cache
    cache = {**compute(), "key": key}
    buffer = io.BytesIO()
    torch.save(cache, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return cache
