"""Choose a hierarchical model's quality ladder on the held-out training photos (never Kodak).

A quality level of a hierarchical model is a prefix of its stage ladder coded at a multiple of
that prefix's training lambda (HierarchyConfig.quality_ladder), or at one multiple per level.
Consecutive prefixes can be far apart in rate (the first stage of a finer level adds a whole
grid); the same prefix at a smaller multiple weighs bits more in the encoder's ECVQ and lands
between them, and a prefix that reaches the last level can share its bits between the coarser
levels (one multiple) and the last (--last-multiples: another). This script measures real .vqz
files of an installed model, every point as quality 1 of a one-level ladder set on the loaded
network, on the held-out crops of benchmarks/heldout_rd.py, and picks the ladder:

  1. the points no other point beats in both bpp and PSNR (the Pareto front);
  2. from the lowest of them up: the next level is the front's point of highest bpp within
     --ratio times the bpp of the level below (the next point of the front if none is), among
     those that keep at least the stages of the level below and whose chord from the level
     below (linear in log-bpp, as BD-rate and rate control interpolate) passes no more than
     --chord-gap dB under a front point between them, up to the front's top.

    python benchmarks/quality_ladder.py MODEL --data ../shared/data/photos ../shared/data/photos2 \
        [--multiples 0.125,0.25,0.5,1,2] [--last-multiples 0.0625,0.125,...] [--ratio 1.5] \
        [--chord-gap 0.1] [--json out.json]

The measurement parallelizes over processes: run it once per set of --multiples with --json,
then `--points A.json B.json ...` chooses the ladder from all of their points together.

Prints every point, the chosen ladder with its bpp / PSNR and step ratios, and the
`quality_ladder` JSON for the model's config.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch

from heldout_rd import crops, file_point, mean_points
from vqcodec import codec


def measure(model: str, images, multiples, last_multiples=()) -> dict[tuple, tuple[float, float]]:
    """(prefix, multiple) -> mean (bpp, PSNR) of real files for every prefix and multiple, and
    (prefix, coarser levels' multiple, ..., last level's multiple) for the prefixes that reach
    the last level and every pair of a multiple and a different one of last_multiples."""
    network = codec.load_model(model)  # the loaded, cached network the codec encodes with
    cfg = network.config
    levels, total = len(cfg.level_stages), sum(cfg.level_stages)
    keys = [(n, m) for n in range(1, total + 1) for m in multiples]
    keys += [(n, *[m] * (levels - 1), last) for n in range(total - cfg.level_stages[-1] + 1, total + 1)
             for m in multiples for last in last_multiples if last != m]
    points = {}
    try:
        for key in keys:
            network.config = dataclasses.replace(cfg, quality_ladder=(key,))
            points[key] = mean_points([[file_point(rgb, 1, model)] for rgb in images])[0]
            print(f"prefix {key[0]} {label(key)}: {points[key][0]:.4f} bpp {points[key][1]:.2f} dB", flush=True)
    finally:
        network.config = cfg
    return points


def label(key: tuple) -> str:
    """A ladder key's multiples: x0.5, or x0.25/0.0625 (coarser levels / last level)."""
    return "x" + "/".join(f"{m:g}" for m in dict.fromkeys(key[1:]))


def chord_gap(points: dict, front: list, low, high) -> float:
    """How far (dB) the chord from point `low` to point `high`, linear in log-bpp, passes under
    the front's points between them (0 if it passes under none)."""
    (b0, q0), (b1, q1) = points[low], points[high]
    between = front[front.index(low) + 1:front.index(high)]
    return max([0.0] + [points[k][1] - (q0 + (q1 - q0) * math.log(points[k][0] / b0) / math.log(b1 / b0))
                        for k in between])


def choose_ladder(points: dict, ratio: float, max_gap: float = float("inf")) -> list:
    """The ladder's (prefix, multiple) keys, lowest rate first (module docstring)."""
    front, best = [], -float("inf")
    for key, (bpp, quality) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if quality > best:
            front.append(key)
            best = quality
    ladder = [front[0]]
    while True:  # quality levels keep non-decreasing prefixes (HierarchyConfig.quality_ladder)
        rest = [k for k in front[front.index(ladder[-1]) + 1:] if k[0] >= ladder[-1][0]]
        if not rest:
            return ladder
        within = [k for k in rest if points[k][0] <= ratio * points[ladder[-1]][0]
                  and chord_gap(points, front, ladder[-1], k) <= max_gap]
        ladder.append(within[-1] if within else rest[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an installed hierarchical model (with --points: a label only)")
    parser.add_argument("--data", nargs="+", help="photo folders whose held-out crops are measured")
    parser.add_argument("--points", nargs="+", metavar="JSON",
                        help="choose from the points of earlier runs' --json files instead of measuring")
    parser.add_argument("--multiples", default="0.125,0.25,0.5,1,2",
                        help="lambda multiples measured for every prefix (all levels alike)")
    parser.add_argument("--last-multiples", default="",
                        help="for the prefixes that reach the last level: also each of --multiples for the "
                             "coarser levels with each of these for the last")
    parser.add_argument("--ratio", type=float, default=1.5, help="largest wanted bpp step between levels")
    parser.add_argument("--chord-gap", type=float, default=float("inf"),
                        help="largest dB by which a level-to-level chord may pass under a measured point")
    parser.add_argument("--json", help="write the points and the ladder here")
    args = parser.parse_args()
    if args.points:
        points = {}
        for path in args.points:
            with open(path) as f:
                points.update({tuple(key): (bpp, quality) for *key, bpp, quality in json.load(f)["points"]})
    elif args.data:
        torch.set_num_threads(1)
        _, images = crops(args.data)
        points = measure(args.model, images, [float(m) for m in args.multiples.split(",")],
                         [float(m) for m in args.last_multiples.split(",")] if args.last_multiples else ())
    else:
        parser.error("give --data (measure) or --points (choose from earlier measurements)")
    ladder = choose_ladder(points, args.ratio, args.chord_gap)
    previous = None
    for q, key in enumerate(ladder, 1):
        bpp, quality = points[key]
        step = f"  x{bpp / previous:.2f}" if previous else ""
        print(f"quality {q}: prefix {key[0]} {label(key)}  {bpp:.4f} bpp {quality:.2f} dB{step}")
        previous = bpp
    print("quality_ladder:", json.dumps([list(key) for key in ladder]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"points": [[*key, *point] for key, point in points.items()],
                       "quality_ladder": [list(key) for key in ladder]}, f, indent=1)


if __name__ == "__main__":
    main()
