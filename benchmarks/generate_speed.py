"""Speed of `vqcodec generate`: seconds for 16 samples per bundled model with a prior
(digits at 28x28, photo at 256x256), after a warm-up call that loads the model.

    python benchmarks/generate_speed.py [--threads 2] [-n 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

import vqcodec
from vqcodec import codec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for info in vqcodec.list_models():
        if "prior" not in info["coders"]:
            continue
        size = (28, 28) if info["name"] == "digits" else (256, 256)
        codec.generate(1, model=info["name"], size=size)  # warm-up: load the weights
        times = []
        for seed in range(args.repeats):
            started = time.perf_counter()
            codec.generate(args.n, model=info["name"], size=size, seed=seed)
            times.append(time.perf_counter() - started)
        print(f"{info['name']}: {args.n} samples of {size[0]}x{size[1]} in {min(times):.2f} s "
              f"(best of {args.repeats}; mean {sum(times) / len(times):.2f} s; {args.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
