"""Evaluation: rate-distortion and speed of vqcodec side by side with JPEG, WebP and AVIF.

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
* MS-SSIM (:func:`ms_ssim`) is computed per RGB channel and averaged over the
  channels, then averaged over images.
* Times are wall-clock seconds per image on this machine, after one warm-up run per
  codec (model loading and codec initialisation are not timed).

Only numpy, Pillow, torch (through vqcodec) and tqdm are needed; matplotlib is an
optional dependency used by :func:`plot_rd` alone.
"""
from __future__ import annotations

import io
import math
import os
import platform
import time
import warnings

import numpy as np
from PIL import Image

from . import __version__, images

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
BD_MAX_BPP = 1.0

#: Published rate-distortion points (bpp, RGB PSNR dB), mean over the 24 Kodak images.
#: Source: CompressAI's published results on Kodak
#: (https://github.com/InterDigitalInc/CompressAI, results/kodak/), for
#: J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational image
#: compression with a scale hyperprior", ICLR 2018 (models bmshj2018-factorized and
#: bmshj2018-hyperprior, MSE-optimised, quality 1..4).
#: Drawn for orientation only: they are valid for Kodak, not for other image sets.
PUBLISHED_KODAK = {
    "Ballé 2018 factorized (published)": ((0.123, 26.91), (0.189, 28.22), (0.288, 29.62), (0.440, 31.28)),
    "Ballé 2018 hyperprior (published)": ((0.131, 27.58), (0.209, 29.20), (0.320, 30.97), (0.478, 32.84)),
}

# MS-SSIM constants: Wang, Simoncelli, Bovik 2003.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


# --------------------------------------------------------------------------
# Bjøntegaard delta rate
# --------------------------------------------------------------------------

def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the monotone piecewise-cubic Hermite interpolant
    (Fritsch & Carlson 1980, with the three-point shape-preserving end conditions;
    the same slopes as scipy.interpolate.PchipInterpolator)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = len(x)
    if n == 2:
        return np.array([delta[0], delta[0]])
    d = np.zeros(n)
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def edge(h0, h1, m0, m1):
        slope = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(slope) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(slope) > 3 * abs(m0):
            return 3 * m0
        return slope

    d[0] = edge(h[0], h[1], delta[0], delta[1])
    d[-1] = edge(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (inside [x[0], x[-1]]) of the PCHIP through (x, y)."""
    d = _pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        delta = (y[k + 1] - y[k]) / h
        c1 = d[k]
        c2 = (3 * delta - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * delta) / h ** 2

        def antiderivative(s):
            return y[k] * s + c1 * s ** 2 / 2 + c2 * s ** 3 / 3 + c3 * s ** 4 / 4

        total += antiderivative(b - x[k]) - antiderivative(a - x[k])
    return float(total)


def _curve(points, max_bpp: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(PSNR strictly increasing, log rate) of the usable points, or None if < 2."""
    best: dict[float, float] = {}
    for rate, quality in points:
        rate, quality = float(rate), float(quality)
        if not (math.isfinite(rate) and math.isfinite(quality)) or rate <= 0 or rate > max_bpp:
            continue
        best[quality] = min(rate, best.get(quality, math.inf))  # equal PSNR: keep the cheaper point
    if len(best) < 2:
        return None
    psnr = np.array(sorted(best))
    return psnr, np.log([best[q] for q in psnr])


def bd_rate(reference, test, max_bpp: float = BD_MAX_BPP) -> float | None:
    """Bjøntegaard delta rate of `test` against `reference`, in percent.

    G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves",
    ITU-T SG16 Q.6 (VCEG), document VCEG-M33, Austin, April 2001.

    reference, test: sequences of (bpp, PSNR dB) points. Only points with
    0 < bpp <= max_bpp and finite values are used. Each curve is fitted as log(rate)
    over PSNR with a monotone piecewise-cubic Hermite interpolant (PCHIP, as in
    the current BD-rate implementations instead of VCEG-M33's cubic polynomial),
    both fits are integrated exactly over the overlapping PSNR range, and the result
    is 100 * (exp(mean log-rate difference) - 1): negative means `test` needs fewer
    bits than `reference` for the same PSNR.
    Returns None when a curve has fewer than 2 usable points or the PSNR ranges
    do not overlap.
    """
    ref, tst = _curve(reference, max_bpp), _curve(test, max_bpp)
    if ref is None or tst is None:
        return None
    lo = max(ref[0][0], tst[0][0])
    hi = min(ref[0][-1], tst[0][-1])
    if not hi > lo:
        return None
    mean_diff = (_pchip_integral(*tst, lo, hi) - _pchip_integral(*ref, lo, hi)) / (hi - lo)
    return float(100.0 * (math.exp(mean_diff) - 1.0))


# --------------------------------------------------------------------------
# MS-SSIM
# --------------------------------------------------------------------------

def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(t ** 2) / (2 * sigma ** 2))
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes of x with the 1-D window w."""
    n = len(w)
    rows = x.shape[-2] - n + 1
    cols = x.shape[-1] - n + 1
    tmp = w[0] * x[..., :, 0:cols]
    for k in range(1, n):
        tmp = tmp + w[k] * x[..., :, k:k + cols]
    out = w[0] * tmp[..., 0:rows, :]
    for k in range(1, n):
        out = out + w[k] * tmp[..., k:k + rows, :]
    return out


def _ssim_terms(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term per channel; x, y are (C, H, W) floats."""
    c1 = (_K1 * 255.0) ** 2
    c2 = (_K2 * 255.0) ** 2
    # Second moments about 128 (filtering is linear, so var = E[(x-128)^2] - (mu-128)^2):
    # smaller magnitudes keep float32 cancellation errors far below C2.
    xc, yc = x - 128.0, y - 128.0
    stats = _filter_valid(np.stack([xc, yc, xc * xc, yc * yc, xc * yc]), w)
    mu_xc, mu_yc, xx, yy, xy = stats
    var_x = xx - mu_xc ** 2
    var_y = yy - mu_yc ** 2
    cov = xy - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + 128.0, mu_yc + 128.0
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (luminance * cs_map).mean(axis=(-2, -1)), cs_map.mean(axis=(-2, -1))


def _downsample(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of the last two axes (an odd last row/column is replicated)."""
    if x.shape[-2] % 2:
        x = np.concatenate([x, x[..., -1:, :]], axis=-2)
    if x.shape[-1] % 2:
        x = np.concatenate([x, x[..., :, -1:]], axis=-1)
    return np.float32(0.25) * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def ms_ssim(a, b) -> float:
    """Multi-scale SSIM of two uint8 images (HxWx3 RGB, or HxW gray), in [0, 1].

    Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale structural similarity for
    image quality assessment", Asilomar 2003: 5 scales with weights
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 11x11 Gaussian window of sigma 1.5
    ('valid' filtering), K1 = 0.01, K2 = 0.03, dynamic range 255, 2x2 average
    pooling between scales. Computed on each RGB channel separately and averaged over
    the channels (the convention of CompressAI / pytorch-msssim), not on luma.
    Negative contrast-structure terms are clipped to 0.

    Images too small for 5 scales use as many scales as keep the smallest side
    >= 11 pixels, with the weights of those scales renormalised to sum 1; images
    smaller than 11 pixels use one scale with the window shrunk to fit.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"ms_ssim needs images of the same shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"ms_ssim needs HxW or HxWxC images, got shape {a.shape}")
    x = np.ascontiguousarray(np.moveaxis(a, -1, 0), dtype=np.float32)
    y = np.ascontiguousarray(np.moveaxis(b, -1, 0), dtype=np.float32)
    side = min(x.shape[-2:])
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2 ** scales >= _WIN_SIZE:
        scales += 1
    size = min(_WIN_SIZE, side if side % 2 else side - 1) if side < _WIN_SIZE else _WIN_SIZE
    window = _gaussian_window(max(size, 1), _WIN_SIGMA)
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    if scales < len(MS_SSIM_WEIGHTS):  # the published 5 weights are used as they are (sum 1.0001)
        weights = weights / weights.sum()
    values = []
    for level in range(scales):
        ssim, cs = _ssim_terms(x, y, window)
        values.append(np.maximum(ssim if level == scales - 1 else cs, 0.0))
        if level < scales - 1:
            x, y = _downsample(x), _downsample(y)
    per_channel = np.prod(np.stack(values).astype(np.float64) ** weights[:, None], axis=0)
    return float(np.clip(per_channel.mean(), 0.0, 1.0))


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
        counts = {q: [np.zeros(K, dtype=np.int64) for _ in range(q)] for q in levels["vqz"]}
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
            "psnr": min(images.psnr(rgb, decoded), PSNR_CAP),
            "ms_ssim": ms_ssim(rgb, decoded),
            "encode_s": t_enc,
            "decode_s": t_dec,
        })
        if name == "vqz":
            parsed = container.unpack(data)
            grids = [grid for layer in vq.read_indices(data).layers for grid in layer.indices]
            used_coder = parsed.header.coder
            for stage, grid in enumerate(grids):
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


def vq_tradeoff() -> float:
    from . import codec

    return codec.RATE_TRADEOFF


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the RD plot needs matplotlib, which is not installed "
                          "(pip install matplotlib)") from None
    return matplotlib


def require_matplotlib() -> None:
    """Raise ImportError with a clear message when matplotlib is missing."""
    _matplotlib()


def plot_rd(results: dict, out_png) -> None:
    """Write an RD plot (RGB PSNR over bpp, 0..1 bpp) of `results` to `out_png`,
    with the published Ballé 2018 Kodak points as dashed lines. Needs matplotlib."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .fileio import atomic_write_bytes

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = []
    markers = {"vqz": "o", "jpeg": "s", "webp": "^", "avif": "D"}
    for name, rows in results["codecs"].items():
        points = sorted((p["bpp"], p["psnr"]) for p in rows)
        label = LABELS.get(name, name)
        if name == "vqz" and results.get("model"):
            label = f"vqcodec ({results['model']['name']})"
        axes.plot(*zip(*points), marker=markers.get(name, "o"), label=label, linewidth=1.5, markersize=4)
        shown += [q for b, q in points if b <= 1.0]
    for label, points in PUBLISHED_KODAK.items():
        axes.plot(*zip(*points), linestyle="--", marker="x", label=label, linewidth=1, markersize=4)
        shown += [q for _, q in points]
    axes.set_xlim(0, 1)
    if shown:
        axes.set_ylim(math.floor(min(shown)) - 1, math.ceil(max(shown)) + 1)
    axes.set_xlabel("bits per pixel")
    axes.set_ylabel("RGB PSNR (dB)")
    n = results.get("num_images", len(results.get("images", [])))
    axes.set_title(f"Rate-distortion, mean over {n} image{'s' if n != 1 else ''}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out_png, buffer.getvalue())


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
            lines.append(f"{bullet}machine: {m.get('platform')}, {m.get('cpu_count')} CPUs "
                         f"({m.get('cpus_usable')} usable), torch threads {m.get('torch_threads')}")
    return "\n".join(lines).rstrip() + "\n"
