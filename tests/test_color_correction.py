"""The per-image colour correction (vqcodec.color_correction): its bytes, its exact integer
arithmetic, the encoder's fit and choice, and files that carry one (format version 3)."""
import binascii
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vqcodec
from vqcodec import codec, container
from vqcodec.cli import main
from vqcodec.color_correction import SHIFT, ColorCorrection, choose, fit
from vqcodec.container import VqzError

from conftest import installed_model, photo_crop


@pytest.fixture(scope="module")
def photo2():
    return installed_model("photo2")


def psnr(a, b) -> float:
    return 10 * np.log10(255 ** 2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def test_bytes_round_trip_and_anything_else_is_refused():
    for correction in (ColorCorrection(1, (0, -1, 63, 64, -65, 8191, -8192, (1 << 20) - 1, -(1 << 20) + 1, 5, 0, -300)),
                       ColorCorrection(2, tuple(range(-15, 15)))):
        data = correction.to_bytes()
        assert ColorCorrection.from_bytes(data) == correction and data[0] == correction.degree
        for bad in (data[:-1], data + b"\x00", b"", bytes([3]) + data[1:],  # cut short, extra, none, unknown degree
                    data[:-1] + bytes([data[-1] | 0x80]),  # a varint left open
                    data[:1] + b"\x80\x00" + data[2:]):  # a varint with a needless byte
            with pytest.raises(ValueError):
                ColorCorrection.from_bytes(bad)
    for degree, weights in ((1, (0,) * 11), (2, (0,) * 12), (3, (0,) * 60), (1, (1 << 20,) + (0,) * 11)):
        with pytest.raises(ValueError):
            ColorCorrection(degree, weights)


def test_the_arithmetic_is_the_documented_integer_formula():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = (0, 0, 0), (255, 255, 255)  # the extremes
    for degree in (1, 2):
        weights = tuple(int(w) for w in rng.integers(-3000, 3000, 3 * (4 if degree == 1 else 10)))
        out = ColorCorrection(degree, weights).apply(pixels)
        u = pixels.reshape(-1, 3).astype(object) - 128  # Python integers: exact
        w = np.array(weights, dtype=object).reshape(3, -1)
        monomials = [128 * 128 + 0 * u[:, 0]] + [128 * u[:, c] for c in range(3)]
        if degree == 2:
            monomials += [u[:, a] * u[:, b] for a, b in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]
        total = np.stack(monomials, 1) @ w.T  # 128 x 2**SHIFT x the change
        change = (total + 2 ** (SHIFT + 6)) // 2 ** (SHIFT + 7)  # floor(total / 2**(SHIFT + 7) + 1/2)
        expected = np.clip(pixels.reshape(-1, 3) + change, 0, 255).astype(np.uint8).reshape(pixels.shape)
        assert np.array_equal(out, expected)
    assert np.array_equal(ColorCorrection(2, (0,) * 30).apply(pixels), pixels)


def test_the_fit_undoes_a_colour_cast_and_choose_keeps_it_only_when_it_pays(photo):
    original = photo_crop(photo, 64, 48)
    dull = np.clip(original * 0.7 + 40 + np.array([10, 0, -10]), 0, 255).astype(np.uint8)
    assert psnr(fit(dull, original, 1).apply(dull), original) > psnr(dull, original) + 10
    toned = np.clip(255 * (original / 255.0) ** 1.6, 0, 255).astype(np.uint8)  # a tone curve: degree 2 helps
    assert psnr(fit(toned, original, 2).apply(toned), original) > psnr(fit(toned, original, 1).apply(toned),
                                                                     original) + 1
    assert choose(dull, original, 500) is not None
    assert choose(original, original, 500) is None  # nothing to correct
    assert choose(toned, original, 10 ** 6).degree == 2


def test_low_levels_carry_a_correction_that_improves_the_picture(photo, photo2):
    image = photo_crop(photo, 224, 160)
    with_it, without = vqcodec.encode(image, quality=1), vqcodec.encode(image, quality=1, color_correction=False)
    parsed = container.unpack(with_it)
    assert parsed.version == 3 and parsed.correction and container.unpack(without).version == 2
    assert parsed.index_payload == container.unpack(without).index_payload  # the same indices
    info = codec.describe(with_it)  # what `vqcodec info` shows
    assert info["format_version"] == 3 and info["correction_bytes"] == len(parsed.correction)
    assert psnr(vqcodec.decode(with_it), image) > psnr(vqcodec.decode(without), image)
    assert vqcodec.decode(with_it) == vqcodec.decode(with_it)


def test_the_default_keeps_fine_levels_and_gray_images_as_they_were(photo, photo2):
    image = photo_crop(photo, 64, 64)
    assert container.unpack(vqcodec.encode(image, quality=9)).version == 2  # stride-4 grids: no time for it
    gray = Image.fromarray(image).convert("L")
    assert container.unpack(vqcodec.encode(gray, quality=1)).version == 2
    assert container.unpack(vqcodec.encode(photo, quality=9, color_correction=True)).correction  # when asked


def test_a_corrupt_correction_is_refused(photo, photo2):
    data = vqcodec.encode(photo_crop(photo, 224, 160), quality=1, color_correction=True)
    parsed = container.unpack(data)
    assert parsed.correction
    body = data[:-len(parsed.correction) - 2] + b"\xff" * len(parsed.correction)  # a varint that never ends
    with pytest.raises(VqzError, match="corrupt colour correction"):
        vqcodec.decode(body + struct.pack("<H", binascii.crc_hqx(body, 0)))


def test_the_cli_option_turns_it_off(tmp_path, photo, photo2):
    Image.fromarray(photo_crop(photo, 224, 160)).save(tmp_path / "a.png")
    runner = CliRunner()
    assert runner.invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "1"]).exit_code == 0
    assert container.unpack((tmp_path / "a.vqz").read_bytes()).version == 3
    result = runner.invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "1", "--no-color-correction", "--force"])
    assert result.exit_code == 0 and container.unpack((tmp_path / "a.vqz").read_bytes()).version == 2
