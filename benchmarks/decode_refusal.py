"""How fast `vqcodec.decode` refuses a tiny file whose header claims a huge image: the payload
cannot hold the index grids such an image has, and that must be found before any grid is
allocated or decoded (tests/test_codec.py checks that it is refused; this script, how fast).

    python benchmarks/decode_refusal.py [--sizes 2000,8000,16000] [--repeats 5] [--target 1.0] [--model NAME]

For each coder of the model and each claimed size (a square image), a valid 8x8 file at the top
quality level gets that size written into its header; prints the best and worst seconds of
--repeats refusals and the error, after a warm-up decode that loads the model. Exits 1 if any
refusal takes longer than --target seconds, or if one is not a VqzError.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

import vqcodec
from vqcodec import container, zoo


def claiming(data: bytes, size: int) -> bytes:
    """`data` with its header saying the image is size x size pixels (the payload unchanged)."""
    parsed = container.unpack(data)
    header = parsed.header
    changes = {"width": size, "height": size}
    if any(field.name == "grid_shapes" for field in dataclasses.fields(header)):  # headers that list the grids
        scale = -(-size // header.width)
        changes["grid_shapes"] = tuple((h * scale, w * scale) for h, w in header.grid_shapes)
    return container.pack(dataclasses.replace(header, **changes), parsed.index_payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,16000", help="claimed widths (= heights), comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", type=float, default=1.0, help="seconds a refusal may take")
    parser.add_argument("--model", default=None, help="bundled model (default: the default model)")
    args = parser.parse_args()
    info = zoo.find(args.model).info()
    quality = max(info["quality_levels"])
    pixels = np.zeros((8, 8, 3), np.uint8)
    failed = False
    print(f"model {info['name']}, quality {quality}; seconds to refuse, best / worst of {args.repeats}")
    for coder in info["coders"]:
        small = vqcodec.encode(pixels, quality=quality, model=info["name"], coder=coder)
        vqcodec.decode(small)  # warm-up: loads the model
        for size in (int(s) for s in args.sizes.split(",")):
            hostile = claiming(small, size)
            times, error = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                try:
                    vqcodec.decode(hostile)
                except vqcodec.VqzError as caught:
                    error = caught
                times.append(time.perf_counter() - started)
            refused = error is not None
            failed |= not refused or max(times) > args.target
            outcome = f"VqzError: {str(error)[:90]}" if refused else "DECODED (not refused)"
            print(f"  {coder:5} {size}x{size} ({len(hostile)} bytes): {min(times):.4f} / {max(times):.4f} s"
                  f"{'' if max(times) <= args.target else f'  ABOVE {args.target} s'}  {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
