"""The benchmark: rate-distortion and speed of vqcodec side by side with JPEG, WebP and AVIF, and its table.

    images ─load_image─> RGB ─┬─ vqcodec.encode_image / decode (every quality level)
                              ├─ Pillow JPEG / WebP / AVIF (bytes in memory)
                              v
            bpp (real byte count), RGB PSNR, MS-SSIM, encode / decode seconds per image
                              v
            means per codec and quality, BD-rate of vqcodec vs each classic codec,
            codebook usage per quality level, library versions and machine

Conventions
-----------
* Every image is benchmarked as 8-bit RGB: gray images are replicated to three
  channels and an alpha channel is dropped (not composited), for every codec alike.
* bpp = 8 * (bytes of the whole compressed file) / (width * height). For vqcodec
  that is the complete .vqz file, header and CRC included.
* PSNR is computed per image on the RGB values (peak 255) and then averaged over
  images (identical images count as ``PSNR_CAP`` dB, so that means stay finite).
* MS-SSIM (:func:`vqcodec.metrics.ms_ssim`) is computed per RGB channel and averaged over the
  channels, then averaged over images.
* Times are wall-clock seconds per image on this machine, after one warm-up run per
  codec (model loading and codec initialisation are not timed).

Only numpy, Pillow, torch (through vqcodec) and tqdm are needed. The metrics are in
vqcodec.metrics, the RD plot (matplotlib, optional) in vqcodec.plot.
"""
from __future__ import annotations

import io
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import __version__, cpu, images
from .metrics import BD_MAX_BPP, bd_rate, ms_ssim, psnr

CODECS = ("vqz", "jpeg", "webp", "avif")
CLASSIC_CODECS = ("jpeg", "webp", "avif")

#: Quality settings of the classic codecs (Pillow's ``quality=``), low to high.
DEFAULT_QUALITIES = {
    "jpeg": (5, 10, 20, 40, 60, 80),
    "webp": (0, 5, 20, 30, 50, 70),
    "avif": (10, 20, 30, 40, 50, 70),
}
#: Other Pillow save options per classic codec (JPEG: Pillow's defaults, i.e. 4:2:0
#: chroma subsampling and baseline Huffman tables).
SAVE_OPTIONS = {
    "jpeg": {"format": "JPEG"},
    "webp": {"format": "WEBP", "method": 6},
    "avif": {"format": "AVIF", "speed": 6},
}
LABELS = {"vqz": "vqcodec", "jpeg": "JPEG", "webp": "WebP", "avif": "AVIF"}

PSNR_CAP = 100.0


# --------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------

def parse_codecs(codecs) -> list[str]:
    """'vqz,jpeg' or an iterable of names -> checked list in the order given (no repeats)."""
    names = codecs.split(",") if isinstance(codecs, str) else list(codecs)
    chosen: list[str] = []
    for name in (str(n).strip().lower() for n in names):
        if not name:
            continue
        if name not in CODECS:
            raise ValueError(f"unknown codec '{name}'; available: {', '.join(CODECS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no codec chosen; available: {', '.join(CODECS)}")
    return chosen


def avif_available() -> bool:
    from PIL import features

    try:
        return bool(features.check("avif"))
    except ValueError:  # Pillow versions that do not know the feature name
        return False


def classic_encode(rgb: np.ndarray, codec: str, quality: int) -> bytes:
    """Encode an RGB uint8 array with Pillow, in memory."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, quality=int(quality), **SAVE_OPTIONS[codec])
    return buffer.getvalue()


def classic_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


def versions() -> dict:
    import PIL
    import torch
    import zstandard
    from PIL import features

    found = {
        "python": platform.python_version(),
        "vqcodec": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "zstandard": zstandard.__version__,
    }
    for name, feature in (("libjpeg", "jpg"), ("libwebp", "webp"), ("libavif", "avif")):
        try:
            found[name] = features.version(feature)
        except ValueError:
            found[name] = None
    return found


def machine() -> dict:
    import torch

    from .inference import native_bfloat16

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu.cpu_model(),
        "bfloat16_networks": native_bfloat16(),  # the CPU multiplies bf16 natively, and no VQCODEC_FLOAT32
        "int8_dot_product": cpu.has_int8_dot_product(),  # the priors' products in int8, else float32
    }


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _mean(values) -> float:
    return float(np.mean(values))


def run_bench(paths, codecs=CODECS, model: str | None = None, progress: bool = True,
              qualities: dict | None = None, coder: str | None = None,
              rate_tradeoff: float | None = None, bd_max_bpp: float | None = BD_MAX_BPP) -> dict:
    """Benchmark `codecs` on the images in `paths` (files or folders, see images.find_images).

    codecs: names from CODECS ('vqz' is vqcodec at every quality level of `model`,
    the default model when None). qualities: optional {codec: levels} overriding
    DEFAULT_QUALITIES (and, for 'vqz', the model's levels). AVIF is skipped with a
    warning when Pillow lacks it. coder: the vqz entropy coder (None = the model's
    default); the same indices are also zstd-coded, to report what the coder saves.
    rate_tradeoff: the prior coder's rate-aware quantization (None = codec.RATE_TRADEOFF).
    bd_max_bpp: BD-rates from the points up to this rate (None: all points, for small images).
    Returns a JSON-ready dict; see the module docstring for the conventions.
    """
    from tqdm import tqdm

    codecs = parse_codecs(codecs)
    files = images.find_images(paths)
    skipped = []
    if "avif" in codecs and not avif_available():
        warnings.warn("Pillow was built without AVIF support; skipping AVIF", RuntimeWarning, stacklevel=2)
        codecs.remove("avif")
        skipped.append({"codec": "avif", "reason": "Pillow was built without AVIF support"})
    levels = {c: list((qualities or {}).get(c, DEFAULT_QUALITIES.get(c, ()))) for c in codecs}

    model_info = None
    if "vqz" in codecs:
        from . import codec as vq
        from . import container, entropy, zoo

        entry = zoo.find(model)
        model_info = entry.info()
        if not (qualities or {}).get("vqz"):
            levels["vqz"] = list(model_info["quality_levels"])
        model_info = {k: model_info[k] for k in ("name", "sha256", "quality_levels", "codebook_size", "stride")}
        K = model_info["codebook_size"]
        counts = {q: [] for q in levels["vqz"]}  # per stage the level's files hold (its layers say how many)
        coded = {q: [0, 0, 0, 0] for q in levels["vqz"]}  # payload bytes, indices, file bytes, zstd bytes

    originals = []
    for f in files:
        rgb, _ = images.split_alpha(images.load_image(f))
        originals.append(rgb)

    def run_one(rgb, name, quality):
        if name == "vqz":
            t0 = time.perf_counter()
            result = vq.encode_image(Image.fromarray(rgb), quality=quality, model=entry.name, coder=coder,
                                     rate_tradeoff=rate_tradeoff)
            t1 = time.perf_counter()
            decoded = np.asarray(vq.decode(result.data).convert("RGB"))
            t2 = time.perf_counter()
            return result.data, decoded, t1 - t0, t2 - t1
        t0 = time.perf_counter()
        data = classic_encode(rgb, name, quality)
        t1 = time.perf_counter()
        decoded = classic_decode(data)
        t2 = time.perf_counter()
        return data, decoded, t1 - t0, t2 - t1

    # Warm-up: model loading, torch and codec initialisation are not timed.
    probe = originals[0][:32, :32]
    for name in codecs:
        if levels[name]:
            run_one(probe, name, levels[name][0])

    per_point = {c: {q: [] for q in levels[c]} for c in codecs}
    jobs = [(i, c, q) for i in range(len(files)) for c in codecs for q in levels[c]]
    for i, name, quality in tqdm(jobs, desc="bench", unit="job", disable=not progress):
        rgb = originals[i]
        data, decoded, t_enc, t_dec = run_one(rgb, name, quality)
        pixels = rgb.shape[0] * rgb.shape[1]
        per_point[name][quality].append({
            "image": str(files[i]),
            "bytes": len(data),
            "bpp": len(data) * 8 / pixels,
            "psnr": min(psnr(rgb, decoded), PSNR_CAP),
            "ms_ssim": ms_ssim(rgb, decoded),
            "encode_s": t_enc,
            "decode_s": t_dec,
        })
        if name == "vqz":
            parsed = container.unpack(data)
            grids = [grid for layer in vq.read_indices(data).layers for grid in layer.indices]
            used_coder = parsed.header.coder
            for stage, grid in enumerate(grids):
                if stage == len(counts[quality]):
                    counts[quality].append(np.zeros(K, dtype=np.int64))
                counts[quality][stage] += np.bincount(grid.ravel(), minlength=K)[:K]
            coded[quality][0] += len(parsed.index_payload)
            coded[quality][1] += sum(g.size for g in grids)
            coded[quality][2] += len(data)
            coded[quality][3] += len(entropy.zstd_encode(grids))

    results: dict = {
        "images": [str(f) for f in files],
        "num_images": len(files),
        "model": model_info,
        "codecs": {},
        "bd_rate": {},
        "usage": [],
        "settings": {
            "qualities": levels,
            "save_options": {c: SAVE_OPTIONS[c] for c in codecs if c in SAVE_OPTIONS},
            "bd_rate": {"metric": "psnr", "max_bpp": bd_max_bpp, "fit": "pchip log-rate over PSNR"},
            "vqz_coder": coder,
            "vqz_rate_tradeoff": rate_tradeoff if rate_tradeoff is not None else vq_tradeoff(),
        },
        "notes": [
            "images are benchmarked as 8-bit RGB: gray is replicated to 3 channels, alpha is dropped",
            "bpp counts every byte of each compressed file (for vqz the whole .vqz, header included)",
            f"PSNR on RGB per image, then averaged; identical images count as {PSNR_CAP:g} dB",
            "MS-SSIM per RGB channel, averaged over channels, then over images",
            "encode_s / decode_s: mean wall-clock seconds per image after a warm-up run",
        ],
        "skipped": skipped,
        "versions": versions(),
        "machine": machine(),
    }
    for name in codecs:
        rows = []
        for quality in levels[name]:
            items = per_point[name][quality]
            rows.append({
                "quality": quality,
                **{key: _mean([it[key] for it in items])
                   for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")},
                "per_image": [{k: it[k] for k in ("image", "bytes", "bpp", "psnr", "ms_ssim")} for it in items],
            })
        results["codecs"][name] = rows

    if "vqz" in codecs:
        test = [(p["bpp"], p["psnr"]) for p in results["codecs"]["vqz"]]
        for name in codecs:
            if name in CLASSIC_CODECS:
                reference = [(p["bpp"], p["psnr"]) for p in results["codecs"][name]]
                results["bd_rate"][name] = {
                    "test": "vqz", "reference": name, "metric": "psnr", "max_bpp": bd_max_bpp,
                    "percent": bd_rate(reference, test, math.inf if bd_max_bpp is None else bd_max_bpp),
                }
        for quality in levels["vqz"]:
            stages = []
            for stage, c in enumerate(counts[quality], start=1):
                used = int((c > 0).sum())
                stages.append({"stage": stage, "codes_used": used, "fraction_used": used / K,
                               "entropy_bits": _entropy_bits(c)})
            payload, n_indices, total, zstd_bytes = coded[quality]
            results["usage"].append({
                "quality": quality,
                "stages": stages,
                "coder": used_coder,
                "coded_bits_per_index": payload * 8 / n_indices if n_indices else None,
                "zstd_bits_per_index": zstd_bytes * 8 / n_indices if n_indices else None,
                "saved_vs_zstd": 1 - payload / zstd_bytes if zstd_bytes else None,
                "header_bytes_per_image": (total - payload) / len(files),
            })
    return results


@dataclass(frozen=True)
class RoundTrip:
    """One encode and decode of an image by vqcodec."""

    data: bytes  # the .vqz file
    bpp: float
    decoded: Image.Image
    encode_s: float
    decode_s: float
    psnr: float  # dB, of the colour planes (alpha left out)


def _timed(work):
    """(work(), its wall-clock seconds)."""
    started = time.perf_counter()
    return work(), time.perf_counter() - started


def round_trip(image: Image.Image, quality: int, model: str | None = None) -> RoundTrip:
    """Encode `image` at `quality` with `model` (None: the default model) and decode it again."""
    from . import codec

    result, encode_s = _timed(lambda: codec.encode_image(image, quality=quality, model=model))
    decoded, decode_s = _timed(lambda: codec.decode(result.data))
    colour = psnr(*(images.split_alpha(picture)[0] for picture in (image, decoded)))
    return RoundTrip(result.data, result.bpp, decoded, encode_s, decode_s, colour)


def vq_tradeoff() -> float:
    from . import codec

    return codec.RATE_TRADEOFF


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def _fmt_percent(value) -> str:
    return "n/a (no overlap below 1 bpp)" if value is None else f"{value:+.1f}%"


def format_table(results: dict, markdown: bool = False) -> str:
    """The results as text: one row per codec and quality (bpp, PSNR, MS-SSIM, encode
    and decode seconds per image), then the BD-rates and the codebook usage."""
    header = ("codec", "quality", "bpp", "PSNR dB", "MS-SSIM", "enc s", "dec s")
    rows = []
    for name, points in results["codecs"].items():
        for p in points:
            rows.append((LABELS.get(name, name), str(p["quality"]), f"{p['bpp']:.4f}", f"{p['psnr']:.2f}",
                         f"{p['ms_ssim']:.4f}", f"{p['encode_s']:.4f}", f"{p['decode_s']:.4f}"))
    n = results.get("num_images", len(results.get("images", [])))
    model = results.get("model")
    intro = f"{n} image{'s' if n != 1 else ''}"
    if model:
        intro += f", vqcodec model {model['name']} (sha256 {model['sha256'][:12]}...)"
    lines = []
    if markdown:
        lines += [intro, "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += [intro, "",
                  "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
        lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
    bullet = "- " if markdown else ""
    if results.get("bd_rate"):
        cap = next(iter(results["bd_rate"].values())).get("max_bpp", BD_MAX_BPP)
        points = "all points" if cap is None else f"points <= {cap:g} bpp"
        title = f"BD-rate of vqcodec (PSNR, {points}; negative = vqcodec needs fewer bits):"
        lines += ["", f"**{title}**", ""] if markdown else ["", title]
        for ref, entry in results["bd_rate"].items():
            lines.append(f"{bullet}vs {LABELS.get(ref, ref)}: {_fmt_percent(entry['percent'])}")
    if results.get("usage"):
        K = model["codebook_size"] if model else "?"
        title = (f"Codebook usage per quality level (K = {K}, log2 K = {math.log2(K) if K != '?' else '?'} bits; "
                 "per stage: codes used %, entropy bits/index; then the coder's bits per index):")
        lines += ["", f"**{title}**" if markdown else title]
        if markdown:
            lines.append("")
        for level in results["usage"]:
            stages = ", ".join(f"{s['fraction_used'] * 100:.0f}% {s['entropy_bits']:.2f}" for s in level["stages"])
            coded, zstd = level["coded_bits_per_index"], level.get("zstd_bits_per_index")
            coded_text = f"; {level.get('coder', 'coded')} {coded:.2f} bits/index" if coded is not None else ""
            if zstd is not None and level.get("coder") != "zstd":
                coded_text += f" (zstd {zstd:.2f}, {level['saved_vs_zstd'] * 100:.1f}% saved)"
            lines.append(f"{bullet}q{level['quality']}: {stages}{coded_text}")
    for skip in results.get("skipped", []):
        lines += ["", f"{bullet}skipped {skip['codec']}: {skip['reason']}"]
    v, m = results.get("versions", {}), results.get("machine", {})
    if v or m:
        lines.append("")
        if v:
            lines.append(f"{bullet}versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
        if m:
            cpu_text = "" if "cpu_model" not in m else (
                f"; CPU {m['cpu_model']}, networks in {'bfloat16' if m['bfloat16_networks'] else 'float32'}, "
                f"priors' products in {'int8' if m['int8_dot_product'] else 'float32'}")
            lines.append(f"{bullet}machine: {m.get('platform')}, {m.get('cpu_count')} CPUs "
                         f"({m.get('cpus_usable')} usable), torch threads {m.get('torch_threads')}{cpu_text}")
    return "\n".join(lines).rstrip() + "\n"
