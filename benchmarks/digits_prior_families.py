"""Prior families for the digits model, compared on held-out negative log-likelihood (bits per
index) and on the samples they make: the causal transformer of the VQ-VAE papers' seeds, in
float, against the integer context prior that `vqcodec train-prior` trains (whose held-out
bits are in its weights' metadata and in docs/EXPERIMENTS.md).

    python benchmarks/digits_prior_families.py runs/digits2/digits.grids.pt --stages 2 \\
        --steps 3000 [--classes] [--samples runs/transformer_samples.npz --weights W]

The grids file is the cache `vqcodec train-prior` writes next to its output (NAME.grids.pt):
the index grids of the training and held-out digits. Tokens are the indices of the first
--stages stages, stage by stage, each in raster order (the integer prior's coding order).
The transformer: 3 pre-norm blocks, 8 heads, 128 dimensions, learned position embeddings, a
start token that is the class (0-9) or "no class" (with --classes the class is shown with
probability 1/2 in training, as for the class-conditional integer prior).

With --samples and --weights (a digits VQ-VAE), it also samples 64 grids per seed (classes
balanced when --classes) at --temperature, decodes them with the VQ-VAE and writes the
images to an .npz that benchmarks/digits_judge.py --images reads.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.train_prior import load_labels

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist5k" / "mnist5k.npz"


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True, dropout=0.1)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, length: int, codes: int, classes: int = 10, dim: int = 128, heads: int = 8, blocks: int = 3):
        super().__init__()
        self.length, self.classes = length, classes
        self.token = nn.Embedding(codes, dim)
        self.start = nn.Embedding(classes + 1, dim)  # the last row: no class
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codes)
        self.register_buffer("mask", torch.triu(torch.full((length, length), -math.inf), 1))

    def forward(self, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, K) of tokens[:, t] from tokens[:, :t] and the class (-1: none)."""
        b, t = tokens.shape
        start = self.start(torch.where(classes < 0, self.classes, classes)).unsqueeze(1)
        x = torch.cat([start, self.token(tokens[:, :-1])], 1)[:, :t] + self.position[:t]
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.norm(x))


def tokens_of(grids: list[torch.Tensor], stages: int) -> torch.Tensor:
    return torch.stack([g[:stages].reshape(-1) for g in grids]).long()


@torch.no_grad()
def held_out_bits(model: Transformer, tokens: torch.Tensor, classes: torch.Tensor, stages: int) -> list[float]:
    model.eval()
    logits = model(tokens, classes)
    nll = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none") / math.log(2)
    model.train()
    return [round(float(part.mean()), 4) for part in nll.chunk(stages, dim=1)]


@torch.no_grad()
def sample(model: Transformer, count: int, classes: torch.Tensor, temperature: float, seed: int) -> torch.Tensor:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(count, model.length, dtype=torch.long)
    for t in range(model.length):
        logits = model(tokens[:, :t + 1], classes)[:, t] / temperature
        tokens[:, t] = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grids", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--classes", action="store_true", help="class-conditional (class dropout 1/2)")
    parser.add_argument("--samples", type=Path, help="write decoded samples here (.npz)")
    parser.add_argument("--weights", type=Path, help="the VQ-VAE that decodes the samples")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--save", type=Path, help="write the trained transformer here (.pt)")
    parser.add_argument("--load", type=Path, help="start from this saved transformer (--steps 0: sample only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cache = torch.load(args.grids, weights_only=True)
    grids, held = cache["grids"], cache["held_out"]
    codes = int(max(int(g.max()) for g in grids)) + 1
    rows, cols = grids[0].shape[1:]
    labels, held_labels = load_labels(args.data, len(held), True, len(grids) == 2 * (5000 - len(held)))
    tokens, held_tokens = tokens_of(grids, args.stages), tokens_of(held, args.stages)
    labels, held_labels = torch.tensor(labels), torch.tensor(held_labels)
    model = Transformer(tokens.shape[1], max(codes, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=max(1, args.steps), pct_start=0.05)
    if args.load:
        model.load_state_dict(torch.load(args.load, weights_only=True))
    generator = torch.Generator().manual_seed(0)
    log, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        picks = torch.randint(len(tokens), (args.batch_size,), generator=generator)
        classes = torch.full((args.batch_size,), -1)
        if args.classes:
            shown = torch.rand(args.batch_size, generator=generator) < 0.5
            classes = torch.where(shown, labels[picks], -1)
        logits = model(tokens[picks], classes)
        loss = F.cross_entropy(logits.transpose(1, 2), tokens[picks]) / math.log(2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == args.steps:
            entry = {"step": step, "seconds": round(time.perf_counter() - started, 1), "train_bits": round(loss.item(), 3),
                     "held_out_bits_per_stage": held_out_bits(model, held_tokens, torch.full((len(held),), -1), args.stages)}
            if args.classes:
                entry["given_class"] = held_out_bits(model, held_tokens, held_labels, args.stages)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    if args.save:
        torch.save(model.state_dict(), args.save)
    if not log:
        log.append({"step": 0, "held_out_bits_per_stage": held_out_bits(model, held_tokens, torch.full((len(held),), -1),
                                                                         args.stages)})
        print(json.dumps(log[-1]), flush=True)
    result = {"family": "transformer", "stages": args.stages, "classes": args.classes, "steps": args.steps,
              "parameters": sum(p.numel() for p in model.parameters()), "log": log}
    if args.samples and args.weights:
        from vqcodec import inference
        from vqcodec.weights_io import load_vqvae

        vqvae, policy = load_vqvae(args.weights).eval(), inference.Policy.default()
        pictures, seconds = [], []
        for seed in map(int, args.seeds.split(",")):
            g = torch.Generator().manual_seed(seed)
            classes = (torch.cat([torch.randperm(10, generator=g) for _ in range(7)])[:64] if args.classes
                       else torch.full((64,), -1))
            started = time.perf_counter()
            drawn = sample(model, 64, classes, args.temperature, seed).view(64, args.stages, rows, cols)
            seconds.append(time.perf_counter() - started)
            for grid in drawn:
                pictures.append(inference.decode_pixels(vqvae, grid.unsqueeze(0), policy)[..., 0])
        np.savez_compressed(args.samples, images=np.stack(pictures))
        result["sample_seconds_per_64"] = [round(s, 2) for s in seconds]
        print(f"wrote {len(pictures)} samples to {args.samples}; {result['sample_seconds_per_64']} s per 64")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
