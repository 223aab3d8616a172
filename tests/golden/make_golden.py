"""Write the golden .vqz files and manifest.json for the bundled models (run once per release
that changes a model; never to make a failing golden test pass). Files of models that are no
longer installed are kept: they check the "model not installed" error. Existing files that an
installed model decodes (its own, or those of the file it added an enhancement layer to) are
kept too, with their digests; only what is missing is added.

Each file has the digest of its pixels decoded in float32 (VQCODEC_FLOAT32=1, every machine)
and, made on a machine with native bfloat16, the digest of the faster bf16 decode.

    python tests/golden/make_golden.py
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec import images, zoo
from vqcodec.nn.autoencoder import fast_bfloat16

HERE = Path(__file__).resolve().parent
CASES = {  # model -> (size, [(quality, coder)])
    # photo q5-q8 are enhancement levels since session 4; photo_q8_prior.vqz (8 base stages,
    # session 3) stays: the base model still decodes such files
    "photo": ((64, 48), [(1, "prior"), (4, "prior"), (8, "prior"), (4, "zstd"), (5, "prior"), (6, "prior"),
                         (5, "zstd")]),
    "digits": ((28, 28), [(1, "prior"), (2, "prior"), (2, "zstd")]),
}


def pixel_digest(picture: Image.Image) -> str:
    """sha256 over mode, size and the raw pixel bytes."""
    header = f"{picture.mode} {picture.width}x{picture.height}\n".encode()
    return hashlib.sha256(header + np.asarray(picture).tobytes()).hexdigest()


def decoded_digests(data: bytes) -> dict:
    """{"pixels_sha256": float32 decode, "pixels_sha256_bfloat16": bf16 decode (if native)}."""
    saved = os.environ.get("VQCODEC_FLOAT32")
    try:
        os.environ["VQCODEC_FLOAT32"] = "1"
        digests = {"pixels_sha256": pixel_digest(vqcodec.decode(data))}
        os.environ["VQCODEC_FLOAT32"] = "0"
        if fast_bfloat16():
            digests["pixels_sha256_bfloat16"] = pixel_digest(vqcodec.decode(data))
    finally:
        os.environ.pop("VQCODEC_FLOAT32") if saved is None else os.environ.update(VQCODEC_FLOAT32=saved)
    return digests


def main() -> None:
    sample = images.load_image(images.sample_image_path())
    old = json.loads((HERE / "manifest.json").read_text()) if (HERE / "manifest.json").exists() else []
    decodable = {case["file"]: case for case in old if zoo.find_by_hash(case["model_sha256"]) is not None}
    manifest = [case for case in old if case["file"] not in decodable]  # files of replaced models stay
    for info in vqcodec.list_models():
        if info["name"] not in CASES:
            continue
        size, levels = CASES[info["name"]]
        source = sample.resize(size, Image.LANCZOS)
        if info["name"] == "digits":
            source = source.convert("L")
        for quality, coder in levels:
            if quality > max(info["quality_levels"]):
                continue
            name = f"{info['name']}_q{quality}_{coder}.vqz"
            if name in decodable:  # made by this model, or by the file its enhancement layer was added to
                case = decodable[name]
                data = (HERE / name).read_bytes()
            else:
                data = vqcodec.encode(source, quality=quality, model=info["name"], coder=coder)
                (HERE / name).write_bytes(data)
                case = {"file": name, "model": info["name"], "model_sha256": info["sha256"],
                        "quality": quality, "coder": coder}
            for key, digest in decoded_digests(data).items():  # never replaces a recorded digest
                case.setdefault(key, digest)
            manifest.append(case)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} golden files to {HERE}")


if __name__ == "__main__":
    main()
