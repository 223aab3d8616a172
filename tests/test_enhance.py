"""The enhancement layer: quality levels above the base model's stages (vqcodec/nn/enhance.py)."""
import dataclasses

import numpy as np
import pytest
import torch

import vqcodec
from vqcodec import codec, container, entropy, inference, zoo
from vqcodec.config import EnhanceConfig
from vqcodec.container import VqzError
from vqcodec.inference import Policy
from vqcodec.metrics import psnr
from vqcodec.nn.enhance import EnhanceLayer

from conftest import installed_model, photo_crop


@pytest.fixture(scope="module")
def entry():
    """The photo model (skips when it is not installed)."""
    return installed_model("photo")


@pytest.fixture(scope="module")
def layer(entry):
    """Its enhancement layer (skips when it has none)."""
    enhance = zoo.load_enhance(entry)
    if enhance is None:
        pytest.skip("the photo model has no enhancement layer")
    return enhance


@pytest.fixture(scope="module")
def base_stages(entry, layer):
    """Quality 1..base_stages: the base model alone."""
    return zoo.levels_of(zoo.load(entry), layer).base


def test_an_untrained_layer_returns_the_base_image():
    layer = EnhanceLayer(EnhanceConfig(widths=(8, 8), latent_dim=4, codebook_size=16, num_stages=2))
    x, base = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24)
    reconstruction, indices, _ = layer(x, base)
    assert torch.equal(reconstruction, base) and indices.shape == (2, 2, 4, 6)


def test_each_level_above_the_base_adds_bytes_and_detail(photo, layer, base_stages):
    pixels = np.asarray(photo)
    results = []
    for quality in range(base_stages, base_stages + layer.config.num_stages + 1):
        data = vqcodec.encode(pixels, quality=quality, model="photo")
        results.append((len(data), psnr(pixels, np.asarray(vqcodec.decode(data)))))
    sizes, psnrs = zip(*results)
    assert list(sizes) == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert psnrs[1] > psnrs[0] + 0.5  # the first enhancement level is a real step up
    assert all(b > a for a, b in zip(psnrs, psnrs[1:]))


@pytest.mark.parametrize("coder", ["prior", "zstd"])
def test_enhancement_grids_are_finer_and_survive_the_container(photo, coder, entry, layer, base_stages):
    pixels = photo_crop(photo, 100, 60)  # padded to 104 x 64
    data = vqcodec.encode(pixels, quality=base_stages + 2, coder=coder, model="photo")
    layers = codec.read_indices(data).layers
    s, e = zoo.load(entry).config.stride, layer.config.stride
    assert [(x.stride, x.indices.shape) for x in layers] == [(s, (base_stages, 64 // s, 104 // s)),
                                                             (e, (2, 64 // e, 104 // e))]
    assert container.unpack(data).header.layers == (container.Layer(s, base_stages), container.Layer(e, 2))
    assert vqcodec.decode(data).size == (100, 60)


def test_an_enhancement_layer_over_another_base_level_is_refused(photo, base_stages):
    data = vqcodec.encode(photo_crop(photo, 64, 64), quality=base_stages + 1, coder="zstd", model="photo")
    parsed = container.unpack(data)
    base, detail = parsed.header.layers
    header = dataclasses.replace(parsed.header, layers=((base.stride, base.stages - 1), (detail.stride, 2)))
    with pytest.raises(VqzError, match=f"builds on {base_stages} stages of the stride-{base.stride} layer, "
                                       f"not {base_stages - 1}"):
        vqcodec.decode(container.pack(header, parsed.index_payload))


def test_enhancement_tiles_have_no_visible_seams(photo, entry, layer, base_stages):
    vqvae = zoo.load(entry)
    pixels = photo_crop(photo, 320, 256)
    policy = Policy.default()
    z = inference.encode_latents(vqvae, pixels, policy)
    base = inference.decode_pixels(vqvae, vqvae.quantizer.quantize(z, base_stages), policy)

    def round_trip(policy: Policy) -> np.ndarray:
        return inference.decode_detail(layer, inference.encode_detail(layer, pixels, base, 2, policy), base, policy)

    whole, tiled = round_trip(policy), round_trip(Policy(policy.bfloat16, tile_pixels=64))  # tiles of 16 positions
    assert abs(psnr(pixels, whole) - psnr(pixels, tiled)) < 0.1
    assert psnr(whole, tiled) > 40


@pytest.mark.usefixtures("layer")
def test_old_files_with_more_base_stages_than_the_layer_builds_on_still_decode(photo, entry):
    vqvae = zoo.load(entry)
    pixels = photo_crop(photo, 64, 48)
    policy = Policy.default()
    z = inference.encode_latents(vqvae, pixels, policy)
    grids = list(vqvae.quantizer.quantize(z, vqvae.config.num_stages)[0].numpy())  # every base stage
    header = container.Header(model_prefix=container.model_prefix(entry.sha256), width=64, height=48, mode="RGB",
                              quality=len(grids), coder="zstd", layers=((vqvae.config.stride, len(grids)),),
                              index_crc32=entropy.index_checksum(grids))
    decoded = vqcodec.decode(container.pack(header, entropy.zstd_encode(grids)))
    expected = inference.decode_pixels(vqvae, torch.from_numpy(np.stack(grids)).unsqueeze(0), policy)
    assert np.array_equal(np.asarray(decoded), expected)


def test_files_of_the_model_before_the_layer_decode_at_base_levels_only(photo, entry, base_stages):
    if entry.decodes_base_of is None:
        pytest.skip("the photo model was not made by adding a layer to an earlier file")
    data = vqcodec.encode(photo_crop(photo, 64, 64), quality=base_stages + 1, model="photo")
    parsed = container.unpack(data)
    earlier = container.model_prefix(entry.decodes_base_of)
    header = dataclasses.replace(parsed.header, model_prefix=earlier)
    with pytest.raises(VqzError, match="earlier enhancement layer.*not installed"):
        vqcodec.decode(container.pack(header, parsed.index_payload))
    base_file = vqcodec.encode(photo_crop(photo, 64, 64), quality=base_stages, model="photo",
                               color_correction=False)
    parsed = container.unpack(base_file)
    header = dataclasses.replace(parsed.header, model_prefix=earlier)
    assert vqcodec.decode(container.pack(header, parsed.index_payload)) == vqcodec.decode(base_file)
