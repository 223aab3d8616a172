""".vqz version 2 through the codec: the compact header, the explicit layer structure, model
lookup by sha256 prefix, and read_indices / decode_indices (with the README's example)."""
import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec import codec, container, zoo
from vqcodec.container import Layer, VqzError

from conftest import installed_model, photo_crop

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def photo_model():
    """The photo model's zoo entry (skips when it is not installed)."""
    return installed_model("photo")


@pytest.fixture(scope="module")
def kodak_size(photo):
    """A 768 x 512 picture, the size of a Kodak image."""
    return photo_crop(photo, 768, 512)


@pytest.mark.parametrize("quality", [1, 5])
def test_header_of_a_plain_kodak_size_file_is_at_most_32_bytes(kodak_size, photo_model, quality):
    data = vqcodec.encode(kodak_size, quality=quality, model="photo", color_correction=False)
    parsed = container.unpack(data)
    overhead = len(data) - len(parsed.index_payload)  # magic, version, fields, lengths, CRCs
    assert parsed.version == 2 and not parsed.metadata and not parsed.alpha_payload
    assert overhead == parsed.header_bytes + 2
    assert overhead <= 32, overhead
    assert codec.describe(data)["header_bytes"] == parsed.header_bytes


def test_the_header_states_the_layers_in_coding_order(photo, photo_model):
    vqvae, enhance = zoo.load(photo_model), zoo.load_enhance(photo_model)
    levels = zoo.levels_of(vqvae, enhance)
    levels, base = levels.count, levels.base
    for quality in sorted({1, base, levels}):
        header = container.unpack(vqcodec.encode(photo_crop(photo, 24, 16), quality=quality, model="photo")).header
        expected = [Layer(vqvae.config.stride, min(quality, base))]
        if quality > base:
            expected.append(Layer(enhance.config.stride, quality - base))
        assert list(header.layers) == expected
        assert header.model_prefix == photo_model.sha256[:16]


def test_file_names_its_model_by_sha256_prefix_and_ambiguity_is_an_error(photo, photo_model, monkeypatch):
    data = vqcodec.encode(photo_crop(photo, 16, 16), quality=1, model="photo")
    twin = dataclasses.replace(photo_model, name="twin", sha256=photo_model.sha256[:16] + "0" * 48)
    monkeypatch.setattr(zoo, "entries", lambda: [photo_model, twin])
    prefix = photo_model.sha256[:16]
    with pytest.raises(VqzError, match=f"model sha256 prefix {prefix} is ambiguous: it matches 'photo' .* 'twin'"):
        vqcodec.decode(data)
    other = dataclasses.replace(photo_model, name="other", sha256="f" * 64)
    monkeypatch.setattr(zoo, "entries", lambda: [other])
    with pytest.raises(VqzError, match=f"whose sha256 starts with {prefix}, which is not installed "
                                       rf"\(installed: 'other' {'f' * 16}\)"):
        vqcodec.decode(data)


def test_describe_shows_layers_grids_and_model(photo, photo_model):
    data = vqcodec.encode(photo_crop(photo, 20, 12), quality=1, model="photo", metadata="none",
                          color_correction=False)
    fields = codec.describe(data)
    stride = zoo.load(photo_model).config.stride
    assert fields["format_version"] == 2 and fields["model_name"] == "photo"
    assert fields["model_sha256"] == photo_model.sha256 and fields["model_installed"] is True
    assert fields["layers"] == [{"stride": stride, "stages": 1}]
    assert fields["grid_shapes"] == [[-(-12 // stride), -(-20 // stride)]]
    assert fields["metadata"] == {} and fields["metadata_bytes"] == 0


# ------------------------------------------------------------------ indices


@pytest.mark.parametrize("mode, quality, coder", [("RGB", 1, "prior"), ("RGB", 5, "prior"), ("L", 2, "zstd"),
                                                  ("RGB", 6, "zstd")])
def test_read_indices_then_decode_indices_gives_what_decode_gives(photo, photo_model, mode, quality, coder):
    picture = Image.fromarray(photo_crop(photo, 37, 21)).convert(mode)
    data = vqcodec.encode(picture, quality=quality, model="photo", coder=coder)
    indices = vqcodec.read_indices(data)
    assert isinstance(indices, vqcodec.Indices) and indices.model == "photo"
    assert (indices.width, indices.height, indices.mode) == (37, 21, mode)
    header = container.unpack(data).header
    assert [(layer.stride, layer.stages) for layer in indices.layers] == [(x.stride, x.stages) for x in header.layers]
    for layer in indices.layers:
        assert np.issubdtype(layer.indices.dtype, np.integer) and layer.indices.ndim == 3
    assert np.array_equal(np.asarray(vqcodec.decode_indices(indices)), np.asarray(vqcodec.decode(data)))


def test_indices_of_a_version_1_file(photo_model):
    golden = Path(__file__).parent / "golden" / "photo_q5_prior.vqz"
    data = golden.read_bytes()
    if zoo.find_by_hash(container.unpack(data).header.model_sha256) is None:
        pytest.skip("the model of the golden file is not installed")
    indices = vqcodec.read_indices(data)
    assert [layer.stages for layer in indices.layers] == [4, 1]
    assert np.array_equal(np.asarray(vqcodec.decode_indices(indices)), np.asarray(vqcodec.decode(data)))


def test_decode_indices_of_the_alpha_file_drops_only_the_alpha(photo, photo_model):
    rgba = Image.fromarray(photo_crop(photo, 16, 8)).convert("RGBA")
    data = vqcodec.encode(rgba, quality=1, color_correction=False)
    indices = vqcodec.read_indices(data)
    assert indices.mode == "RGB"
    assert np.array_equal(np.asarray(vqcodec.decode_indices(indices)), np.asarray(vqcodec.decode(data))[..., :3])


def test_decode_indices_refuses_what_the_model_cannot_decode(photo, photo_model):
    indices = vqcodec.read_indices(vqcodec.encode(photo_crop(photo, 32, 16), quality=2))
    layer = indices.layers[0]
    cases = [
        (dataclasses.replace(indices, layers=(dataclasses.replace(layer, stride=16),)), "cannot decode the layers"),
        (dataclasses.replace(indices, width=64), "a 64x16 image needs"),
        (dataclasses.replace(indices, layers=(dataclasses.replace(layer, indices=layer.indices + 1000),)),
         "indices must be in 0..255"),
        (dataclasses.replace(indices, layers=(dataclasses.replace(layer, indices=layer.indices[0]),)),
         r"\(stages, rows, cols\)"),
        (dataclasses.replace(indices, mode="RGBA"), "mode must be 'L' or 'RGB'"),
        (dataclasses.replace(indices, layers=()), "no layers"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            vqcodec.decode_indices(bad)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        vqcodec.decode_indices(dataclasses.replace(indices, model="nope", model_sha256=None))


def test_readme_tokenizing_example_runs(tmp_path, photo, photo_model, monkeypatch):
    """The README's example, as written: a folder to one .npz of index grids, one grid back."""
    text = README.read_text()
    section = text[text.index("### Index grids"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "photos").mkdir()
    sources = [photo_crop(photo, 64, 48), photo_crop(photo, 40, 32)[::-1]]
    for name, pixels in zip(("a", "b"), sources):
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / "photos" / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own README
    saved = np.load("tokens.npz")
    assert sorted(saved.files) == sorted(f"{n}.stride8" for n in ("a", "b"))
    expected = vqcodec.decode(vqcodec.encode(tmp_path / "photos" / "a.png", quality=2, model="photo"))  # 64 x 48: no padding
    assert np.array_equal(np.asarray(scope["image"]), np.asarray(expected))
    assert os.path.exists("first.png")
