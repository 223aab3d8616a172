import numpy as np
import torch

from vqcodec import entropy
from vqcodec.config import ModelConfig, PriorConfig
from vqcodec.nn.autoencoder import VQVAE
from vqcodec.nn.prior import ContextPrior, IntegerPrior, decode_passes, encode_passes
from vqcodec.nn.rdoq import rate_distortion_indices


def setup():
    torch.manual_seed(0)
    vqvae = VQVAE(ModelConfig(widths=(8,), res_blocks=1, latent_dim=4, codebook_size=16, num_stages=3))
    for stage in vqvae.quantizer.stages:
        stage.codebook.normal_()
    model = ContextPrior(PriorConfig(num_stages=3, codebook_size=16, channels=8))
    with torch.no_grad():
        model.head_weight.mul_(4)
    prior = IntegerPrior(model.config, model.to_integer())
    return vqvae, prior, torch.randn(1, 4, 9, 11)


def code_length(passes) -> float:
    return sum(float(-np.log2(f[np.arange(len(s)), s] / f.sum(1)).sum()) for _, s, f in passes)


def test_no_tradeoff_is_nearest_code_and_its_frequencies_are_the_decoders():
    vqvae, prior, z = setup()
    indices, passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.0)
    assert torch.equal(indices, vqvae.quantizer.quantize(z, 3)[0])
    reference = encode_passes(prior, indices)
    for (s1, sym1, f1), (s2, sym2, f2) in zip(passes, reference, strict=True):
        assert s1 == s2 and np.array_equal(sym1, sym2) and np.array_equal(f1, f2)
    payload = entropy.range_encode([(s, f) for _, s, f in passes])
    assert torch.equal(decode_passes(prior, 3, 9, 11, entropy.RangeDecoder(payload))[0], indices)


def test_a_rate_tradeoff_spends_fewer_bits_for_a_little_more_distortion():
    vqvae, prior, z = setup()
    def distortion(indices):
        return float((vqvae.quantizer.dequantize(indices.unsqueeze(0)) - z).pow(2).mean())
    near, near_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.0)
    cheap, cheap_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 1.0)
    assert code_length(cheap_passes) < code_length(near_passes)
    assert distortion(cheap) > distortion(near)
    payload = entropy.range_encode([(s, f) for _, s, f in cheap_passes])
    assert torch.equal(decode_passes(prior, 3, 9, 11, entropy.RangeDecoder(payload))[0], cheap)


def test_chunked_distances_choose_the_same_indices(monkeypatch):
    """Huge images compute distances chunk by chunk; the choice must not depend on it."""
    from vqcodec.nn import rdoq
    vqvae, prior, z = setup()
    whole, whole_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.5)
    monkeypatch.setattr(rdoq, "CHUNK", 7)
    chunked, chunked_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.5)
    assert torch.equal(whole, chunked)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(whole_passes, chunked_passes, strict=True))


def test_a_choice_in_bands_of_rows_makes_the_same_file(monkeypatch):
    """On huge grids each pass is chosen and coded in bands of rows (nn.prior.bands); the
    indices and the coded bytes do not depend on it."""
    from vqcodec.nn.prior import coding
    vqvae, prior, z = setup()
    whole, whole_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.5)
    monkeypatch.setattr(coding, "BAND_POSITIONS", 6)
    banded, banded_passes = rate_distortion_indices(vqvae.quantizer, prior, z, 3, 0.5)
    assert torch.equal(whole, banded) and len(banded_passes) > len(whole_passes)
    payload = entropy.range_encode([(s, f) for _, s, f in banded_passes])
    assert payload == entropy.range_encode([(s, f) for _, s, f in whole_passes])
    assert torch.equal(decode_passes(prior, 3, 9, 11, entropy.RangeDecoder(payload))[0], banded)


def test_the_cheapest_code_is_the_argmin_ties_going_to_the_lower_code():
    from vqcodec.nn.rdoq import _cheapest, _distance_factors

    generator = torch.Generator().manual_seed(1)
    for k in (2, 100, 256):
        costs = torch.rand(500, k, generator=generator) * 1000
        costs[0] = 0.0  # all tied: the first code
        costs[1, k // 2:] = 0.5  # a tie between later codes
        costs[2, -1] = -1e-7  # rounded below zero: still the cheapest
        expected = costs.argmin(dim=1)
        assert torch.equal(_cheapest(costs.clone()), expected)
    vectors, codebook = torch.randn(300, 16, generator=generator), torch.randn(256, 16, generator=generator)
    points, codes = _distance_factors(vectors, codebook)
    assert torch.allclose(points @ codes, torch.cdist(vectors, codebook).pow(2), atol=1e-3)
    assert torch.equal(_cheapest(points @ codes), torch.cdist(vectors, codebook).argmin(dim=1))
