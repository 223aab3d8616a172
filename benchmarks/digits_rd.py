"""The digits codec on its own domain: rate-distortion on the 500 held-out mnist5k digits
against WebP, AVIF and PNG, with BD-rates.

    python benchmarks/digits_rd.py [--model digits] [--limit N] [--json FILE] [--markdown]

Held-out digits: every 10th of mnist5k.npz (50 of each class; the file is sorted by class,
so its last 500 are all 9s), the digits the `digits` model holds out (configs/digits.json,
`held_out_spread`). Each is coded as a 28x28 gray (L) image:

* vqcodec: `vqcodec.encode(image, quality=q, model=...)` at every quality level, the default
  coder (the model's prior, with rate-aware quantization); bytes are the whole .vqz file,
  header and CRCs included; the header's share is reported too ("header B").
* WebP: Pillow, lossless=False, method=6, at quality 0, 5, 10, 20, 30, 40, 50, 70, 90.
* AVIF: Pillow, speed=6, quality 0, 10, 30, 50, 70 (its container costs ~300 bytes at this
  size, so its curve starts far above the others').
* PNG: Pillow, optimize=True (lossless: bytes only).

PSNR is on the gray values (peak 255), per digit, then averaged; bytes are averaged. BD-rate
(vqcodec/metrics.py: PCHIP fit of log-rate over PSNR, over the PSNR range both curves cover) of
vqcodec against each lossy codec, with no cap on the rate (28x28 images are far above 1 bpp).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec import bench, container, metrics, zoo

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mnist5k" / "mnist5k.npz"
WEBP = (0, 5, 10, 20, 30, 40, 50, 70, 90)
AVIF = (0, 10, 30, 50, 70)


def held_out(path: Path = DATA, count: int = 500) -> np.ndarray:
    with np.load(path) as archive:
        images = archive["images"]
    step = len(images) // count
    return images[step - 1::step][:count]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return min(bench.PSNR_CAP, 10 * math.log10(255 ** 2 / mse)) if mse else bench.PSNR_CAP


def classic(digit: np.ndarray, fmt: str, quality: int | None) -> tuple[int, float]:
    buffer = io.BytesIO()
    options = {"WEBP": {"lossless": False, "method": 6, "quality": quality}, "AVIF": {"speed": 6, "quality": quality},
               "PNG": {"optimize": True}}[fmt]
    Image.fromarray(digit).save(buffer, fmt, **options)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        return len(data), psnr(digit, np.asarray(decoded.convert("L")))


def run(model: str, digits: np.ndarray, rate_tradeoff: float | None = None) -> dict:
    from vqcodec import codec

    entry = zoo.find(model)
    levels = entry.info()["quality_levels"]
    rows = {"vqcodec": [], "WebP": [], "AVIF": [], "PNG": []}
    codec.encode_image(Image.fromarray(digits[0]), quality=1, model=model)  # warm-up: load the model
    for q in levels:
        sizes, headers, scores, seconds = [], [], [], [0.0, 0.0]
        for digit in digits:
            started = time.perf_counter()
            data = codec.encode_image(Image.fromarray(digit), quality=q, model=model, rate_tradeoff=rate_tradeoff).data
            middle = time.perf_counter()
            decoded = np.asarray(vqcodec.decode(data).convert("L"))
            seconds[0] += middle - started
            seconds[1] += time.perf_counter() - middle
            parsed = container.unpack(data)
            sizes.append(len(data))
            headers.append(len(data) - len(parsed.index_payload))
            scores.append(psnr(digit, decoded))
        rows["vqcodec"].append({"quality": q, "bytes": float(np.mean(sizes)), "psnr": float(np.mean(scores)),
                                "header_bytes": float(np.mean(headers)),
                                "encode_s": seconds[0] / len(digits), "decode_s": seconds[1] / len(digits)})
    for name, fmt, qualities in (("WebP", "WEBP", WEBP), ("AVIF", "AVIF", AVIF), ("PNG", "PNG", (None,))):
        if fmt == "AVIF" and not bench.avif_available():
            continue
        for q in qualities:
            measured = [classic(digit, fmt, q) for digit in digits]
            rows[name].append({"quality": q, "bytes": float(np.mean([m[0] for m in measured])),
                               "psnr": float(np.mean([m[1] for m in measured]))})
    pixels = digits.shape[1] * digits.shape[2]

    def curve(name):
        return [(r["bytes"] * 8 / pixels, r["psnr"]) for r in rows[name]]

    bd = {name: metrics.bd_rate(curve(name), curve("vqcodec"), max_bpp=math.inf) for name in ("WebP", "AVIF")
          if rows[name]}
    return {"model": entry.name, "sha256": entry.sha256, "digits": int(len(digits)), "rows": rows,
            "bd_rate_percent": bd, "rate_tradeoff": rate_tradeoff, "versions": bench.versions()}


def markdown(result: dict) -> str:
    lines = ["| codec | setting | bytes | PSNR dB | header B | encode ms | decode ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, rows in result["rows"].items():
        for r in rows:
            setting = "lossless" if name == "PNG" else (f"q{r['quality']}" if name == "vqcodec" else str(r["quality"]))
            psnr_text = "inf" if name == "PNG" else f"{r['psnr']:.2f}"
            extra = (f"{r['header_bytes']:.1f} | {1000 * r['encode_s']:.0f} | {1000 * r['decode_s']:.0f}"
                     if name == "vqcodec" else " | | ")
            lines.append(f"| {name} | {setting} | {r['bytes']:.1f} | {psnr_text} | {extra} |")
    bd = ", ".join(f"{k} {v:+.1f} %" if v is not None else f"{k} n/a (no common PSNR range)"
                   for k, v in result["bd_rate_percent"].items())
    return "\n".join(lines) + f"\n\nBD-rate (PSNR) of vqcodec against: {bd}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--limit", type=int, default=500, help="the first N held-out digits (default all 500)")
    parser.add_argument("--rate-tradeoff", type=float, default=None, help="default: the codec's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    digits = held_out()
    if args.limit < len(digits):  # an even share of every class
        digits = digits[np.linspace(0, len(digits) - 1, args.limit).round().astype(int)]
    result = run(args.model, digits, args.rate_tradeoff)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        print(markdown(result))
    else:
        for name, rows in result["rows"].items():
            for r in rows:
                print(f"{name:8s} {r['quality']!s:>5s} {r['bytes']:7.1f} B {r['psnr']:6.2f} dB")
        print("BD-rate:", {k: (round(v, 1) if v is not None else None) for k, v in result["bd_rate_percent"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
