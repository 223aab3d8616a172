"""Tests for vqcodec.images (no torch needed)."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from vqcodec.images import (
    ImageInputError,
    compress_alpha,
    crop,
    decompress_alpha,
    encode_image_bytes,
    format_for_path,
    load_image,
    merge_planes,
    normalize_mode,
    pad_to_multiple,
    sample_image_path,
    save_image,
    split_alpha,
)


def _rgb(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- input kinds

def test_load_from_path_str_and_pathlike(tmp_path: pathlib.Path) -> None:
    arr = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    for src in (path, str(path)):
        img = load_image(src)
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_load_from_bytes_and_file_object() -> None:
    arr = _rgb()
    data = _png_bytes(Image.fromarray(arr))
    np.testing.assert_array_equal(np.asarray(load_image(data)), arr)
    np.testing.assert_array_equal(np.asarray(load_image(bytearray(data))), arr)
    np.testing.assert_array_equal(np.asarray(load_image(io.BytesIO(data))), arr)


def test_load_from_pil_does_not_alias_input() -> None:
    src = Image.fromarray(_rgb())
    img = load_image(src)
    assert img.mode == "RGB"
    before = src.getpixel((0, 0))
    img.putpixel((0, 0), tuple(255 - v for v in before))
    assert src.getpixel((0, 0)) == before


@pytest.mark.parametrize(
    "shape, mode",
    [((4, 5), "L"), ((4, 5, 1), "L"), ((4, 5, 2), "LA"), ((4, 5, 3), "RGB"), ((4, 5, 4), "RGBA")],
)
def test_load_from_numpy_shapes(shape: tuple[int, ...], mode: str) -> None:
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    img = load_image(arr)
    assert img.mode == mode
    assert img.size == (5, 4)
    np.testing.assert_array_equal(np.asarray(img).reshape(shape), arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 5), np.float32),
        np.zeros((4, 5, 3), np.uint16),
        np.zeros((4, 5, 5), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((2, 4, 5, 3), np.uint8),
    ],
)
def test_load_numpy_rejects_bad_dtype_or_shape(arr: np.ndarray) -> None:
    with pytest.raises(ImageInputError, match="accepted"):
        load_image(arr)


def test_load_rejects_zero_size() -> None:
    with pytest.raises(ImageInputError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageInputError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


def test_load_rejects_unsupported_source_type() -> None:
    with pytest.raises(ImageInputError):
        load_image(12345)  # type: ignore[arg-type]


# ---------------------------------------------------------------- EXIF / frames

def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(buf.getvalue())) as raw:
        assert raw.size == (40, 20)
    loaded = load_image(buf.getvalue())
    assert loaded.size == (20, 40)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("L", (4, 3), v).convert("P") for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buf.getvalue())) as check:
        assert check.n_frames == 2
    img = load_image(buf.getvalue())
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0, 0] == 10


# ---------------------------------------------------------------- modes

def test_mode_1_to_L() -> None:
    img = Image.new("1", (3, 2))
    img.putpixel((1, 0), 1)
    out = normalize_mode(img)
    assert out.mode == "L"
    assert out.getpixel((1, 0)) == 255 and out.getpixel((0, 0)) == 0


def test_palette_without_transparency_to_rgb() -> None:
    img = Image.fromarray(_rgb()).convert("P")
    out = load_image(_png_bytes(img))
    assert out.mode == "RGB"


def test_palette_with_transparency_to_rgba() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    out = load_image(_png_bytes(img))
    assert out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0
    assert out.getpixel((1, 1)) == (0, 255, 0, 255)


def test_palette_with_rgba_palette_to_rgba() -> None:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([10, 20, 30, 128, 40, 50, 60, 255], rawmode="RGBA")
    assert normalize_mode(img).mode == "RGBA"
    assert normalize_mode(img).getpixel((0, 0)) == (10, 20, 30, 128)


def test_pa_to_rgba() -> None:
    assert normalize_mode(Image.new("PA", (2, 2))).mode == "RGBA"


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_spaces_to_rgb(mode: str) -> None:
    img = Image.fromarray(_rgb()).convert(mode) if mode != "LAB" else Image.new("LAB", (5, 6))
    assert normalize_mode(img).mode == "RGB"


def test_cmyk_jpeg_to_rgb() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_scaled_to_L() -> None:
    values = np.array([[0, 257, 65535], [128, 129, 32896]], dtype=np.uint16)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    out = load_image(_png_bytes(src))
    assert out.mode == "L"
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(out), expected)
    np.testing.assert_array_equal(np.asarray(out), [[0, 1, 255], [0, 1, 128]])


def test_16bit_variants_scaled() -> None:
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    images = {
        "I;16": Image.fromarray(values),
        "I;16B": Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes()),
        "I;16L": Image.frombytes("I;16L", (3, 1), values.astype("<u2").tobytes()),
    }
    for mode, img in images.items():
        assert img.mode == mode
        out = normalize_mode(img)
        assert out.mode == "L", mode
        np.testing.assert_array_equal(np.asarray(out), [[0, 4, 255]])


@pytest.mark.parametrize("values,mode,expected", [
    (np.array([[-5, 0, 65535, 100000, 257 * 100]], dtype=np.int32), "I", [[0, 0, 255, 255, 100]]),
    (np.array([[-3.0, 0.4, 0.6, 127.7, 300.0]], dtype=np.float32), "F", [[0, 0, 1, 128, 255]]),
])
def test_wide_gray_clipped_and_scaled(values, mode, expected) -> None:
    """32-bit int gray is clipped to 16 bits and scaled; float gray is clipped to 0..255 and rounded."""
    img = Image.fromarray(values)
    assert img.mode == mode
    out = normalize_mode(img)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_premultiplied_modes() -> None:
    assert normalize_mode(Image.new("RGBa", (2, 2), (10, 10, 10, 255))).mode == "RGBA"
    assert normalize_mode(Image.new("La", (2, 2))).mode == "LA"


def test_other_mode_converted_to_rgb() -> None:
    assert normalize_mode(Image.new("RGBX", (2, 2))).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_normalized_modes_unchanged(mode: str) -> None:
    img = Image.new(mode, (2, 2))
    assert normalize_mode(img) is img


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("content", [b"", b"this is not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_bytes(content: bytes) -> None:
    with pytest.raises(ImageInputError, match="cannot read image"):
        load_image(content)


def test_real_file_handle(tmp_path: pathlib.Path) -> None:
    arr = _rgb()
    path = tmp_path / "h.png"
    Image.fromarray(arr).save(path)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(np.asarray(load_image(fh)), arr)


def test_truncated_png(tmp_path: pathlib.Path) -> None:
    data = _png_bytes(Image.fromarray(_rgb(64, 64)))
    path = tmp_path / "trunc.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="cannot read image '.*trunc.png'"):
        load_image(path)
    with pytest.raises(ImageInputError, match="cannot read image"):
        load_image(data[: len(data) // 2])


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageInputError, match="is a directory"):
        load_image(tmp_path)


def test_image_input_error_is_value_error() -> None:
    assert issubclass(ImageInputError, ValueError)


# ---------------------------------------------------------------- pad / crop

@pytest.mark.parametrize("h, w", [(1, 1), (7, 13), (16, 16), (17, 3)])
@pytest.mark.parametrize("multiple", [1, 8, 16])
def test_pad_crop_round_trip(h: int, w: int, multiple: int) -> None:
    arr = _rgb(h, w)
    padded = pad_to_multiple(arr, multiple)
    assert padded.shape[0] % multiple == 0 and padded.shape[1] % multiple == 0
    assert padded.shape[0] - h < multiple and padded.shape[1] - w < multiple
    np.testing.assert_array_equal(crop(padded, h, w), arr)
    # edge replication: the padding repeats the last row / column
    np.testing.assert_array_equal(padded[-1, :w], arr[-1])
    np.testing.assert_array_equal(padded[:h, -1], arr[:, -1])


def test_pad_rejects_bad_multiple() -> None:
    with pytest.raises(ValueError):
        pad_to_multiple(_rgb(), 0)


def test_crop_rejects_too_large() -> None:
    with pytest.raises(ValueError):
        crop(_rgb(4, 4), 5, 4)


# ---------------------------------------------------------------- alpha

def test_alpha_round_trip() -> None:
    alpha = np.random.default_rng(3).integers(0, 256, (7, 13), dtype=np.uint8)
    payload = compress_alpha(alpha)
    assert isinstance(payload, bytes)
    np.testing.assert_array_equal(decompress_alpha(payload, 7, 13), alpha)


def test_alpha_constant_compresses_well() -> None:
    alpha = np.full((256, 256), 255, np.uint8)
    payload = compress_alpha(alpha)
    assert len(payload) < 100
    np.testing.assert_array_equal(decompress_alpha(payload, 256, 256), alpha)


def test_alpha_corrupt_payload() -> None:
    with pytest.raises(ValueError, match="corrupt alpha"):
        decompress_alpha(b"\x00garbage\x01\x02", 4, 4)
    payload = compress_alpha(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="corrupt alpha"):
        decompress_alpha(payload[:-3], 4, 4)
    with pytest.raises(ValueError, match="corrupt alpha"):
        decompress_alpha(payload + b"trailing", 4, 4)


def test_alpha_wrong_size() -> None:
    payload = compress_alpha(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        decompress_alpha(payload, 4, 5)
    with pytest.raises(ValueError, match="expected"):
        decompress_alpha(payload, 2, 2)


# ---------------------------------------------------------------- planes

def test_split_merge_rgb_exact() -> None:
    arr = _rgb()
    rgb, alpha = split_alpha(Image.fromarray(arr))
    assert alpha is None and rgb.dtype == np.uint8 and rgb.shape == arr.shape
    out = merge_planes(rgb, alpha, "RGB")
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_split_merge_rgba_exact() -> None:
    arr = np.random.default_rng(4).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgb, alpha = split_alpha(Image.fromarray(arr))
    assert rgb.shape == (6, 5, 3) and alpha is not None and alpha.shape == (6, 5)
    out = merge_planes(rgb, alpha, "RGBA")
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_split_merge_gray_exact() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb, alpha = split_alpha(Image.fromarray(gray))
    assert alpha is None
    np.testing.assert_array_equal(rgb[:, :, 0], gray)
    np.testing.assert_array_equal(rgb[:, :, 1], gray)
    np.testing.assert_array_equal(rgb[:, :, 2], gray)
    out = merge_planes(rgb, None, "L")
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), gray)


def test_split_merge_gray_alpha_exact() -> None:
    la = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16),
                   np.arange(255, -1, -1, dtype=np.uint8).reshape(16, 16)], axis=2)
    rgb, alpha = split_alpha(Image.fromarray(la))
    assert alpha is not None
    out = merge_planes(rgb, alpha, "LA")
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), la)


def test_merge_validates() -> None:
    rgb = _rgb()
    with pytest.raises(ValueError):
        merge_planes(rgb, None, "RGBA")
    with pytest.raises(ValueError):
        merge_planes(rgb, np.zeros((6, 5), np.uint8), "RGB")
    with pytest.raises(ValueError):
        merge_planes(rgb, np.zeros((5, 6), np.uint8), "RGBA")
    with pytest.raises(ValueError):
        merge_planes(rgb[:, :, :2], None, "RGB")
    with pytest.raises(ValueError):
        merge_planes(rgb.astype(np.float32), None, "RGB")
    with pytest.raises(ValueError):
        merge_planes(rgb, None, "CMYK")


# ---------------------------------------------------------------- saving

@pytest.mark.parametrize(
    "suffix, fmt",
    [(".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"),
     (".bmp", "BMP"), (".tif", "TIFF"), (".tiff", "TIFF"), (".ppm", "PPM"), (".PNG", "PNG")],
)
def test_save_by_suffix(tmp_path: pathlib.Path, suffix: str, fmt: str) -> None:
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            pytest.skip("Pillow built without WebP support")
    path = tmp_path / f"out{suffix}"
    img = Image.fromarray(_rgb(16, 16))
    save_image(img, path)
    with Image.open(path) as back:
        assert back.format == fmt
        assert back.size == (16, 16)


def test_save_png_lossless(tmp_path: pathlib.Path) -> None:
    arr = np.random.default_rng(5).integers(0, 256, (9, 7, 4), dtype=np.uint8)
    path = tmp_path / "a.png"
    save_image(Image.fromarray(arr), path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), arr)


def test_save_jpeg_with_alpha(tmp_path: pathlib.Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 128))
    save_image(rgba, tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as back:
        assert back.mode == "RGB"
    la = Image.new("LA", (8, 8), (100, 50))
    save_image(la, tmp_path / "b.jpeg")
    with Image.open(tmp_path / "b.jpeg") as back:
        assert back.mode == "L"


def test_save_la_to_bmp_falls_back(tmp_path: pathlib.Path) -> None:
    save_image(Image.new("LA", (4, 4), (100, 50)), tmp_path / "x.bmp")
    assert load_image(tmp_path / "x.bmp").size == (4, 4)


def test_save_explicit_format(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "noext"
    save_image(Image.fromarray(_rgb()), path, format="PNG")
    with Image.open(path) as back:
        assert back.format == "PNG"


def test_format_for_path() -> None:
    assert format_for_path("a/b.JPG") == "JPEG"
    with pytest.raises(ImageInputError, match="suffix"):
        format_for_path("a/b.xyz")


def test_save_unknown_suffix(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageInputError, match=r"\.png"):
        save_image(Image.fromarray(_rgb()), tmp_path / "out.xyz")
    with pytest.raises(ImageInputError):
        save_image(Image.fromarray(_rgb()), tmp_path / "noext")
    assert not (tmp_path / "out.xyz").exists()


def test_encode_image_bytes() -> None:
    data = encode_image_bytes(Image.fromarray(_rgb()), "png")
    assert data.startswith(b"\x89PNG")
    assert encode_image_bytes(Image.new("RGBA", (4, 4)), "JPEG").startswith(b"\xff\xd8")
    with pytest.raises(ImageInputError):
        encode_image_bytes(Image.fromarray(_rgb()), "NOSUCHFORMAT")


# ---------------------------------------------------------------- data

def test_sample_image() -> None:
    path = sample_image_path()
    assert path.is_file()
    assert path.stat().st_size < 200_000
    img = load_image(path)
    assert img.size == (256, 256)
    assert img.mode == "RGB"
    assert np.asarray(img).std() > 10  # a real photo, not a flat image
