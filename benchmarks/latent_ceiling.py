"""What caps a hierarchical model's quality: its quantizer or its transforms.

On the held-out crops of benchmarks/heldout_rd.py (never Kodak), PSNR of the decoded pixels

  * at every prefix of the stage ladder (ECVQ at the prefix's training lambda),
  * with the finest level's latent unquantized, its coarser levels quantized in full,
  * with every level's latent unquantized,

for a model whose levels share one latent each (config.shared_latent_strides covering every
level). This is what the trained transforms make of exact latents; they adapted to the
quantizer, so a low figure here does not cap the architecture: benchmarks/continuous_ceiling.py
trains the same transforms for exact latents (session 11: 31.9 dB here, 35.5 dB there after 600
steps), which bounds what the architecture can reach.

    python benchmarks/latent_ceiling.py runs/x/autoencoder/weights.safetensors --data DIR...
"""
from __future__ import annotations

import argparse
import math

import torch

from heldout_rd import crops
from vqcodec.training.hierarchy_prior_task import load_hierarchy


def psnr(y: torch.Tensor, x: torch.Tensor) -> float:
    y = y.clamp(0, 1).mul(255).round().div(255)
    return 10 * math.log10(1 / float((y - x).pow(2).mean()))


def decode_latents(model, features, latents: list) -> torch.Tensor:
    """Pixels when level l's code sum is latents[l] (None: the level's exact latent)."""
    strides = model.config.level_strides
    state, previous = torch.zeros_like(features[strides[0]]), strides[0]
    for level, stride in enumerate(strides):
        state, previous = model._descend(state, previous, stride), stride
        key = model.latent_keys[level]
        codes = latents[level] if latents[level] is not None else model.latent_in[key](features[stride] - state)
        state = state + model.latent_out[key](codes)
    keep = torch.full((state.shape[0],), model.num_stages)  # the whole ladder, for a prefix-conditioned synthesis
    return model.synthesize(model._descend(state, strides[-1]), keep)


@torch.no_grad()
def quantized_latents(model, x: torch.Tensor, levels: int) -> list:
    """The code sums of the first `levels` levels, every stage kept (ECVQ at the full prefix's lambda)."""
    stages = model.config.level_stages
    n = sum(stages[:levels])
    grids, _ = model.encode_indices(x, n, float(model.stage_lambdas()[n - 1]))
    sums, start = [], 0
    for level in range(levels):
        codes = [model.levels[level][k].lookup(grids[start + k]) for k in range(stages[level])]
        sums.append(torch.stack(codes).sum(0))
        start += stages[level]
    return sums


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="a hierarchical autoencoder's training weights file")
    parser.add_argument("--data", nargs="+", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_hierarchy(args.weights)
    cfg = model.config
    if None in model.latent_keys:
        raise SystemExit("every level must share one latent (config.shared_latent_strides)")
    _, images = crops(args.data)
    levels = len(cfg.level_strides)
    totals = {}
    for rgb in images:
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None]
        with torch.no_grad():
            features = model.analyze(x)
        with torch.no_grad():
            results = {"finest level unquantized": decode_latents(model, features,
                                                                  quantized_latents(model, x, levels - 1) + [None]),
                       "every level unquantized": decode_latents(model, features, [None] * levels)}
        for n in range(1, model.num_stages + 1):
            grids, _ = model.encode_indices(x, n, float(model.stage_lambdas()[n - 1]))
            results[f"prefix {n}"] = model.decode_indices(grids)
        for name, y in results.items():
            totals[name] = totals.get(name, 0.0) + psnr(y, x) / len(images)
    for name, value in totals.items():
        print(f"{name}: {value:.2f} dB")


if __name__ == "__main__":
    main()
