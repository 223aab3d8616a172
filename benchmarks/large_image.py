"""Large images: peak memory and speed of encode and decode (tiled, see vqcodec/inference.py).

    python benchmarks/large_image.py [--sizes 6000x4000,3000x2000,1500x1000] [--quality 4] [--coder prior] [--model NAME]

Makes each test image by resizing a training photo (../shared/data/photos, or the bundled
sample), then runs `vqcodec encode` and `vqcodec decode` in child processes and reports
wall time, megapixels per second and the child's peak RSS for each.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / ".." / "shared" / "data" / "photos" / "001.png"


MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
subprocess.run([sys.executable, "-m", "vqcodec", *sys.argv[1:]], check=True)
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one vqcodec command, measured by a fresh intermediate
    process whose only child is that command (ru_maxrss of children is a maximum over all)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], check=True, capture_output=True, text=True)
    seconds, peak_kb = out.stdout.split()
    return float(seconds), float(peak_kb) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1500x1000,3000x2000,6000x4000")
    parser.add_argument("--quality", default="4")
    parser.add_argument("--coder", default=None)
    parser.add_argument("--model", default=None, help="an installed model (default: the default model)")
    args = parser.parse_args()
    source = PHOTO if PHOTO.exists() else None
    if source is None:
        from vqcodec import images
        source = images.sample_image_path()
    coder = ["--coder", args.coder] if args.coder else []
    model = ["--model", args.model] if args.model else []
    print(f"source {source.name}, model {args.model or 'default'}, quality {args.quality}, "
          f"coder {args.coder or 'default'}")
    print("size        MP    encode s  enc MP/s  enc peak MB  decode s  dec MP/s  dec peak MB  bpp")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            png, vqz, out = Path(tmp, f"{size}.png"), Path(tmp, f"{size}.vqz"), Path(tmp, f"{size}.out.png")
            with Image.open(source) as im:
                im.convert("RGB").resize((width, height), Image.LANCZOS).save(png, compress_level=1)
            enc_s, enc_mb = run(["encode", str(png), "-o", str(vqz), "-q", args.quality, "-f", *coder, *model])
            dec_s, dec_mb = run(["decode", str(vqz), "-o", str(out), "-f"])
            mp = width * height / 1e6
            bpp = vqz.stat().st_size * 8 / (width * height)
            print(f"{size:<11} {mp:5.1f} {enc_s:9.1f} {mp / enc_s:9.2f} {enc_mb:12.0f} {dec_s:9.1f} "
                  f"{mp / dec_s:9.2f} {dec_mb:12.0f}  {bpp:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
