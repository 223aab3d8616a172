"""Side-by-side examples for the README: original | vqcodec | JPEG at (at least) the same bpp.

    python benchmarks/example_images.py IMAGE [-q 4] [--crop X,Y,W,H] -o docs/example.png

The JPEG quality is the lowest whose file is at least as large as the .vqz file, so JPEG is
never given fewer bits. Each panel is labelled with its bpp and PSNR (over the whole image).
"""
from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image, ImageDraw

import vqcodec
from vqcodec import images
from vqcodec.metrics import psnr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("-q", "--quality", type=int, default=4)
    parser.add_argument("--crop", default=None, help="X,Y,W,H of the region shown (default: the whole image)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    original = images.load_image(args.image).convert("RGB")
    rgb = np.asarray(original)
    pixels = original.width * original.height
    data = vqcodec.encode(original, quality=args.quality)
    ours = vqcodec.decode(data).convert("RGB")
    for jpeg_quality in range(1, 96):
        buffer = io.BytesIO()
        original.save(buffer, "JPEG", quality=jpeg_quality)
        if buffer.tell() >= len(data):
            break
    jpeg = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    panels = [(original, "original"),
              (ours, f"vqcodec q{args.quality}: {len(data) * 8 / pixels:.3f} bpp, "
                     f"{psnr(rgb, np.asarray(ours)):.2f} dB"),
              (jpeg, f"JPEG q{jpeg_quality}: {buffer.tell() * 8 / pixels:.3f} bpp, "
                     f"{psnr(rgb, np.asarray(jpeg)):.2f} dB")]
    box = tuple(int(v) for v in args.crop.split(",")) if args.crop else (0, 0, original.width, original.height)
    x, y, w, h = box
    label = 18
    sheet = Image.new("RGB", (3 * w + 8, h + label), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (picture, text) in enumerate(panels):
        sheet.paste(picture.crop((x, y, x + w, y + h)), (i * (w + 4), label))
        draw.text((i * (w + 4) + 4, 3), text, fill="black")
    sheet.save(args.output)
    print(f"wrote {args.output}: " + " | ".join(text for _, text in panels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
