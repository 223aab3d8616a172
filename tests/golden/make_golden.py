"""Write the golden .vqz files and manifest.json for the bundled models (run once per release
that changes a model or the format; never to make a failing golden test pass). Every file
already listed stays, with its digests: files of models that are no longer installed check
the "model not installed" error, version-1 files check that version 1 still decodes, to the
same pixels. Only what is missing is added, as version-2 files named v2_MODEL_qQ_CODER.vqz (with
the first 8 hex digits of the sha256 after MODEL when that name belongs to a replaced model)
(v2_photo_q2_rgba_metadata.vqz: alpha plane, ICC profile, EXIF and XMP), made without a colour
correction, and version-3 files of the CORRECTED cases, v3_MODEL_qQ_CODER_color.vqz, with one.

Each file has the digest of its index grids (exact everywhere: the indices are integers,
decoded in integer arithmetic), version 2 the digests of its metadata, and, for the pixels:
  - version 1 (made before this script wrote version 2): the sha256 of its pixels decoded in
    float32 (VQCODEC_FLOAT32=1) and, made on a machine with native bfloat16, of the bf16 decode;
  - versions 2 and 3: a reference PNG of the float32 decode; every decode, float32 or bf16 on
    any machine, must be within PIXEL_TOLERANCE levels of it.

    python tests/golden/make_golden.py
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

import vqcodec
from vqcodec import container, images, zoo
from vqcodec.inference import native_bfloat16

HERE = Path(__file__).resolve().parent
CASES = {  # model -> (size, [(quality, coder)])
    "photo": ((64, 48), [(1, "prior"), (4, "prior"), (5, "prior"), (8, "prior"), (4, "zstd"), (5, "zstd")]),
    "photo2": ((64, 48), [(1, "prior"), (8, "prior"), (10, "prior"), (13, "prior"), (8, "zstd")]),
    "digits": ((28, 28), [(1, "prior"), (2, "prior"), (2, "zstd"), (4, "prior"), (8, "prior")]),
}
# model -> [(size, quality, coder)] made with a colour correction (degree 1 at 256 x 256, 2 at 512 x 512)
CORRECTED = {"photo2": [((256, 256), 1, "prior"), ((256, 256), 4, "prior"), ((512, 512), 3, "prior")]}
# Largest difference, in levels of any channel of any pixel, between a decode of a version-2 or
# -3 golden file and its reference PNG (the float32 decode where it was made). The bf16 and
# float32 decodes of the golden files differ by at most 2 before a colour correction, which can
# stretch that: a degree-2 one by up to 4 (2 pixels of v3_photo2_66eccb8b_q3_prior_color's 262 k).
PIXEL_TOLERANCE = 4


def pixel_digest(picture: Image.Image) -> str:
    """sha256 over mode, size and the raw pixel bytes."""
    header = f"{picture.mode} {picture.width}x{picture.height}\n".encode()
    return hashlib.sha256(header + np.asarray(picture).tobytes()).hexdigest()


def indices_digest(data: bytes) -> str:
    """sha256 over each layer's stride, shape and indices (uint16 little-endian)."""
    digest = hashlib.sha256()
    for layer in vqcodec.read_indices(data).layers:
        digest.update(f"{layer.stride} {layer.indices.shape}\n".encode())
        digest.update(np.ascontiguousarray(layer.indices, dtype="<u2").tobytes())
    return digest.hexdigest()


def decode_float32(data: bytes) -> Image.Image:
    saved = os.environ.get("VQCODEC_FLOAT32")
    try:
        os.environ["VQCODEC_FLOAT32"] = "1"
        return vqcodec.decode(data)
    finally:
        os.environ.pop("VQCODEC_FLOAT32") if saved is None else os.environ.update(VQCODEC_FLOAT32=saved)


def decoded_digests(data: bytes) -> dict:
    """Version 1: {"pixels_sha256": float32 decode, "pixels_sha256_bfloat16": bf16 decode (if native)}."""
    saved = os.environ.get("VQCODEC_FLOAT32")
    try:
        os.environ["VQCODEC_FLOAT32"] = "1"
        digests = {"pixels_sha256": pixel_digest(vqcodec.decode(data))}
        os.environ["VQCODEC_FLOAT32"] = "0"
        if native_bfloat16():
            digests["pixels_sha256_bfloat16"] = pixel_digest(vqcodec.decode(data))
    finally:
        os.environ.pop("VQCODEC_FLOAT32") if saved is None else os.environ.update(VQCODEC_FLOAT32=saved)
    return digests


def metadata_source(sample: Image.Image) -> bytes:
    """An RGBA PNG with an ICC profile, EXIF (camera, date, orientation 6) and XMP."""
    picture = sample.resize((40, 56), Image.LANCZOS).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (56, 1))
    picture.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "vqcodec", "golden", 6
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    text.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
                  '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff='
                  '"http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", exif=exif.tobytes(), icc_profile=icc, pnginfo=text)
    return buffer.getvalue()


def main() -> None:
    sample = images.load_image(images.sample_image_path())
    manifest = json.loads((HERE / "manifest.json").read_text()) if (HERE / "manifest.json").exists() else []
    listed = {case["file"]: case["model_sha256"] for case in manifest}  # every listed file stays
    for info in vqcodec.list_models():
        if info["name"] not in CASES:
            continue
        size, levels = CASES[info["name"]]
        source = sample.resize(size, Image.LANCZOS)
        if info["name"] == "digits":
            source = source.convert("L")
        todo = [(f"v2_{info['name']}_q{q}_{coder}.vqz", q, coder, source, False) for q, coder in levels
                if q <= max(info["quality_levels"])]
        todo += [(f"v3_{info['name']}_q{q}_{coder}_color.vqz", q, coder, sample.resize(size, Image.LANCZOS), True)
                 for size, q, coder in CORRECTED.get(info["name"], [])]
        if info["name"] == "photo":
            todo.append(("v2_photo_q2_rgba_metadata.vqz", 2, "prior", metadata_source(sample), False))
        for name, quality, coder, image, corrected in todo:
            if name in listed and listed[name] != info["sha256"]:  # made by a model since replaced
                name = name.replace(f"_{info['name']}_", f"_{info['name']}_{info['sha256'][:8]}_")
            if name in listed:
                continue
            data = vqcodec.encode(image, quality=quality, model=info["name"], coder=coder,
                                  color_correction=corrected)
            version = container.unpack(data).version
            if version != int(name[1]):
                raise SystemExit(f"{name}: the encoder wrote version {version}")
            (HERE / name).write_bytes(data)
            reference = name.replace(".vqz", ".float32.png")
            decode_float32(data).save(HERE / reference)
            manifest.append({"file": name, "format_version": version, "model": info["name"],
                             "model_sha256": info["sha256"], "quality": quality, "coder": coder,
                             "reference": reference})
    for case in manifest:  # digests of what the installed models decode; never replaces one
        if zoo.find_by_hash(case["model_sha256"]) is None:
            continue
        data = (HERE / case["file"]).read_bytes()
        case.setdefault("indices_sha256", indices_digest(data))
        if case.get("format_version", 1) >= 2:
            case.setdefault("metadata_sha256", {kind: hashlib.sha256(value).hexdigest()
                                                for kind, value in container.unpack(data).metadata.items()})
        else:
            for key, digest in decoded_digests(data).items():
                case.setdefault(key, digest)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(manifest)} golden files in {HERE}")


if __name__ == "__main__":
    main()
