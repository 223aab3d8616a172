"""Rate-distortion on the held-out training photos, for design choices (never Kodak).

The held-out set is the one every training phase uses: the last 3 files by name of every
image folder under the data paths (photos/047-049, and 3 each of photos2/cid22 and cq100),
each cut to its central 512 x 512 (multiple of 16) for speed. Prints bpp / PSNR per level for

  * the shipped codec (real .vqz files through vqcodec.encode / decode; kept in --baseline-cache
    with the classic codecs' points: delete it after a change to the codec), and with `--model NAME`
    any installed model the same way, measured afresh (`--color-correction both`: with the
    encoder's default colour correction and without),
  * WebP, AVIF and JPEG (Pillow, as `vqcodec bench` runs them),
  * optionally a hierarchical model in training (`--hierarchy weights.safetensors`): PSNR of the
    decoded pixels, and bpp as the code length under its float training entropy model
    (`--priors priors.safetensors` adds the integer priors' code length, what files will spend),

and the BD-rate of each against WebP.

    python benchmarks/heldout_rd.py --data ../shared/data/photos ../shared/data/photos2 \
        [--hierarchy runs/x/autoencoder/weights.safetensors] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqcodec import bench, codec, metrics
from vqcodec.training.data import EVAL_SIDE, central_crop, load_pool, split_by_name


def crops(folders, side=EVAL_SIDE, multiple=16):
    _, held = split_by_name(folders, 3)
    out = []
    for image in load_pool(held, (), multiple):
        out.append((central_crop(image, multiple, side)[0] * 255).round().byte().permute(1, 2, 0).numpy().copy())
    return [p.parent.name + "/" + p.name for p in held], out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def mean_points(per_image):
    return [(float(np.mean([p[i][0] for p in per_image])), float(np.mean([p[i][1] for p in per_image])))
            for i in range(len(per_image[0]))]


def classic(images, name):
    per = []
    for rgb in images:
        pts = []
        for q in bench.DEFAULT_QUALITIES[name]:
            data = bench.classic_encode(rgb, name, q)
            pts.append((len(data) * 8 / (rgb.shape[0] * rgb.shape[1]), psnr(bench.classic_decode(data), rgb)))
        per.append(pts)
    return mean_points(per)


def real_files(images, model=None, color_correction=None):
    """Mean (bpp, PSNR) per quality level of an installed model's .vqz files (None: the default
    model; color_correction: as codec.encode_image's)."""
    from vqcodec import zoo

    levels = zoo.find(model).info()["quality_levels"]
    return mean_points([[file_point(rgb, q, model, color_correction=color_correction) for q in levels]
                        for rgb in images])


def file_point(rgb, quality, model=None, rate_tradeoff=None, color_correction=None):
    """(bpp, PSNR) of one image's real .vqz file at a quality level."""
    data = codec.encode_image(Image.fromarray(rgb), quality, model=model, rate_tradeoff=rate_tradeoff,
                              color_correction=color_correction).data
    out = np.asarray(codec.decode(data).convert("RGB"))
    return len(data) * 8 / (rgb.shape[0] * rgb.shape[1]), psnr(out, rgb)


@torch.no_grad()
def hierarchy(images, weights, priors=None, lambda_scale=1.0):
    from vqcodec.training.hierarchy_prior_task import HierarchyPriorTask, load_hierarchy

    model = load_hierarchy(weights)
    lambdas = model.stage_lambdas()
    per, per_prior = [], []
    prior_task = None
    if priors:
        from vqcodec.nn.prior import ContextPrior
        from vqcodec.training.hierarchy_prior_task import read_level_priors

        prior_task = HierarchyPriorTask.__new__(HierarchyPriorTask)
        prior_task.autoencoder = model
        prior_task.model = torch.nn.ModuleList(ContextPrior.from_integer(p) for p in read_level_priors(priors)[0])
    for rgb in images:
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255
        pixels = rgb.shape[0] * rgb.shape[1]
        pts, pts_prior = [], []
        for n in range(1, model.num_stages + 1):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                grids, bits = model.encode_indices(x, n, float(lambdas[n - 1]) * lambda_scale)
                y = model.decode_indices(grids).float()
            out = (y.clamp(0, 1) * 255).round().squeeze(0).permute(1, 2, 0).numpy().astype(np.uint8)
            quality = psnr(out, rgb)
            pts.append((bits.item() / pixels, quality))
            if prior_task is not None:
                total = sum(float(prior_task._stage_bits(grids, s)) for s in range(n))
                pts_prior.append((total / pixels, quality))
        per.append(pts)
        per_prior.append(pts_prior)
    result = {"hierarchy (float entropy model)": mean_points(per)}
    if prior_task is not None:
        result["hierarchy (integer priors)"] = mean_points(per_prior)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--hierarchy")
    parser.add_argument("--priors")
    parser.add_argument("--lambda-scale", type=float, default=1.0,
                        help="--hierarchy: ECVQ at this multiple of each level's training lambda")
    parser.add_argument("--baseline-cache", default="runs/heldout_baseline.json",
                        help="JSON of the shipped codec's and the classic codecs' points (made if absent)")
    parser.add_argument("--model", action="append", default=[],
                        help="also an installed model's real files at every quality level (repeatable)")
    parser.add_argument("--color-correction", choices=("default", "on", "off", "both"), default="default",
                        help="--model: the encoder's colour correction as by default, at every level, at none, "
                             "or a curve each for the default and none")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names, images = crops(args.data)
    cache = Path(args.baseline_cache)
    if cache.exists():
        curves = json.loads(cache.read_text())
    else:
        curves = {"webp": classic(images, "webp"), "jpeg": classic(images, "jpeg")}
        if bench.avif_available():
            curves["avif"] = classic(images, "avif")
        curves["vqcodec (shipped)"] = real_files(images)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(curves))
    settings = {"default": [None], "on": [True], "off": [False], "both": [None, False]}[args.color_correction]
    for name in args.model:
        for setting in settings:
            label = {None: "", True: " --color-correction", False: " --no-color-correction"}[setting]
            curves[f"vqcodec --model {name}{label}"] = real_files(images, model=name, color_correction=setting)
    if args.hierarchy:
        curves.update(hierarchy(images, args.hierarchy, args.priors, args.lambda_scale))
    print(f"held-out: {len(images)} crops: {', '.join(names)}")
    for label, pts in curves.items():
        bd = metrics.bd_rate(curves["webp"], pts)
        bd_text = "n/a" if bd is None else f"{bd:+.1f}%"
        print(f"{label:34s} BD-rate vs WebP {bd_text:>8s}  " + "  ".join(f"{b:.3f}/{p:.2f}" for b, p in pts))
    if args.json:
        Path(args.json).write_text(json.dumps({"held_out": names, "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
