"""Mean bpp, RGB PSNR and encode/decode seconds per quality level of a bundled model
on a folder of images (default ../shared/data/kodak), through the public API.

    python benchmarks/kodak_levels.py [--data DIR] [--model NAME] [--coder zstd] [--json OUT]

bpp counts every byte of the .vqz file (header included); PSNR is per image on 8-bit
RGB values, then averaged. Timings are wall-clock seconds per image on this machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import vqcodec
from vqcodec import images, zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--coder", default=None)
    parser.add_argument("--levels", default=None, help="comma-separated quality levels (default: all)")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*.png"))
    if not files:
        raise SystemExit(f"no PNG images in {args.data}")
    entry = zoo.find(args.model)
    levels = [int(q) for q in args.levels.split(",")] if args.levels else entry.info()["quality_levels"]
    originals = [images.load_image(f) for f in files]
    vqcodec.encode(originals[0], quality=levels[0], model=entry.name)  # load the model before timing
    rows = []
    print(f"model {entry.name} (sha256 {entry.sha256[:16]}...), {len(files)} images from {args.data}")
    print(f"{'quality':>7} {'bpp':>7} {'PSNR dB':>8} {'encode s':>9} {'decode s':>9}")
    for level in levels:
        bpp, psnr, t_enc, t_dec = [], [], [], []
        for image in originals:
            t0 = time.perf_counter()
            data = vqcodec.encode(image, quality=level, model=entry.name, coder=args.coder)
            t1 = time.perf_counter()
            decoded = vqcodec.decode(data)
            t2 = time.perf_counter()
            bpp.append(len(data) * 8 / (image.width * image.height))
            psnr.append(images.psnr(np.asarray(image.convert("RGB")), np.asarray(decoded.convert("RGB"))))
            t_enc.append(t1 - t0)
            t_dec.append(t2 - t1)
        row = {"quality": level, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr)),
               "encode_s": float(np.mean(t_enc)), "decode_s": float(np.mean(t_dec))}
        rows.append(row)
        print(f"{level:>7} {row['bpp']:>7.4f} {row['psnr']:>8.2f} {row['encode_s']:>9.3f} {row['decode_s']:>9.3f}",
              flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": entry.name, "sha256": entry.sha256,
                                                   "images": len(files), "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
