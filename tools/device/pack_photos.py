"""Pack the training photos small enough to travel to a lent GPU machine (its working tree,
carried files included, is capped at 64 MiB).

    python tools/device/pack_photos.py [--quality 87] [--out .gpu/data] [DATA_ROOT]

Every image of DATA_ROOT/photos and DATA_ROOT/photos2 (default ../shared/data) is written as
JPEG with 4:4:4 chroma under OUT, keeping the folder layout and the file stems, so the names
that hold photos out (training.data.split_by_name) stay the same. Quality 87 made 45 MB from the
331 photos in session 10, about 37 dB against the originals: what trains there is slightly
noisier than the originals, so held-out figures are measured here, on the original files
(docs/EXPERIMENTS.md, session 10). Name OUT's top folder in `.git/info/exclude` and in the
device call's `carry`.
"""
import argparse
from pathlib import Path

from PIL import Image

from vqcodec.images import find_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="../shared/data", help="folder holding photos/ and photos2/")
    parser.add_argument("--quality", type=int, default=87, help="JPEG quality (4:4:4 chroma)")
    parser.add_argument("--out", default=".gpu/data", help="output folder")
    args = parser.parse_args()
    root, out, total = Path(args.root).resolve(), Path(args.out), 0
    for path in find_images([str(root / "photos"), str(root / "photos2")]):
        target = out / path.resolve().relative_to(root).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(target, quality=args.quality, subsampling=0)
        total += target.stat().st_size
    print(f"{total / 1e6:.1f} MB under {out}")


if __name__ == "__main__":
    main()
