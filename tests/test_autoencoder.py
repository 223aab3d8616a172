import numpy as np
import pytest
import torch

import vqcodec
from vqcodec.inference import native_bfloat16
from vqcodec.nn.autoencoder import subpixel_conv_transpose


def test_the_subpixel_form_of_the_last_layer_equals_the_transposed_convolution():
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(6, 3, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(subpixel_conv_transpose(x, layer), layer(x), rtol=1e-5, atol=1e-5)


def test_float32_switch_turns_bfloat16_off(monkeypatch):
    monkeypatch.setenv("VQCODEC_FLOAT32", "1")
    assert not native_bfloat16()


@pytest.mark.skipif(not native_bfloat16(), reason="this CPU has no native bfloat16")
def test_bfloat16_and_float32_decodes_agree_closely(photo, monkeypatch):
    data = vqcodec.encode(photo.crop((0, 0, 96, 64)), quality=8)
    fast = np.asarray(vqcodec.decode(data), dtype=np.int16)
    monkeypatch.setenv("VQCODEC_FLOAT32", "1")
    exact = np.asarray(vqcodec.decode(data), dtype=np.int16)
    assert np.abs(fast - exact).max() <= 3 and np.abs(fast - exact).mean() < 0.6  # measured: 2 and 0.34
