"""Write the golden .vqz files and manifest.json for the bundled models (run once per release
that changes a model; never to make a failing golden test pass). Files of models that are no
longer installed are kept: they check the "model not installed" error.

    python tests/golden/make_golden.py
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec import images

HERE = Path(__file__).resolve().parent
CASES = {  # model -> (size, [(quality, coder)])
    "photo": ((64, 48), [(1, "prior"), (4, "prior"), (8, "prior"), (4, "zstd")]),
    "digits": ((28, 28), [(1, "prior"), (2, "prior"), (2, "zstd")]),
}


def pixel_digest(picture: Image.Image) -> str:
    """sha256 over mode, size and the raw pixel bytes."""
    header = f"{picture.mode} {picture.width}x{picture.height}\n".encode()
    return hashlib.sha256(header + np.asarray(picture).tobytes()).hexdigest()


def main() -> None:
    sample = images.load_image(images.sample_image_path())
    installed = {info["sha256"] for info in vqcodec.list_models()}
    old = json.loads((HERE / "manifest.json").read_text()) if (HERE / "manifest.json").exists() else []
    manifest = [case for case in old if case["model_sha256"] not in installed]  # files of replaced models stay
    for info in vqcodec.list_models():
        if info["name"] not in CASES:
            continue
        size, levels = CASES[info["name"]]
        source = sample.resize(size, Image.LANCZOS)
        if info["name"] == "digits":
            source = source.convert("L")
        for quality, coder in levels:
            name = f"{info['name']}_q{quality}_{coder}.vqz"
            data = vqcodec.encode(source, quality=quality, model=info["name"], coder=coder)
            (HERE / name).write_bytes(data)
            manifest.append({"file": name, "model": info["name"], "model_sha256": info["sha256"],
                             "quality": quality, "coder": coder,
                             "pixels_sha256": pixel_digest(vqcodec.decode(data))})
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} golden files to {HERE}")


if __name__ == "__main__":
    main()
