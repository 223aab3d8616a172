"""Encoder-side latent refinement (nn/refine.py): better pictures, same decoder."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vqcodec import codec, inference, metrics
from vqcodec.cli import main
from vqcodec.nn.refine import refine_latents

from conftest import installed_model


@pytest.fixture(scope="module")
def digit() -> Image.Image:
    """A hand-drawn-like 28x28 gray '7'."""
    picture = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(picture).line([(7, 7), (21, 7), (12, 23)], fill=255, width=3)
    return picture


def _nearest_error(vqvae, latents, image, stages):
    with torch.no_grad():
        quantized = vqvae.quantizer.dequantize(vqvae.quantizer.quantize(latents, stages))
        return float((vqvae.decoder(quantized).clamp(0, 1) - image).pow(2).mean())


def test_refined_latents_decode_closer_to_the_image(digit):
    installed_model("digits")
    vqvae = codec.load_model("digits")
    pixels = np.array(digit.convert("RGB"))
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    latents = inference.encode_latents(vqvae, pixels, inference.Policy(bfloat16=False))
    for stages in (2, 6):
        refined = refine_latents(vqvae, image, latents, stages, steps=10)
        assert refined.shape == latents.shape
        assert _nearest_error(vqvae, refined, image, stages) < _nearest_error(vqvae, latents, image, stages)
    assert torch.equal(refine_latents(vqvae, image, latents, 2, steps=0), latents)


def test_refinement_raises_quality_and_files_decode_as_usual(digit):
    installed_model("digits")
    reference = np.asarray(digit)
    plain = codec.encode_image(digit, quality=6, model="digits")
    refined = codec.encode_image(digit, quality=6, model="digits", refine_steps=20)
    assert refined.header.layers == plain.header.layers
    quality = {name: metrics.psnr(reference, np.asarray(codec.decode(result.data))) for name, result in
               (("plain", plain), ("refined", refined))}
    assert quality["refined"] > quality["plain"] + 0.5
    with pytest.raises(ValueError, match="refine_steps must be an integer >= 0"):
        codec.encode_image(digit, quality=6, model="digits", refine_steps=-1)


def test_cli_refine_steps(digit, tmp_path, runner):
    installed_model("digits")
    digit.save(tmp_path / "seven.png")
    result = runner.invoke(main, ["encode", str(tmp_path / "seven.png"), "--model", "digits", "--refine-steps", "5"])
    assert result.exit_code == 0, result.output
    assert codec.decode((tmp_path / "seven.vqz").read_bytes()).size == (28, 28)
    bad = runner.invoke(main, ["encode", str(tmp_path / "seven.png"), "-o", str(tmp_path / "x.vqz"),
                               "--refine-steps", "-1"])
    assert bad.exit_code == 2 and not (tmp_path / "x.vqz").exists()
