"""The per-image colour correction (vqcodec.color_correction): its bytes, its exact integer
arithmetic, the encoder's fit and choice, and files that carry one (format version 3)."""
import binascii
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vqcodec
from vqcodec import container
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
    correction = ColorCorrection((0, -1, 63, 64, -65, 8191, -8191, (1 << 16) - 1, -(1 << 13) + 1, 5, 0, -300))
    data = correction.to_bytes()
    assert ColorCorrection.from_bytes(data) == correction
    for bad in (data[:-1], data + b"\x00", b"", data[:-1] + bytes([data[-1] | 0x80]),  # cut short, extra, open
                b"\x80\x00" + data[1:]):  # a varint with a needless byte
        with pytest.raises(ValueError):
            ColorCorrection.from_bytes(bad)
    for bad_weights in ((0,) * 11, (8192,) + (0,) * 11, (0,) * 11 + (1 << 16,)):  # count, weight, bias out of range
        with pytest.raises(ValueError):
            ColorCorrection(bad_weights)


def test_the_arithmetic_is_the_documented_integer_formula():
    pixels = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    weights = (256, 0, 0, 0,  # R: + R (doubles it)
               0, -128, 0, 128,  # G: - G / 2 + 1/2
               64, 64, 64, -512)  # B: + (R + G + B) / 4 - 2
    out = ColorCorrection(weights).apply(pixels)
    x = pixels.astype(np.int64)
    w = np.array(weights).reshape(3, 4)
    expected = x + np.floor(((x @ w[:, :3].T + w[:, 3]) / 2 ** SHIFT) + 0.5).astype(np.int64)
    assert np.array_equal(out, np.clip(expected, 0, 255))
    assert out[0, 0].tolist() == [0, 65, 255] and out[0, 1].tolist() == [20, 11, 43]
    assert np.array_equal(ColorCorrection((0,) * 12).apply(pixels), pixels)


def test_the_fit_undoes_a_colour_cast_and_choose_keeps_it_only_when_it_pays(photo):
    original = photo_crop(photo, 64, 48)
    dull = np.clip(original * 0.7 + 40 + np.array([10, 0, -10]), 0, 255).astype(np.uint8)
    corrected = fit(dull, original).apply(dull)
    assert psnr(corrected, original) > psnr(dull, original) + 10
    assert choose(dull, original, 500) is not None
    assert choose(original, original, 500) is None  # nothing to correct
    assert choose(dull, original, 10 ** 9) is not None  # ... a gain is worth more in a larger file


def test_low_levels_carry_a_correction_that_improves_the_picture(photo, photo2):
    image = photo_crop(photo, 96, 64)
    with_it, without = vqcodec.encode(image, quality=1), vqcodec.encode(image, quality=1, color_correction=False)
    parsed = container.unpack(with_it)
    assert parsed.version == 3 and parsed.correction and container.unpack(without).version == 2
    assert parsed.index_payload == container.unpack(without).index_payload  # the same indices
    assert psnr(vqcodec.decode(with_it), image) > psnr(vqcodec.decode(without), image)
    assert vqcodec.decode(with_it) == vqcodec.decode(with_it)


def test_the_default_keeps_fine_levels_and_gray_images_as_they_were(photo, photo2):
    image = photo_crop(photo, 64, 64)
    assert container.unpack(vqcodec.encode(image, quality=9)).version == 2  # stride-4 grids: no time for it
    gray = Image.fromarray(image).convert("L")
    assert container.unpack(vqcodec.encode(gray, quality=1)).version == 2
    assert container.unpack(vqcodec.encode(photo, quality=9, color_correction=True)).correction  # when asked


def test_a_corrupt_correction_is_refused(photo, photo2):
    data = vqcodec.encode(photo_crop(photo, 32, 32), quality=1, color_correction=True)
    parsed = container.unpack(data)
    assert parsed.correction
    body = data[:-len(parsed.correction) - 2] + b"\xff" * len(parsed.correction)  # a varint that never ends
    with pytest.raises(VqzError, match="corrupt colour correction"):
        vqcodec.decode(body + struct.pack("<H", binascii.crc_hqx(body, 0)))


def test_the_cli_option_turns_it_off(tmp_path, photo, photo2):
    Image.fromarray(photo_crop(photo, 32, 32)).save(tmp_path / "a.png")
    runner = CliRunner()
    assert runner.invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "1"]).exit_code == 0
    assert container.unpack((tmp_path / "a.vqz").read_bytes()).version == 3
    result = runner.invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "1", "--no-color-correction", "--force"])
    assert result.exit_code == 0 and container.unpack((tmp_path / "a.vqz").read_bytes()).version == 2
