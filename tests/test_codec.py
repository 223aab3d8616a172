import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from vqcodec import codec, container, entropy, inference, zoo
from vqcodec.container import VqzError
from vqcodec.metrics import psnr

from conftest import installed_model, photo_crop


@pytest.fixture(scope="module")
def top(default_model) -> int:
    """The default model's top quality level."""
    return max(default_model.info()["quality_levels"])


@pytest.fixture(scope="module")
def photo_base_top() -> int:
    """The photo model's (a VQ-VAE with an enhancement layer) top level without that layer."""
    entry = installed_model("photo")
    return zoo.levels_of(zoo.load(entry), zoo.load_enhance(entry)).base


def round_trip(image, **kwargs):
    data = vqcodec.encode(image, **kwargs)
    return data, vqcodec.decode(data)


@pytest.mark.parametrize("width,height", [(1, 1), (7, 13), (13, 7), (769, 513)])
def test_odd_sizes_round_trip_to_exact_size(photo, width, height, top):
    arr = photo_crop(photo, width, height)
    data, out = round_trip(arr, quality=top)
    assert out.size == (width, height) and out.mode == "RGB"
    if width * height > 1000:
        assert psnr(arr, np.asarray(out)) > 22


def test_public_api_is_exported():
    assert set(vqcodec.__all__) == {"encode", "decode", "read_indices", "decode_indices", "Indices", "IndexLayer",
                                    "list_models", "load_model", "keep_freed_memory", "VqzError", "__version__"}
    assert issubclass(vqcodec.VqzError, ValueError)
    assert isinstance(vqcodec.load_model(), torch.nn.Module)
    assert any(m["default"] for m in vqcodec.list_models())


def test_higher_quality_costs_more_bytes_and_looks_better(photo, top):
    arr = np.asarray(photo)
    low_data, low = round_trip(arr, quality=1)
    high_data, high = round_trip(arr, quality=top)
    assert len(high_data) > len(low_data)
    assert psnr(arr, np.asarray(high)) > psnr(arr, np.asarray(low)) + 1.0


def test_gray_stays_gray(photo, top):
    gray = photo.convert("L")
    _, out = round_trip(gray, quality=top)
    assert out.mode == "L" and out.size == gray.size
    assert psnr(np.asarray(gray), np.asarray(out)) > 22


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_exactly(photo, mode):
    base = photo.convert(mode[:-1])
    alpha = Image.fromarray(np.random.default_rng(1).integers(0, 256, (photo.height, photo.width), dtype=np.uint8))
    base.putalpha(alpha)
    _, out = round_trip(base, quality=2)
    assert out.mode == mode and out.size == base.size
    np.testing.assert_array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))


@pytest.mark.parametrize("make,expected_mode", [
    (lambda im: im.convert("P"), "RGB"),
    (lambda im: im.convert("CMYK"), "RGB"),
    (lambda im: Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257), "L"),
])
def test_converted_modes(photo, make, expected_mode):
    _, out = round_trip(make(photo), quality=1)
    assert out.mode == expected_mode and out.size == photo.size


def test_path_and_bytes_inputs(tmp_path, photo):
    path = tmp_path / "in.png"
    photo.save(path)
    assert vqcodec.encode(path, quality=2) == vqcodec.encode(path.read_bytes(), quality=2)
    assert vqcodec.encode(str(path), quality=2) == vqcodec.encode(photo, quality=2)


def test_exif_orientation_is_applied(photo):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    photo.crop((0, 0, 64, 32)).save(buffer, "JPEG", exif=exif, quality=95)
    _, out = round_trip(buffer.getvalue(), quality=1)
    assert out.size == (32, 64)


def test_indices_survive_container_and_zstd_exactly(photo, photo_base_top):
    model = vqcodec.load_model("photo")
    data = vqcodec.encode(photo, quality=photo_base_top, model="photo", coder="zstd")
    parsed = container.unpack(data)
    stride = model.config.stride
    shape = (photo.height // stride, photo.width // stride)
    grids = entropy.zstd_decode(parsed.index_payload, [shape] * photo_base_top)
    z = inference.encode_latents(model, np.asarray(photo), inference.Policy.default())
    expected = model.quantizer.quantize(z, photo_base_top)[0].numpy()
    np.testing.assert_array_equal(np.stack(grids), expected)
    assert parsed.header.quality == photo_base_top and len(grids) == photo_base_top and parsed.header.coder == "zstd"
    assert parsed.header.layers == (container.Layer(stride, photo_base_top),)


def test_prior_is_the_default_coder_and_codes_nearest_indices_smaller_than_zstd(photo):
    """The photo model (a VQ-VAE): its zstd files hold the nearest codes, as its nearest-code
    prior files do."""
    top = max(installed_model("photo").info()["quality_levels"])
    nearest = codec.encode_image(photo, quality=top, model="photo", rate_tradeoff=0)
    zstd = codec.encode_image(photo, quality=top, model="photo", coder="zstd")
    assert nearest.header.coder == "prior" and nearest.header.index_crc32 == zstd.header.index_crc32
    assert len(nearest.data) < len(zstd.data)
    tuned = codec.encode_image(photo, quality=top, model="photo")  # rate-aware indices: fewer bits still
    assert len(tuned.data) < len(nearest.data)
    for a, b in zip(codec.read_indices(nearest.data).layers, codec.read_indices(zstd.data).layers):
        assert a.stride == b.stride and np.array_equal(a.indices, b.indices)


def test_encoding_is_deterministic(photo):
    assert vqcodec.encode(photo, quality=3) == vqcodec.encode(photo, quality=3)


@pytest.mark.parametrize("quality", [0, "top + 1", -1, 2.5, True])
def test_bad_quality_is_refused(photo, quality, top):
    quality = top + 1 if quality == "top + 1" else quality
    with pytest.raises(ValueError, match="quality must be an integer"):
        vqcodec.encode(photo, quality=quality)


def test_unknown_model_and_coder_are_refused(photo):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        vqcodec.encode(photo, model="nope")
    with pytest.raises(ValueError, match="unknown coder"):
        vqcodec.encode(photo, coder="lzma")


def _rewrite(data: bytes, **changes) -> bytes:
    parsed = container.unpack(data)
    header = container.Header(**{**parsed.header.to_dict(), **changes})
    return container.pack(header, parsed.index_payload, parsed.alpha_payload, parsed.metadata)


def test_file_from_unknown_model_names_its_hash_prefix(photo):
    data = _rewrite(vqcodec.encode(photo, quality=1), model_prefix="ab" * 8)
    with pytest.raises(VqzError, match=r"made by the model whose sha256 starts with (ab){8}, which is not installed "
                                       r"\(installed: .*'photo' [0-9a-f]{16}"):
        vqcodec.decode(data)


def test_wrong_index_checksum_is_detected(photo):
    data = vqcodec.encode(photo, quality=1)
    crc = container.unpack(data).header.index_crc32
    with pytest.raises(VqzError, match="index checksum"):
        vqcodec.decode(_rewrite(data, index_crc32=crc ^ 1))


@pytest.mark.parametrize("layers, problem", [
    (((16, 1),), "its layer 1 has stride 8, not 16"),
    (((8, 9),), "its stride-8 layer has 8 stages, not 9"),
    (((8, 2), (4, 1)), "its stride-4 layer builds on 4 stages of the stride-8 layer, not 2"),
    (((4, 1),), "its layer 1 has stride 8, not 4"),
    (((8, 4), (4, 1), (2, 1)), "it has 2 layer"),
])
def test_a_structure_the_model_cannot_decode_is_refused(photo, layers, problem):
    data = _rewrite(vqcodec.encode(photo, quality=1, model="photo", coder="zstd"), layers=layers)
    with pytest.raises(VqzError, match=rf"model 'photo' cannot decode the layers of this file \(.*\): {problem}"):
        vqcodec.decode(data)


def test_a_payload_that_does_not_fit_the_image_is_refused(photo):
    data = _rewrite(vqcodec.encode(photo, quality=1, coder="zstd"), width=photo.width * 2)
    with pytest.raises(VqzError, match="corrupt index payload: index payload holds .* the grid shapes need"):
        vqcodec.decode(data)


@pytest.mark.parametrize("coder, message", [("zstd", "corrupt index payload"),
                                            ("prior", "corrupt index payload|index checksum")])
def test_corrupt_index_payload_is_a_vqz_error(photo, coder, message):
    data = vqcodec.encode(photo, quality=1, coder=coder)
    parsed = container.unpack(data)
    bad = container.pack(parsed.header, b"\x00" * len(parsed.index_payload))
    with pytest.raises(VqzError, match=message):
        vqcodec.decode(bad)


def test_tiny_prior_payload_claiming_a_huge_grid_fails_before_decoding():
    """How fast the refusal is: benchmarks/decode_refusal.py."""
    small = vqcodec.encode(np.zeros((8, 8, 3), np.uint8), quality=8)
    header = container.unpack(small).header
    big = replace(header, width=8000, height=8000)
    with pytest.raises(VqzError, match="cannot hold"):
        vqcodec.decode(container.pack(big, container.unpack(small).index_payload))


def test_flipped_bit_fails_the_check(photo):
    data = bytearray(vqcodec.encode(photo, quality=1))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(VqzError, match="CRC-16 mismatch"):
        vqcodec.decode(bytes(data))


def test_pixel_limit_applies_before_decoding(photo):
    data = vqcodec.encode(photo, quality=1)
    with pytest.raises(VqzError, match="exceeds the limit"):
        vqcodec.decode(data, max_pixels=100)


def test_describe_reports_header_and_sizes(photo):
    data = vqcodec.encode(photo, quality=2)
    fields = codec.describe(data)
    assert fields["file_bytes"] == len(data) and fields["quality"] == 2
    assert fields["model_installed"] is True
    assert fields["bpp"] == pytest.approx(len(data) * 8 / (photo.width * photo.height))


@pytest.mark.parametrize("quality", [2, 9])
def test_hierarchy_grids_are_the_grids_the_codec_writes(photo, quality):
    """What a prior refit trains on (codec.hierarchy_grids) is what files hold, level by level."""
    entry = installed_model("photo2")
    model, priors = zoo.load_hierarchy(entry)
    arr = photo_crop(photo, 72, 56)
    grids = codec.hierarchy_grids(model, priors, arr, quality)
    data = vqcodec.encode(arr, quality=quality, model="photo2", color_correction=False)
    written = [grid for layer in vqcodec.read_indices(data).layers for grid in layer.indices]
    assert len(grids) == len(written) and all(np.array_equal(a, b) for a, b in zip(grids, written))
