"""The Pillow plugin: `import vqcodec` makes Image.open / Image.save handle .vqz."""
import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import vqcodec
from vqcodec import codec, container, pil_plugin, zoo

from conftest import photo_crop


@pytest.fixture
def rgb(photo):
    return Image.fromarray(photo_crop(photo, 40, 24))


@pytest.fixture
def vqz(tmp_path, rgb):
    path = tmp_path / "pic.vqz"
    rgb.save(path, quality=2)
    return path


def test_format_is_registered():
    assert Image.registered_extensions()[".vqz"] == "VQZ"
    assert "VQZ" in Image.OPEN and "VQZ" in Image.SAVE
    assert Image.MIME["VQZ"] == "image/x-vqz"


def test_save_then_open_decodes(vqz, rgb):
    data = vqz.read_bytes()
    assert data.startswith(container.MAGIC)
    with Image.open(vqz) as im:
        assert im.format == "VQZ" and im.get_format_mimetype() == "image/x-vqz"
        assert im.size == (40, 24) and im.mode == "RGB"
        assert im.info["vqz"]["quality"] == 2
        assert zoo.find().sha256.startswith(im.info["vqz"]["model_prefix"])  # the default model
        pixels = np.asarray(im)
        assert im.fp is None  # the file is closed once the pixels are in memory
    assert np.array_equal(pixels, np.asarray(codec.decode(data)))
    assert pixels.shape == (24, 40, 3)


def test_save_params_model_and_coder(tmp_path, rgb):
    coder = "zstd"  # the memoryless coder, which every model can use
    assert coder in codec.CODERS
    model = vqcodec.list_models()[0]["name"]
    rgb.save(tmp_path / "a.vqz", quality=1, model=model, coder=coder)
    header = codec.describe((tmp_path / "a.vqz").read_bytes())
    assert (header["quality"], header["model_name"], header["coder"]) == (1, model, coder)


@pytest.mark.parametrize("params,words", [
    ({"quality": 99}, "quality must be"),
    ({"coder": "no-such-coder"}, "unknown coder"),
    ({"model": "no-such-model"}, "no-such-model"),
])
def test_bad_save_params_raise_and_leave_no_file(tmp_path, rgb, params, words):
    with pytest.raises(ValueError, match=words):
        rgb.save(tmp_path / "a.vqz", **params)
    assert list(tmp_path.iterdir()) == []


def test_file_objects_both_ways(rgb):
    buf = io.BytesIO()
    rgb.save(buf, format="VQZ", quality=1)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.format == "VQZ" and im.convert("L").size == (40, 24)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_modes_survive(tmp_path, photo, mode):
    im = Image.fromarray(photo_crop(photo, 16, 16)).convert(mode)
    im.save(tmp_path / "m.vqz")
    with Image.open(tmp_path / "m.vqz") as back:
        assert back.mode == mode and back.size == (16, 16)
        if mode != "L":
            assert np.array_equal(np.asarray(back)[..., -1], np.asarray(im)[..., -1])  # alpha is lossless


def test_corrupt_file_is_a_clear_error(tmp_path, vqz):
    data = bytearray(vqz.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.vqz"
    bad.write_bytes(bytes(data))
    with pytest.raises(vqcodec.VqzError, match="CRC-16"):
        Image.open(bad)
    bad.write_bytes(container.MAGIC + b"\x02")
    with pytest.raises(vqcodec.VqzError, match="truncated"):
        Image.open(bad)


def test_other_files_are_not_taken(tmp_path):
    junk = tmp_path / "junk.vqz"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(UnidentifiedImageError):
        Image.open(junk)
    assert not pil_plugin._accept(b"\x89PNG\r\n\x1a\n")


def test_missing_model_fails_on_load_not_open(tmp_path, vqz):
    parsed = container.unpack(vqz.read_bytes())
    header = dataclasses.replace(parsed.header, model_prefix="0" * 16)
    other = tmp_path / "other.vqz"
    other.write_bytes(container.pack(header, parsed.index_payload, parsed.alpha_payload))
    with Image.open(other) as im:
        assert im.size == (40, 24)
        with pytest.raises(vqcodec.VqzError, match="not installed"):
            im.load()


def test_vqz_is_an_image_input_for_encode(vqz):
    data = codec.encode(vqz, quality=1)  # images.load_image opens .vqz through the plugin
    assert codec.describe(data)["width"] == 40


@pytest.mark.slow
def test_import_and_open_stay_light(vqz):
    code = (
        "import sys\n"
        "import vqcodec\n"
        "assert not [m for m in ('torch', 'numpy') if m in sys.modules]\n"
        "from PIL import Image\n"
        f"im = Image.open({str(vqz)!r})\n"
        "assert im.size == (40, 24) and im.mode == 'RGB'\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
