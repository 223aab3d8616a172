import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqcodec import codec, zoo
from vqcodec.cli import main
from vqcodec.config import ModelConfig, PriorConfig
from vqcodec.nn.autoencoder import VQVAE
from vqcodec.nn.prior import ContextPrior, IntegerPrior
from vqcodec.weights_io import save_weights, save_with_prior


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A weights folder with 'tiny' (VQ-VAE + random prior, stride 4) and 'noprior'."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    cfg = ModelConfig(widths=(8, 8), res_blocks=1, latent_dim=4, codebook_size=16, num_stages=2)
    vqvae = VQVAE(cfg)
    for stage in vqvae.quantizer.stages:
        stage.codebook.normal_()
    save_weights(vqvae, folder / "noprior.safetensors", name="noprior", description="no prior")
    save_weights(vqvae, folder / "base.safetensors", name="tiny", description="tiny with prior")
    prior_cfg = PriorConfig(num_stages=2, codebook_size=16, channels=8, layers=2)
    prior = IntegerPrior(prior_cfg, ContextPrior(prior_cfg).to_integer())
    save_with_prior(folder / "base.safetensors", folder / "tiny.safetensors", prior, prior_cfg,
                    {"sample_size": [12, 8]})
    (folder / "base.safetensors").unlink()
    zoo.register(folder / "noprior.safetensors")
    zoo.register(folder / "tiny.safetensors", default=True)
    return folder


@pytest.fixture
def models(tiny_models, monkeypatch):
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tiny_models))
    return tiny_models


def pixels(pictures):
    return [np.asarray(p) for p in pictures]


def test_same_seed_same_images_other_seed_other_images(models):
    a = pixels(codec.generate(3, model="tiny", seed=5))
    b = pixels(codec.generate(3, model="tiny", seed=5))
    c = pixels(codec.generate(3, model="tiny", seed=6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_default_size_is_the_training_size_and_size_rounds_up_to_the_stride(models):
    assert codec.generate(1, model="tiny")[0].size == (8, 12)
    assert codec.generate(2, model="tiny", size=(10, 13))[1].size == (16, 12)


def test_temperature_zero_and_top_k_one_are_the_same_greedy_choice(models):
    greedy = pixels(codec.generate(2, model="tiny", temperature=0, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(greedy, pixels(codec.generate(2, model="tiny", temperature=0, seed=2))))
    top1 = pixels(codec.generate(2, model="tiny", top_k=1, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(greedy, top1))


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "noprior"}, "no prior"), ({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
    ({"quality": 3}, "quality"), ({"size": (0, 5)}, "size"), ({"label": 1}, "no classes to choose from")])
def test_bad_arguments_are_clear_errors(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        codec.generate(1, **{"model": "tiny", **kwargs})


def test_cli_writes_samples_and_grid_and_keeps_existing_files(models, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["generate", "-n", "5", "--model", "tiny", "--size", "8x8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png"] + [f"sample_{i}.png" for i in range(5)]
    assert Image.open(out / "sample_0.png").size == (8, 8)
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 64 + 4, 2 * 64 + 2)  # 3 columns of 8 px tiles scaled x8, 2 px gaps
    before = (out / "sample_0.png").read_bytes()
    again = CliRunner().invoke(main, ["generate", "-n", "5", "--model", "tiny", "--seed", "9", "-o", str(out)])
    assert again.exit_code == 1 and "exists" in again.output and "--force" in again.output
    assert (out / "sample_0.png").read_bytes() == before
    forced = CliRunner().invoke(main, ["generate", "-n", "5", "--model", "tiny", "--seed", "9", "-o", str(out), "-f"])
    assert forced.exit_code == 0 and (out / "sample_0.png").read_bytes() != before


@pytest.mark.parametrize("args", [["--size", "big"], ["--size", "0x4"], ["-t", "-1"], ["--top-k", "0"], ["-n", "0"],
                                  ["--label", "-1"]])
def test_cli_bad_values_are_usage_errors(models, tmp_path, args):
    result = CliRunner().invoke(main, ["generate", "--model", "tiny", "-o", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_models_lists_the_coders(models):
    info = {m["name"]: m for m in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert info["tiny"]["coders"] == ["prior", "zstd"] and info["noprior"]["coders"] == ["zstd"]
