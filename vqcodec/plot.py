"""The RD plot of a benchmark's results (needs matplotlib, an optional dependency)."""
from __future__ import annotations

import io
import math

from .bench import LABELS

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

