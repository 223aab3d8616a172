import io

import numpy as np
import pytest
from PIL import Image

from vqcodec import images
from vqcodec.images import ImageInputError


def gradient(h=6, w=9):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 20, y * 30, (x + y) * 10], axis=-1).astype(np.uint8)


def png_bytes(img):
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape,mode", [((4, 5), "L"), ((4, 5, 1), "L"), ((4, 5, 2), "LA"),
                                        ((4, 5, 3), "RGB"), ((4, 5, 4), "RGBA")])
def test_numpy_inputs(shape, mode):
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    img = images.load_image(arr)
    assert img.mode == mode and img.size == (5, 4)
    np.testing.assert_array_equal(np.asarray(img).reshape(shape), arr)


@pytest.mark.parametrize("arr", [np.zeros((4, 5, 3), np.float32), np.zeros((4, 5, 5), np.uint8),
                                 np.zeros((0, 5, 3), np.uint8), np.zeros(5, np.uint8)])
def test_bad_arrays_are_refused(arr):
    with pytest.raises(ImageInputError):
        images.load_image(arr)


def test_path_bytes_file_and_pil_inputs_agree(tmp_path):
    img = Image.fromarray(gradient())
    path = tmp_path / "g.png"
    img.save(path)
    loaded = [images.load_image(path), images.load_image(str(path)), images.load_image(path.read_bytes()),
              images.load_image(open(path, "rb")), images.load_image(img)]
    for other in loaded:
        np.testing.assert_array_equal(np.asarray(other), gradient())


def test_exif_orientation_is_applied():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient(6, 9)).save(buffer, "JPEG", exif=exif)
    assert images.load_image(buffer.getvalue()).size == (6, 9)


def test_sixteen_bit_gray_is_scaled_to_eight_bits():
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    img = images.load_image(png_bytes(Image.fromarray(values)))
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 1, 255, 128]]


def test_palette_with_transparency_becomes_rgba_and_without_rgb():
    pal = Image.fromarray(gradient()).convert("P")
    assert images.load_image(png_bytes(pal)).mode == "RGB"
    pal.info["transparency"] = 0
    buffer = io.BytesIO()
    pal.save(buffer, "PNG", transparency=0)
    assert images.load_image(buffer.getvalue()).mode == "RGBA"


@pytest.mark.parametrize("mode,expected", [("CMYK", "RGB"), ("1", "L"), ("YCbCr", "RGB"), ("F", "L"),
                                           ("RGBA", "RGBA"), ("LA", "LA")])
def test_modes_are_normalised(mode, expected):
    assert images.load_image(Image.fromarray(gradient()).convert(mode)).mode == expected


@pytest.mark.parametrize("content", [b"", b"hello, not an image", png_bytes(Image.fromarray(gradient(64, 64)))[:80]])
def test_unreadable_bytes_are_image_input_errors(content):
    with pytest.raises(ImageInputError, match="cannot read image"):
        images.load_image(content)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        images.load_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError, match="is a directory"):
        images.load_image(tmp_path)


@pytest.mark.parametrize("h,w", [(1, 1), (7, 13), (16, 16)])
def test_pad_and_crop_round_trip(h, w):
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    padded = images.pad_to_multiple(arr, 8)
    assert padded.shape[0] % 8 == 0 and padded.shape[1] % 8 == 0
    assert (padded[-1, -1] == arr[-1, -1]).all()  # edge replication
    np.testing.assert_array_equal(images.crop(padded, h, w), arr)


def test_alpha_round_trip_is_exact_and_corruption_is_detected():
    alpha = np.random.default_rng(0).integers(0, 256, (7, 13), dtype=np.uint8)
    payload = images.compress_alpha(alpha)
    np.testing.assert_array_equal(images.decompress_alpha(payload, 7, 13), alpha)
    with pytest.raises(ValueError, match="corrupt alpha"):
        images.decompress_alpha(payload, 13, 13)
    with pytest.raises(ValueError, match="corrupt alpha"):
        images.decompress_alpha(b"\x00" + payload[1:], 7, 13)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_merge_planes_inverts_split_alpha(mode):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8), "RGBA").convert(mode)
    rgb, alpha = images.split_alpha(img)
    assert rgb.shape == (5, 6, 3) and (alpha is None) == (mode in ("L", "RGB"))
    back = images.merge_planes(rgb, alpha, mode)
    assert back.mode == mode
    np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


def test_save_image_by_suffix(tmp_path):
    rgba = Image.fromarray(np.full((4, 4, 4), 100, np.uint8), "RGBA")
    for suffix, fmt in [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF")]:
        images.save_image(rgba, tmp_path / f"x{suffix}")
        with Image.open(tmp_path / f"x{suffix}") as out:
            assert out.format == fmt and out.size == (4, 4)
    with pytest.raises(ImageInputError, match="cannot choose an output format"):
        images.save_image(rgba, tmp_path / "x.nope")


def test_psnr_known_values():
    a = np.zeros((2, 2), np.uint8)
    assert images.psnr(a, a) == float("inf")
    assert images.psnr(a, a + 1) == pytest.approx(20 * np.log10(255))
    assert images.psnr(a, np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0)


def test_sample_image_is_shipped():
    img = images.load_image(images.sample_image_path())
    assert img.size == (256, 256) and img.mode == "RGB"
