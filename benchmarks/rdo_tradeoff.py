"""Choose the encoder's rate-distortion tradeoff (vqcodec.nn.rdoq) on held-out training photos.

    python benchmarks/rdo_tradeoff.py WEIGHTS [IMAGE ...] [--tradeoffs 0,0.1,0.2,0.4]

With no IMAGE it uses the photos the models hold out (../shared/data/photos, the last 3 by
name): never Kodak, which stays a test set. For every tradeoff it prints the RD points per
quality level (bits per pixel of the index payload, RGB PSNR) and the BD-rate against
nearest-code quantization (tradeoff 0), and the prior's bits per index against zstd's on the
same indices.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vqcodec import entropy, images, inference
from vqcodec.metrics import bd_rate, psnr
from vqcodec.nn.rdoq import rate_distortion_indices
from vqcodec.weights_io import load_vqvae, prior_from_bytes

HELD_OUT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("images", nargs="*")
    parser.add_argument("--tradeoffs", default="0,0.1,0.2,0.4,0.8")
    args = parser.parse_args()
    paths = [Path(p) for p in args.images] or images.find_images([HELD_OUT])[-3:]
    vqvae = load_vqvae(args.weights)
    prior = prior_from_bytes(Path(args.weights).read_bytes())
    if prior is None:
        sys.exit(f"{args.weights} has no prior")
    cfg, policy = vqvae.config, inference.Policy.default()
    tradeoffs = [float(t) for t in args.tradeoffs.split(",")]
    points = {t: {q: [] for q in range(1, cfg.num_stages + 1)} for t in tradeoffs}
    bits = {t: {q: [0, 0, 0] for q in range(1, cfg.num_stages + 1)} for t in tradeoffs}  # prior, zstd, indices
    for path in paths:
        rgb = np.asarray(images.load_image(path).convert("RGB"))
        h, w = rgb.shape[:2]
        z = inference.encode_latents(vqvae, images.pad_to_multiple(rgb, cfg.stride), policy)  # as the codec encodes
        for t in tradeoffs:
            # stage s is chosen the same way at every level that codes it: level q codes a prefix
            indices, passes = rate_distortion_indices(vqvae.quantizer, prior, z, cfg.num_stages, t)
            for q in range(1, cfg.num_stages + 1):
                payload = entropy.range_encode([(s, f) for stage, s, f in passes if stage < q])
                zstd = entropy.zstd_encode(list(indices[:q].numpy()))
                out = vqvae.decode(indices[:q].unsqueeze(0), policy.bfloat16)[0].permute(1, 2, 0).mul(255).round().byte().numpy()
                points[t][q].append((len(payload) * 8 / (h * w), psnr(rgb, out[:h, :w])))
                tally = bits[t][q]
                tally[0] += len(payload) * 8
                tally[1] += len(zstd) * 8
                tally[2] += indices[:q].numel()
        print(f"done {path.name}", file=sys.stderr)
    curves = {t: [tuple(np.mean(v, axis=0)) for v in per_q.values()] for t, per_q in points.items()}
    for t, curve in curves.items():
        bd = bd_rate(curves[tradeoffs[0]], curve)
        row = "  ".join(f"q{q + 1} {b:.3f}/{p:.2f}" for q, (b, p) in enumerate(curve))
        print(f"tradeoff {t:<5} BD-rate vs {tradeoffs[0]}: {bd if bd is None else f'{bd:+.1f}%'}  |  {row}")
        saved = [1 - prior_bits / zstd_bits for prior_bits, zstd_bits, _ in bits[t].values()]
        per_index = "  ".join(f"q{q} {p / n:.2f}/{z / n:.2f}" for q, (p, z, n) in bits[t].items())
        print(f"    bits per index, prior/zstd on the same indices: {per_index}")
        print(f"    saved vs zstd: {' '.join(f'{100 * v:.1f}%' for v in saved)}; "
              f"mean {100 * np.mean(saved):.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
