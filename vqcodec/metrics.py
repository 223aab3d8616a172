"""Image quality and rate-distortion metrics: PSNR, MS-SSIM, Bjøntegaard delta rate, and an
image's detail (activity) (numpy only)."""
from __future__ import annotations

import math

import numpy as np

BD_MAX_BPP = 1.0
ACTIVITY_ROWS = 256  # activity() reads this many rows at a time: bounded memory on huge images

# MS-SSIM constants: Wang, Simoncelli, Bovik 2003.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two 8-bit arrays (peak 255); ``inf`` if identical."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs arrays of the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("psnr of empty arrays is undefined")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def activity(pixels: np.ndarray) -> float:
    """How much detail an 8-bit image (H, W[, C]) holds: the mean squared difference of
    vertically neighbouring pixels plus that of horizontally neighbouring ones (0-255 scale,
    all channels). 0 for a flat image. A codec's distortion at a given rate grows with it
    (docs/EXPERIMENTS.md, session 19: it predicts log MSE at every quality level)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"activity needs 8-bit pixels, got {pixels.dtype}")
    height, width = pixels.shape[:2]
    squares = np.arange(256, dtype=np.int64) ** 2
    vertical = horizontal = 0
    for top in range(0, height, ACTIVITY_ROWS):  # exact integer sums: |difference| histograms
        rows = pixels[top:min(height, top + ACTIVITY_ROWS + 1)].astype(np.int16)  # one row of overlap
        vertical += int(np.bincount(np.abs(np.diff(rows, axis=0)).ravel(), minlength=256) @ squares)
        horizontal += int(np.bincount(np.abs(np.diff(rows[:ACTIVITY_ROWS], axis=1)).ravel(), minlength=256) @ squares)
    channels = pixels.size // max(1, height * width)
    return (vertical / max(1, (height - 1) * width * channels)
            + horizontal / max(1, height * (width - 1) * channels))


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
