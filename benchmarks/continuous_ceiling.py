"""The quality a hierarchical model's architecture can reach with exact latents.

Takes a trained hierarchical model (every level sharing one latent), gives its finest level
fresh projections of --dims dimensions, and trains every transform for a few hundred steps to
decode the exact (unquantized) latents: plain MSE, no quantizer, no rate. Prints the PSNR on
the held-out crops of benchmarks/heldout_rd.py (never Kodak) before and after. Candidates for a
finer quality ceiling compare here cheaply before a long rate-trained run
(benchmarks/latent_ceiling.py shows what the trained model itself makes of exact latents).

    python benchmarks/continuous_ceiling.py WEIGHTS --data DIR... [--dims 16] [--steps 600]
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch

from heldout_rd import crops
from latent_ceiling import decode_latents, psnr
from vqcodec.nn.hierarchy import HierarchicalVQ
from vqcodec.training.data import load_pool, random_crops, split_by_name
from vqcodec.training.hierarchy_prior_task import load_hierarchy


def held_out_psnr(model, images) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for rgb in images:
            x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None]
            total += psnr(decode_latents(model, model.analyze(x), [None] * len(model.levels)), x) / len(images)
    model.train()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="a hierarchical autoencoder's training weights file")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--dims", type=int, default=16, help="latent dimension of the finest level")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8, help="crops of 128 x 128 per step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = load_hierarchy(args.weights)
    cfg = source.config
    model = HierarchicalVQ(replace(cfg, level_dims=cfg.level_dims[:-1] + (args.dims,)))
    finest = str(cfg.level_strides[-1])
    own = model.state_dict()
    kept = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape
            and not k.startswith((f"latent_in.{finest}.", f"latent_out.{finest}."))}
    model.load_state_dict({**own, **kept})
    train_files, _ = split_by_name(args.data, 3)
    pool = load_pool(train_files, (0.6,), 128)
    _, images = crops(args.data)
    optimizer = torch.optim.Adam(model.parameters(), 2e-4)
    generator = torch.Generator().manual_seed(0)
    print(f"dims {args.dims}: held-out PSNR with exact latents at the start {held_out_psnr(model, images):.2f} dB",
          flush=True)
    start = time.time()
    for step in range(1, args.steps + 1):
        x = random_crops(pool, args.batch, 128, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = decode_latents(model, model.analyze(x), [None] * len(model.levels))
        loss = (y.float() - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step}: batch PSNR {10 * math.log10(1 / loss.item()):.2f} dB, {time.time() - start:.0f} s",
                  flush=True)
    print(f"dims {args.dims}: held-out PSNR with exact latents after {args.steps} steps "
          f"{held_out_psnr(model, images):.2f} dB", flush=True)


if __name__ == "__main__":
    main()
