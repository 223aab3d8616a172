"""CPU seconds per training step of the hierarchical ECVQ model, float32 vs bf16 autocast.

Counts process CPU time (time.process_time) with one torch thread, so the figure holds on a
busy machine too; wall time with 2 threads on an idle machine is about half of it.

    python benchmarks/train_step_speed.py [--config configs/photo.json] [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vqcodec.config import HierarchyConfig, from_dict
from vqcodec.nn.hierarchy import HierarchicalVQ
from vqcodec.cpu import has_native_bf16


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline config whose 'model' section to use")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = HierarchyConfig()
    if args.config:
        cfg = from_dict(HierarchyConfig, json.load(open(args.config)).get("model", {}))
    torch.manual_seed(0)
    model = HierarchicalVQ(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(args.batch, 3, args.crop, args.crop)
    lambdas = model.stage_lambdas()
    print(f"native bf16: {has_native_bf16()}; batch {args.batch} x {args.crop}^2")
    for bf16 in (False, True):
        times = []
        for step in range(args.steps + 1):
            keep = torch.randint(1, model.num_stages + 1, (args.batch,))
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y, bits, vq = model(x, keep, lambdas[keep - 1])
            loss = (bits / args.crop ** 2 + lambdas[keep - 1] * (y.float() - x).pow(2).mean((1, 2, 3)) * 255 ** 2
                    + vq).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step initializes the codebooks
                times.append(time.process_time() - start)
        print(f"{'bf16' if bf16 else 'float32':8s} {sum(times) / len(times):.2f} CPU s/step "
              f"({len(times) / sum(times):.2f} steps per CPU second)")


if __name__ == "__main__":
    main()
