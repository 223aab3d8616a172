import numpy as np

import vqcodec
from vqcodec.metrics import psnr

from conftest import photo_crop


def test_tiles_have_no_visible_seams(photo):
    """Tiled encode + decode (tiles of 16 latent positions, i.e. 128 pixels) stays within 0.1 dB
    of doing the whole image at once, and differs from it only slightly near tile borders."""
    vqvae = vqcodec.load_model()
    pixels = photo_crop(photo, 320, 256)
    whole = vqvae.decode_pixels(vqvae.quantizer.quantize(vqvae.encode_latents(pixels), 8))
    tiled = vqvae.decode_pixels(vqvae.quantizer.quantize(vqvae.encode_latents(pixels, tile=16), 8), tile=16)
    assert abs(psnr(pixels, whole) - psnr(pixels, tiled)) < 0.1
    assert psnr(whole, tiled) > 40


def test_one_tile_is_exactly_the_untiled_model(photo, monkeypatch):
    monkeypatch.setenv("VQCODEC_FLOAT32", "1")  # the plain float32 model on both sides
    vqvae = vqcodec.load_model()
    pixels = photo_crop(photo, 64, 48)
    import torch
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255
    assert torch.equal(vqvae.encode_latents(pixels), vqvae.encoder(x))

