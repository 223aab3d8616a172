import json

import pytest
import torch

from vqcodec.config import ModelConfig, TrainConfig
from vqcodec.nn.autoencoder import VQVAE
from vqcodec.weights_io import load_vqvae, read_metadata, save_weights, sha256_of_file, vqvae_from_bytes

TINY = ModelConfig(widths=(8,), res_blocks=1, latent_dim=4, codebook_size=8, num_stages=2)


def test_model_rebuilds_itself_from_its_file(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(TINY)
    path = tmp_path / "m.safetensors"
    digest = save_weights(model, path, name="m", description="d", train_config=TrainConfig(steps=3),
                          training={"steps": 3})
    assert digest == sha256_of_file(path)
    meta = read_metadata(path)
    assert meta["name"] == "m" and json.loads(meta["train_config"])["steps"] == 3
    loaded = load_vqvae(path)
    assert loaded.config == TINY and not loaded.training
    x = torch.rand(1, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(loaded.decode(loaded.encode_indices(x, 2)),
                               model.decode(model.encode_indices(x, 2)))


def test_weights_are_plain_safetensors_with_our_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(VQVAE(TINY), path, name="m", description="d")
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_size])
    assert header["__metadata__"]["format"] == "vqcodec-weights-1"


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, b"\xff" * 64, b"PK\x03\x04" + b"\x00" * 100])
def test_garbage_is_refused(data):
    with pytest.raises(ValueError, match="not a safetensors file|not a vqcodec weights file"):
        vqvae_from_bytes(data)


def test_other_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a vqcodec weights file"):
        load_vqvae(tmp_path / "other.safetensors")


def test_a_prior_whose_grids_are_not_the_models_is_refused(tmp_path):
    from vqcodec.config import PriorConfig
    from vqcodec.nn.prior import ContextPrior, IntegerPrior
    from vqcodec.weights_io import prior_from_bytes, save_with_prior

    base = tmp_path / "m.safetensors"
    save_weights(VQVAE(TINY), base, name="m", description="d", train_config=TrainConfig(), training={})
    for stages, refused in ((TINY.num_stages, False), (TINY.num_stages + 1, True)):
        config = PriorConfig(num_stages=stages, codebook_size=TINY.codebook_size, channels=8)
        path = tmp_path / f"p{stages}.safetensors"
        save_with_prior(base, path, IntegerPrior(config, ContextPrior(config).to_integer()), config, {})
        if refused:
            with pytest.raises(ValueError, match=f"codes {stages} stages .* but the layer has {TINY.num_stages}"):
                prior_from_bytes(path.read_bytes())
        else:
            assert prior_from_bytes(path.read_bytes()).config == config
