"""Tests for vqcodec.metrics: PSNR, Bjøntegaard delta rate, MS-SSIM, activity (no torch needed)."""
import math

import numpy as np
import pytest
from PIL import Image

from vqcodec import metrics


def test_psnr_known_values() -> None:
    a = np.zeros((4, 4), np.uint8)
    assert metrics.psnr(a, a) == float("inf")
    b = np.full((4, 4), 1, np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255))  # MSE 1 -> 48.13 dB
    c = np.full((4, 4), 255, np.uint8)
    assert metrics.psnr(a, c) == pytest.approx(0.0)
    d = a.copy()
    d[0, 0] = 16  # MSE = 256 / 16 = 16
    assert metrics.psnr(a, d) == pytest.approx(10 * math.log10(255**2 / 16))
    assert metrics.psnr(a, b) == metrics.psnr(b, a)


def test_psnr_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))


REFERENCE = [(0.1, 26.0), (0.2, 28.5), (0.4, 31.0), (0.8, 34.0)]


def test_bd_rate_known_answers():
    cheaper = [(bpp * 0.8, psnr) for bpp, psnr in REFERENCE]
    assert metrics.bd_rate(REFERENCE, cheaper) == pytest.approx(-20.0, abs=0.1)
    assert metrics.bd_rate(cheaper, REFERENCE) == pytest.approx(25.0, abs=0.1)
    assert metrics.bd_rate(REFERENCE, REFERENCE) == pytest.approx(0.0, abs=1e-9)
    assert metrics.bd_rate(REFERENCE, [(0.3, 40.0), (0.9, 42.0)]) is None  # no PSNR overlap
    assert metrics.bd_rate(REFERENCE, [(0.3, 30.0)]) is None  # one point
    assert metrics.bd_rate(REFERENCE, [(1.5, 30.0), (2.0, 33.0)]) is None  # all above max_bpp
    assert metrics.bd_rate(REFERENCE, [(1.5, 30.0), (2.0, 33.0)], max_bpp=4) is not None
    small_images = [(bpp * 20, psnr) for bpp, psnr in REFERENCE]  # such as 28x28 digits: all above 1 bpp
    assert metrics.bd_rate(small_images, [(bpp * 0.8, psnr) for bpp, psnr in small_images],
                         max_bpp=float("inf")) == pytest.approx(-20.0, abs=0.1)


def test_bd_rate_pchip_is_exact_on_piecewise_linear_and_monotone():
    # Two points: PCHIP is the straight line, so the integral is the trapezoid.
    ref = [(0.1, 30.0), (0.4, 34.0)]
    test = [(0.2, 30.0), (0.4, 34.0)]
    expected = 100 * (np.exp((np.log(0.2) - np.log(0.1)) / 2) - 1)
    assert metrics.bd_rate(ref, test) == pytest.approx(expected, rel=1e-9)
    # Fritsch-Carlson slopes keep monotone data monotone (no overshoot).
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 0.0, 1.0, 1.0, 5.0])
    slopes = metrics._pchip_slopes(x, y)
    assert np.all(slopes >= 0) and slopes[1] == 0 and slopes[3] == 0


def test_ms_ssim_identity_and_noise(photo):
    img = np.asarray(photo)
    assert metrics.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    values = [metrics.ms_ssim(img, np.clip(img + rng.normal(0, sd, img.shape), 0, 255).astype(np.uint8))
              for sd in (2, 10, 40)]
    assert 1 > values[0] > values[1] > values[2] > 0
    small = img[:20, :30]
    assert metrics.ms_ssim(small, small) == pytest.approx(1.0, abs=1e-6)
    tiny = img[:5, :7]
    assert 0 < metrics.ms_ssim(tiny, 255 - tiny) < 1
    with pytest.raises(ValueError):
        metrics.ms_ssim(img, img[:-1])


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (6, 1), (metrics.ACTIVITY_ROWS + 1, 3, 3),
                                   (2 * metrics.ACTIVITY_ROWS + 5, 4)])
def test_activity_is_the_mean_squared_difference_of_neighbouring_pixels(shape):
    pixels = np.random.default_rng(len(shape) * 100 + shape[0]).integers(0, 256, shape, dtype=np.uint8)
    x = pixels.astype(np.float64)
    vertical = np.mean(np.diff(x, axis=0) ** 2) if shape[0] > 1 else 0.0  # across the row chunks too
    horizontal = np.mean(np.diff(x, axis=1) ** 2) if shape[1] > 1 else 0.0
    assert metrics.activity(pixels) == pytest.approx(vertical + horizontal, rel=1e-12)


def test_activity_is_zero_for_a_flat_image_and_grows_with_detail(photo):
    assert metrics.activity(np.full((40, 30, 3), 77, np.uint8)) == 0.0
    rgb = np.asarray(photo.convert("RGB"))
    blurred = np.asarray(photo.convert("RGB").resize((rgb.shape[1] // 4, rgb.shape[0] // 4)).resize(
        (rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
    assert 0 < metrics.activity(blurred) < metrics.activity(rgb)
    with pytest.raises(ValueError, match="8-bit"):
        metrics.activity(rgb.astype(np.float32))
